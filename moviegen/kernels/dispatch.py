"""Route each fused op to its Triton kernel or its torch reference.

The model setting ``kernels: auto | triton | torch`` is passed as ``backend``:
  auto    per op and shape class, the path measured fastest on this device
          (moviegen/kernels/choice.py); torch (SDPA for attention) wherever nothing was measured,
          and torch on CPU. A kernel that fails to build or launch falls back to torch
          with one warning.
  triton  always Triton (on CPU only under TRITON_INTERPRET=1, else a clear error)
  torch   always the torch reference (``moviegen/kernels/reference.py``)

Both paths compute the same numbers within dtype tolerance. The ops are per token (norms,
residuals, position adds on a sequence shard with its ``token_offset``) or per attention
call (local queries against whatever K/V the caller gathered), so they compose with
TP/SP/CP unchanged, as long as they receive local (non-DTensor) tensors.

Importing this module never imports triton; the Triton modules load on first use.
"""
from __future__ import annotations

import functools
import importlib

import torch

from . import choice, reference
from ._utils import interpreting

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when triton imports (checked once; imports triton, so only call when needed)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import time
        return False
    return True


def resolve_backend(setting: str, device: torch.device | str) -> str:
    """'triton', 'torch', or (``auto`` on CUDA with triton installed) 'auto': the entry
    points then choose per op and shape class at call time (see the module docstring)."""
    if setting not in BACKENDS:
        raise ValueError(f"kernels backend must be one of {BACKENDS}, got {setting!r}")
    device = torch.device(device)
    if setting == "torch":
        return "torch"
    if setting == "auto":
        return "auto" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("kernels backend 'triton' was requested but triton is not installed "
                           "(pip install triton, or use 'auto'/'torch')")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(f"kernels backend 'triton' needs CUDA tensors, got device {device}; "
                           "on CPU set TRITON_INTERPRET=1 before triton is imported (slow, "
                           "for tests) or use 'auto'/'torch'")
    return "triton"


def _route(op: str, backend: str, tensors, kernel_fn, reference_fn, **klass_extra):
    """Run ``kernel_fn`` or ``reference_fn`` (both without arguments) for this backend."""
    resolved = resolve_backend(backend, tensors[0].device)
    if resolved == "torch":
        return reference_fn()
    if resolved == "triton":
        return kernel_fn()
    klass = choice.shape_class(op, *tensors, **klass_extra)
    timer = lambda: choice_timing(kernel_fn, reference_fn)  # noqa: E731
    if choice.choose(op, klass, tensors[0].device, timer) == "torch":
        return reference_fn()
    return choice.run_with_fallback(op, klass, kernel_fn, reference_fn)


def choice_timing(kernel_fn, reference_fn) -> dict:
    """Median seconds of forward + backward of each path (CUDA events via triton.testing)."""
    import triton.testing

    def fwd_bwd(fn):
        def run():
            out = fn()
            leaves = [t for t in _leaves_of(out)]
            if leaves:
                torch.autograd.backward(leaves, [torch.ones_like(t) for t in leaves])
        return run
    return {name: triton.testing.do_bench(fwd_bwd(fn), warmup=5, rep=20) / 1e3
            for name, fn in (("triton", kernel_fn), ("torch", reference_fn))}


def _leaves_of(out):
    outs = out if isinstance(out, tuple) else (out,)
    return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]


def _triton(module: str):
    return importlib.import_module(f"{__package__}.{module}")


def modulated_rms_norm(x_BSD, weight_D, scale_BD, shift_BD, eps: float = 1e-6,
                       backend: str = "auto"):
    """RMSNorm(x) * weight * (1 + scale) + shift (scale/shift [B, D], broadcast over S)."""
    return _route("modulated_rms_norm", backend, (x_BSD,),
                  lambda: _triton("modulation").modulated_rms_norm(x_BSD, weight_D, scale_BD,
                                                                   shift_BD, eps),
                  lambda: reference.modulated_rms_norm_reference(x_BSD, weight_D, scale_BD,
                                                                 shift_BD, eps))


def gated_residual(x_BSD, gate_BD, h_BSD, backend: str = "auto"):
    """x + gate * h (gate [B, D], broadcast over S)."""
    return _route("gated_residual", backend, (x_BSD,),
                  lambda: _triton("modulation").gated_residual(x_BSD, gate_BD, h_BSD),
                  lambda: reference.gated_residual_reference(x_BSD, gate_BD, h_BSD))


def add_factorized_pos_embed(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW,
                             token_offset: int = 0, backend: str = "auto"):
    """x + pos_t[t] + pos_h[h] + pos_w[w] for tokens [token_offset, token_offset + S)."""
    return _route("add_factorized_pos_embed", backend, (x_BSD,),
                  lambda: _triton("pos_embed").add_factorized_pos_embed(
                      x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset),
                  lambda: reference.add_factorized_pos_embed_reference(
                      x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset))


def attention(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL=None, backend: str = "auto"):
    """Non-causal attention; mask True = real key; a query with no real key gives zeros.

    Under ``auto``, shapes/dtypes the kernel does not take (e.g. head dim 96, float64) use
    the torch reference; under ``triton`` they raise.
    """
    def reference_fn():
        return reference.attention_reference(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)

    def kernel_fn():
        return _triton("flash_attention").flash_attention(q_BHSE, k_BHLE, v_BHLE,
                                                          key_padding_mask_BL)

    if backend == "auto" and resolve_backend(backend, q_BHSE.device) == "auto":
        try:
            _triton("flash_attention").check_attention_inputs(q_BHSE, k_BHLE, v_BHLE,
                                                              key_padding_mask_BL)
        except (ValueError, TypeError):
            return reference_fn()
    return _route("attention", backend, (q_BHSE, k_BHLE), kernel_fn, reference_fn,
                  masked=key_padding_mask_BL is not None)

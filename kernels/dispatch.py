"""Route each fused op to its Triton kernel or its torch reference.

The model setting ``kernels: auto | triton | torch`` is passed as ``backend``:
  auto    Triton on CUDA tensors when triton imports, the torch reference elsewhere
  triton  always Triton (on CPU only under TRITON_INTERPRET=1, else a clear error)
  torch   always the torch reference (``kernels/reference.py``)

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

from . import reference
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
    """'triton' or 'torch' for this setting on this device (see the module docstring)."""
    if setting not in BACKENDS:
        raise ValueError(f"kernels backend must be one of {BACKENDS}, got {setting!r}")
    device = torch.device(device)
    if setting == "torch":
        return "torch"
    if setting == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("kernels backend 'triton' was requested but triton is not installed "
                           "(pip install triton, or use 'auto'/'torch')")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(f"kernels backend 'triton' needs CUDA tensors, got device {device}; "
                           "on CPU set TRITON_INTERPRET=1 before triton is imported (slow, "
                           "for tests) or use 'auto'/'torch'")
    return "triton"


def _triton(module: str):
    return importlib.import_module(f"kernels.{module}")


def modulated_rms_norm(x_BSD, weight_D, scale_BD, shift_BD, eps: float = 1e-6,
                       backend: str = "auto"):
    """RMSNorm(x) * weight * (1 + scale) + shift (scale/shift [B, D], broadcast over S)."""
    if resolve_backend(backend, x_BSD.device) == "triton":
        return _triton("modulation").modulated_rms_norm(x_BSD, weight_D, scale_BD, shift_BD, eps)
    return reference.modulated_rms_norm_reference(x_BSD, weight_D, scale_BD, shift_BD, eps)


def gated_residual(x_BSD, gate_BD, h_BSD, backend: str = "auto"):
    """x + gate * h (gate [B, D], broadcast over S)."""
    if resolve_backend(backend, x_BSD.device) == "triton":
        return _triton("modulation").gated_residual(x_BSD, gate_BD, h_BSD)
    return reference.gated_residual_reference(x_BSD, gate_BD, h_BSD)


def add_factorized_pos_embed(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW,
                             token_offset: int = 0, backend: str = "auto"):
    """x + pos_t[t] + pos_h[h] + pos_w[w] for tokens [token_offset, token_offset + S)."""
    if resolve_backend(backend, x_BSD.device) == "triton":
        return _triton("pos_embed").add_factorized_pos_embed(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD,
                                                             grid_THW, token_offset)
    return reference.add_factorized_pos_embed_reference(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD,
                                                        grid_THW, token_offset)


def attention(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL=None, backend: str = "auto"):
    """Non-causal attention; mask True = real key; a query with no real key gives zeros.

    Under ``auto``, shapes/dtypes the kernel does not take (e.g. head dim 96, float64) fall
    back to the torch reference; under ``triton`` they raise.
    """
    if resolve_backend(backend, q_BHSE.device) == "triton":
        fa = _triton("flash_attention")
        if backend == "triton":
            return fa.flash_attention(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)
        try:
            fa.check_attention_inputs(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)
        except (ValueError, TypeError):
            pass
        else:
            return fa.flash_attention(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)
    return reference.attention_reference(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)

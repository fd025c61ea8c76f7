"""What the kernel tests run on: the device, the dtypes, their tolerances, and the layouts.

On a machine with CUDA the kernels are compiled and the tests run in bf16, fp16 and fp32;
without CUDA they run through the Triton interpreter in fp32 and fp16 (``tl.dot`` on bf16
is wrong in the interpreter). ``select_triton_mode()`` must run before triton is
imported: ``@triton.jit`` reads TRITON_INTERPRET when a kernel module is imported.

MOVIEGEN_KERNEL_TESTS=interpreter forces the interpreter even where CUDA exists.

Layouts: a caller may hand a kernel any strides (a [B, S, H, E] projection viewed as
[B, H, S, E], a slice of a fused parameter, an expanded gradient), so every test runs
the same numbers through several layouts; ``as_layout`` builds them with differentiable
ops, so gradients still flow to the contiguous leaf the reference compares against.
"""
from __future__ import annotations

import os

import torch


def use_gpu() -> bool:
    if os.environ.get("MOVIEGEN_KERNEL_TESTS", "") == "interpreter":
        return False
    return torch.cuda.is_available()


def select_triton_mode() -> None:
    """Interpreter without CUDA, compiled kernels with it (call before importing triton)."""
    os.environ["TRITON_INTERPRET"] = "0" if use_gpu() else "1"


DEVICE = torch.device("cuda" if use_gpu() else "cpu")
DTYPES = ((torch.bfloat16, torch.float16, torch.float32) if use_gpu()
          else (torch.float32, torch.float16))
DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

# Max error allowed, relative to max(1, max |reference|) (gradients summed over many
# tokens grow with their count) plus the same relative tolerance per element. bf16 keeps
# 8 mantissa bits, fp16 11; fp32 kernels use IEEE products (no TF32).
_TOL = {
    "elementwise": {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2},
    "attention": {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2},
}


def tolerance(dtype: torch.dtype, kind: str = "elementwise") -> float:
    return _TOL[kind][dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str,
                 kind: str = "elementwise") -> None:
    """actual (any dtype) against a float64 reference, at the tolerance of ``dtype``."""
    assert actual is not None, f"{what}: no gradient"
    tol = tolerance(dtype, kind)
    expected = expected.detach().to(actual.device, torch.float64)
    finite = torch.isfinite(expected)
    scale = max(1.0, expected[finite].abs().max().item()) if finite.any() else 1.0
    torch.testing.assert_close(actual.detach().double(), expected, atol=tol * scale, rtol=tol,
                               equal_nan=False, msg=lambda m: f"{what} ({dtype}): {m}")


LAYOUTS = ("contiguous", "transposed", "sliced", "last_dim_strided")


def as_layout(t: torch.Tensor, layout: str, dims: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """The same values as ``t`` in another memory layout (differentiable).

    transposed        memory with ``dims`` swapped, viewed back ([B, S, H, E] seen as [B, H, S, E])
    sliced            the second half of a buffer twice as wide in the last dim (row stride 2x)
    last_dim_strided  every other element of the last dim (stride 2: TMA/vector loads cannot)
    """
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed":
        a, b = dims
        return t.transpose(a, b).contiguous().transpose(a, b)
    if layout == "sliced":
        return torch.cat([torch.zeros_like(t), t], dim=-1)[..., t.shape[-1]:]
    if layout == "last_dim_strided":
        return torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)[..., ::2]
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


def upstream_gradient(like: torch.Tensor, layout: str, seed: int = 0) -> torch.Tensor:
    """A random gradient for ``like`` in ``layout``; 'expanded' repeats one row (stride 0)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "expanded":
        row = torch.randn(like.shape[-1], generator=g, dtype=torch.float64)
        return row.to(like.device, like.dtype).expand(like.shape)
    values = torch.randn(like.shape, generator=g, dtype=torch.float64).to(like.device, like.dtype)
    return as_layout(values, layout, dims=(1, 2) if like.dim() == 4 else (0, 1))


def check_against_float64(fn, ref_fn, leaves, dtype, views=None, grad_layout="contiguous",
                          kind="elementwise", names=None, seed=0):
    """Run ``fn`` on views of ``leaves`` and ``ref_fn`` on the same views of float64 copies;
    compare every output and every leaf's gradient (upstream gradients in ``grad_layout``).

    leaves: tensors (requires_grad where a gradient is wanted) or None / non-tensors, passed
    through. views: one callable per leaf (or None) applied before the call, e.g. a
    transposed or sliced view. Returns (outputs, gradients) of ``fn``.
    """
    views = views or [None] * len(leaves)
    apply = lambda ts: [v(t) if v is not None and isinstance(t, torch.Tensor) else t  # noqa: E731
                        for v, t in zip(views, ts)]
    outs = fn(*apply(leaves))
    outs = outs if isinstance(outs, tuple) else (outs,)
    cots = [upstream_gradient(o, grad_layout, seed=seed + i) for i, o in enumerate(outs)]
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, wanted, cots, allow_unused=True)

    ref_leaves = [t.detach().double().requires_grad_(t.requires_grad)
                  if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in leaves]
    ref_outs = ref_fn(*apply(ref_leaves))
    ref_outs = ref_outs if isinstance(ref_outs, tuple) else (ref_outs,)
    ref_wanted = [t for t in ref_leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    ref_grads = torch.autograd.grad(ref_outs, ref_wanted, [c.double() for c in cots],
                                    allow_unused=True)
    names = names or [f"input{i}" for i in range(len(leaves))]
    grad_names = [f"d{n}" for n, t in zip(names, leaves)
                  if isinstance(t, torch.Tensor) and t.requires_grad]
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert_close(o, r, dtype, f"output {i}", kind)
    for name, g, r, leaf in zip(grad_names, grads, ref_grads, wanted):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        assert g is not None and g.dtype == leaf.dtype, f"{name}: {None if g is None else g.dtype}"
        assert_close(g, r, dtype, name, kind)
    return outs, grads

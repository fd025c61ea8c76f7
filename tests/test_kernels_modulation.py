"""Triton adaLN kernels (moviegen/kernels/modulation.py) against the torch reference in float64.

With CUDA: compiled kernels in bf16/fp16/fp32. Without: the Triton interpreter on CPU in
fp32/fp16 (tests/kernel_helpers.py says why).
"""
from kernel_helpers import select_triton_mode

select_triton_mode()  # before triton is imported (kernels are decorated at import)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed; the torch path is tested elsewhere")

from moviegen.kernels import reference  # noqa: E402
from moviegen.kernels.modulation import gated_residual, modulated_rms_norm  # noqa: E402
from kernel_helpers import (DEVICE, DTYPE_IDS, DTYPES, as_layout,  # noqa: E402
                             check_against_float64)

EPS = 1e-6
# (B, S, D): odd S not a multiple of the row block, one token, D not a power of two, and a
# row over 2048 wide (the backward's one-row-a-step path, as at the model's D = 3072/6144)
SHAPES = [(2, 37, 48), (1, 1, 16), (3, 5, 130), (2, 3, 3000)]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)


def _leaves(dtype, *shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
            for s in shapes]


def _norm(x, w, scale, shift):
    return modulated_rms_norm(x, w, scale, shift, EPS)


def _norm_ref(x, w, scale, shift):
    return reference.modulated_rms_norm_reference(x, w, scale, shift, EPS)


@dtypes
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("has_weight", [True, False])
def test_modulated_rms_norm_matches_reference(dtype, shape, has_weight):
    B, S, D = shape
    x, w, scale, shift = _leaves(dtype, (B, S, D), (D,), (B, D), (B, D))
    check_against_float64(_norm, _norm_ref, [x, w if has_weight else None, scale, shift], dtype,
                          names=["x", "weight", "scale", "shift"])


# Every operand in another layout: x a [S, B, D] buffer seen as [B, S, D] (or a slice of a
# wider one), the weight every other element of a larger buffer, scale/shift chunks of one
# [B, 2D] modulation output (how adaLN produces them), and upstream gradients of any layout.
LAYOUT_CASES = [("transposed", "contiguous"), ("contiguous", "transposed"),
                ("sliced", "expanded"), ("last_dim_strided", "last_dim_strided"),
                ("contiguous", "sliced")]


def _strided_views(x_layout):
    return [lambda t: as_layout(t, x_layout, dims=(0, 1)),
            lambda t: as_layout(t, "last_dim_strided"),
            lambda t: as_layout(t, "sliced"), lambda t: as_layout(t, "sliced")]


@dtypes
@pytest.mark.parametrize("x_layout,grad_layout", LAYOUT_CASES)
def test_modulated_rms_norm_any_layout(dtype, x_layout, grad_layout):
    B, S, D = 2, 19, 40
    leaves = _leaves(dtype, (B, S, D), (D,), (B, D), (B, D), seed=7)
    check_against_float64(_norm, _norm_ref, leaves, dtype, views=_strided_views(x_layout),
                          grad_layout=grad_layout, names=["x", "weight", "scale", "shift"])


@dtypes
@pytest.mark.parametrize("x_layout,grad_layout", LAYOUT_CASES)
def test_gated_residual_any_layout(dtype, x_layout, grad_layout):
    B, S, D = 2, 19, 40
    leaves = _leaves(dtype, (B, S, D), (B, D), (B, S, D), seed=8)
    views = [lambda t: as_layout(t, x_layout, dims=(0, 1)), lambda t: as_layout(t, "sliced"),
             lambda t: as_layout(t, "transposed", dims=(0, 1))]
    check_against_float64(gated_residual, reference.gated_residual_reference, leaves, dtype,
                          views=views, grad_layout=grad_layout, names=["x", "gate", "h"])


@dtypes
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_gated_residual_matches_reference(dtype, shape):
    B, S, D = shape
    check_against_float64(gated_residual, reference.gated_residual_reference,
                          _leaves(dtype, (B, S, D), (B, D), (B, S, D), seed=1), dtype,
                          names=["x", "gate", "h"])


def test_mixed_dtypes_follow_reference_promotion():
    """fp16 activations with fp32 modulation vectors: output dtype as torch promotes it."""
    B, S, D = 2, 3, 32
    (x,) = _leaves(torch.float16, (B, S, D))
    w, scale, shift = _leaves(torch.float32, (D,), (B, D), (B, D), seed=3)
    y = modulated_rms_norm(x, w, scale, shift, EPS)
    y_ref = reference.modulated_rms_norm_reference(x, w, scale, shift, EPS)
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=2e-2, rtol=1e-2)
    dx, dscale = torch.autograd.grad(y.sum(), [x, scale])
    assert dx.dtype == torch.float16 and dscale.dtype == torch.float32


def test_backward_is_deterministic():
    """Token reductions use per-program partials (no atomics): bitwise-equal reruns."""
    B, S, D = 2, 45, 24
    x, gate, h, w, scale, shift = _leaves(torch.float32, (B, S, D), (B, D), (B, S, D), (D,), (B, D),
                                          (B, D), seed=4)
    runs = []
    for _ in range(2):
        x_new = gated_residual(x, gate, h)
        y = modulated_rms_norm(x_new, w, scale, shift, EPS)
        runs.append(torch.autograd.grad((x_new * 0.5).sum() + (y * y).sum(), [gate, w, scale, shift]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_bad_shapes_raise_clear_errors():
    x = torch.randn(2, 3, 8, device=DEVICE)
    r = lambda *s: torch.randn(*s, device=DEVICE)  # noqa: E731
    with pytest.raises(ValueError, match="scale must have shape"):
        modulated_rms_norm(x, None, r(2, 1, 8), r(2, 8))
    with pytest.raises(ValueError, match=r"x must be \[B, S, D\]"):
        gated_residual(r(6, 8), r(2, 8), r(6, 8))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        modulated_rms_norm(x.double(), None, r(2, 8), r(2, 8))

"""Triton adaLN kernels (kernels/modulation.py) against the torch reference in float64.

Runs on CPU through the Triton interpreter; bf16 is checked on a GPU by
``python benchmarks/kernels.py --check``.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (kernels are decorated at import)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed; the torch path is tested elsewhere")

from kernels import reference  # noqa: E402
from kernels.modulation import (ModulatedRMSNorm, gated_residual,  # noqa: E402
                                gated_residual_modulated_rms_norm, modulated_rms_norm)

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-2, rtol=1e-2)}
EPS = 1e-6
# (B, S, D): odd S not a multiple of the row block, one token, D not a power of two
SHAPES = [(2, 37, 48), (1, 1, 16), (3, 5, 130)]


def _leaves(dtype, *shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def _double(tensors):
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


def _assert_close(actual, expected, dtype, what):
    assert actual is not None, f"{what}: no gradient"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    torch.testing.assert_close(actual.double(), expected, **TOL[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("has_weight", [True, False])
def test_modulated_rms_norm_matches_reference(dtype, shape, has_weight):
    B, S, D = shape
    x, w, scale, shift = _leaves(dtype, (B, S, D), (D,), (B, D), (B, D))
    w = w if has_weight else None
    inputs = [x, w, scale, shift]
    y = modulated_rms_norm(x, w, scale, shift, EPS)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in inputs if t is not None], dy)

    ref_inputs = _double(inputs)
    y_ref = reference.modulated_rms_norm_reference(*ref_inputs, EPS)
    ref_grads = torch.autograd.grad(y_ref, [t for t in ref_inputs if t is not None], dy.double())
    _assert_close(y, y_ref, dtype, "y")
    names = [n for n, t in zip(["dx", "dweight", "dscale", "dshift"], inputs) if t is not None]
    for name, g, g_ref in zip(names, grads, ref_grads):
        _assert_close(g, g_ref, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_gated_residual_matches_reference(dtype, shape):
    B, S, D = shape
    x, gate, h = _leaves(dtype, (B, S, D), (B, D), (B, S, D), seed=1)
    out = gated_residual(x, gate, h)
    d_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, gate, h], d_out)
    ref_inputs = _double([x, gate, h])
    out_ref = reference.gated_residual_reference(*ref_inputs)
    ref_grads = torch.autograd.grad(out_ref, ref_inputs, d_out.double())
    _assert_close(out, out_ref, dtype, "out")
    for name, g, g_ref in zip(["dx", "dgate", "dh"], grads, ref_grads):
        _assert_close(g, g_ref, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("used", ["both", "x_new_only", "y_only"])
def test_fused_residual_norm_matches_reference(dtype, used):
    B, S, D = 2, 19, 40
    x, gate, h, w, scale, shift = _leaves(dtype, (B, S, D), (B, D), (B, S, D), (D,), (B, D), (B, D),
                                          seed=2)
    inputs = [x, gate, h, w, scale, shift]
    x_new, y = gated_residual_modulated_rms_norm(*inputs, EPS)
    d_x_new, dy = torch.randn_like(x_new), torch.randn_like(y)

    ref_inputs = _double(inputs)
    x_new_ref = reference.gated_residual_reference(*ref_inputs[:3])
    y_ref = reference.modulated_rms_norm_reference(x_new_ref, *ref_inputs[3:], EPS)
    _assert_close(x_new, x_new_ref, dtype, "x_new")
    _assert_close(y, y_ref, dtype, "y")

    outs, ref_outs, cots = {"both": ([x_new, y], [x_new_ref, y_ref], [d_x_new, dy]),
                            "x_new_only": ([x_new], [x_new_ref], [d_x_new]),
                            "y_only": ([y], [y_ref], [dy])}[used]
    grads = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    ref_grads = torch.autograd.grad(ref_outs, ref_inputs, [c.double() for c in cots], allow_unused=True)
    for name, g, g_ref in zip(["dx", "dgate", "dh", "dweight", "dscale", "dshift"], grads, ref_grads):
        if g_ref is None:
            assert g is None or torch.count_nonzero(g) == 0, name
        else:
            _assert_close(g, g_ref, dtype, name)


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
        x_new, y = gated_residual_modulated_rms_norm(x, gate, h, w, scale, shift, EPS)
        runs.append(torch.autograd.grad((x_new * 0.5).sum() + (y * y).sum(), [gate, w, scale, shift]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_module_uses_its_weight():
    B, S, D = 2, 4, 16
    norm = ModulatedRMSNorm(D, eps=EPS)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D))
    x, scale, shift = _leaves(torch.float32, (B, S, D), (B, D), (B, D), seed=5)
    y = norm(x, scale, shift)
    torch.testing.assert_close(y, reference.modulated_rms_norm_reference(x, norm.weight, scale, shift, EPS))
    y.sum().backward()
    assert norm.weight.grad is not None and torch.count_nonzero(norm.weight.grad) > 0


def test_bad_shapes_raise_clear_errors():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="scale must have shape"):
        modulated_rms_norm(x, None, torch.randn(2, 1, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"x must be \[B, S, D\]"):
        gated_residual(torch.randn(6, 8), torch.randn(2, 8), torch.randn(6, 8))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        modulated_rms_norm(x.double(), None, torch.randn(2, 8), torch.randn(2, 8))

"""Triton factorized position-embedding add (moviegen/kernels/pos_embed.py) against the torch
reference in float64. With CUDA: compiled kernels in bf16/fp16/fp32; without: the Triton
interpreter on CPU in fp32/fp16 (tests/kernel_helpers.py says why)."""
from kernel_helpers import select_triton_mode

select_triton_mode()  # before triton is imported (kernels are decorated at import)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed; the torch path is tested elsewhere")

from moviegen.kernels import reference  # noqa: E402
from moviegen.kernels.pos_embed import add_factorized_pos_embed  # noqa: E402
from kernel_helpers import (DEVICE, DTYPE_IDS, DTYPES, as_layout,  # noqa: E402
                             check_against_float64)

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)

# (B, (T, H, W), D, token_offset, S): the full sequence; a shard starting and ending
# mid-line; one token at an offset; a one-frame image; W = 1; D not a power of two.
CASES = [
    (2, (3, 4, 5), 40, 0, 60),
    (2, (3, 4, 5), 40, 7, 31),
    (1, (2, 3, 3), 24, 13, 1),
    (3, (1, 4, 6), 16, 0, 24),
    (2, (4, 3, 1), 20, 2, 9),
]


def _case(B, THW, D, S, dtype, table_dtype, seed):
    T, H, W = THW
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, dt=dtype: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dt).requires_grad_()  # noqa: E731
    # tables hold more rows than the grid uses (tables grow between training stages)
    return rnd(B, S, D), rnd(T + 2, D, dt=table_dtype), rnd(H + 1, D, dt=table_dtype), rnd(W + 3, D, dt=table_dtype)


@dtypes
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-grid{c[1]}-D{c[2]}-off{c[3]}-S{c[4]}")
def test_matches_reference(case, dtype):
    B, THW, D, offset, S = case
    inputs = _case(B, THW, D, S, dtype, dtype, seed=S + offset)
    outs, grads = check_against_float64(
        lambda *a: add_factorized_pos_embed(*a, THW, offset),
        lambda *a: reference.add_factorized_pos_embed_reference(*a, THW, offset), inputs, dtype,
        names=["x", "pos_t", "pos_h", "pos_w"])
    assert outs[0].dtype == dtype
    for g, t in zip(grads, inputs):
        assert g.shape == t.shape


@dtypes
@pytest.mark.parametrize("x_layout,grad_layout", [("transposed", "contiguous"), ("sliced", "expanded"),
                                                  ("contiguous", "transposed"),
                                                  ("last_dim_strided", "last_dim_strided")])
def test_any_layout(dtype, x_layout, grad_layout):
    """x a [S, B, D] buffer seen as [B, S, D] (or sliced), tables every other element of a
    larger buffer, upstream gradients of any layout."""
    THW, offset, S = (3, 4, 5), 7, 31
    inputs = _case(2, THW, 24, S, dtype, dtype, seed=21)
    table = lambda t: as_layout(t, "last_dim_strided")  # noqa: E731
    check_against_float64(
        lambda *a: add_factorized_pos_embed(*a, THW, offset),
        lambda *a: reference.add_factorized_pos_embed_reference(*a, THW, offset), inputs, dtype,
        views=[lambda t: as_layout(t, x_layout, dims=(0, 1)), table, table, table],
        grad_layout=grad_layout, names=["x", "pos_t", "pos_h", "pos_w"])


def test_fp16_activations_with_fp32_tables():
    B, THW, D, offset, S = 2, (2, 3, 4), 24, 5, 14
    inputs = _case(B, THW, D, S, torch.float16, torch.float32, seed=11)
    out = add_factorized_pos_embed(*inputs, THW, offset)
    out_ref = reference.add_factorized_pos_embed_reference(*inputs, THW, offset)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, out_ref, atol=1e-2, rtol=1e-2)
    grads = torch.autograd.grad(out.float().square().sum(), inputs[1:])
    ref_grads = torch.autograd.grad(out_ref.float().square().sum(), inputs[1:])
    for g, g_ref in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, g_ref, atol=2e-2, rtol=1e-2)


def test_shards_reassemble_the_full_sequence():
    """Context-parallel view: shards at their offsets give the full-sequence output and
    their table gradients sum to the full-sequence gradients."""
    B, THW, D = 2, (3, 2, 5), 16
    x, pt, ph, pw = _case(B, THW, D, 30, torch.float32, torch.float32, seed=12)
    full = add_factorized_pos_embed(x, pt, ph, pw, THW, 0)
    d_out = torch.randn_like(full)
    full_grads = torch.autograd.grad(full, [pt, ph, pw], d_out)
    bounds = [0, 7, 18, 30]
    pieces, shard_grads = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        piece = add_factorized_pos_embed(x[:, lo:hi], pt, ph, pw, THW, lo)
        pieces.append(piece)
        shard_grads.append(torch.autograd.grad(piece, [pt, ph, pw], d_out[:, lo:hi]))
    torch.testing.assert_close(torch.cat(pieces, 1), full)
    for i in range(3):
        torch.testing.assert_close(sum(g[i] for g in shard_grads), full_grads[i], atol=1e-5, rtol=1e-5)


def test_backward_is_deterministic():
    inputs = _case(3, (2, 4, 6), 32, 40, torch.float32, torch.float32, seed=13)
    runs = [torch.autograd.grad(add_factorized_pos_embed(*inputs, (2, 4, 6), 5).square().sum(), inputs[1:])
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_bad_inputs_raise_clear_errors():
    x, pt, ph, pw = _case(1, (2, 2, 2), 8, 8, torch.float32, torch.float32, seed=14)
    with pytest.raises(ValueError, match="outside the grid"):
        add_factorized_pos_embed(x, pt, ph, pw, (2, 2, 2), 1)
    with pytest.raises(ValueError, match="pos_h must be"):
        add_factorized_pos_embed(x, pt, ph, pw, (1, 8, 1), 0)

"""Triton flash attention (moviegen/kernels/flash_attention.py) against the torch reference in
float64: outputs, LSE and every gradient. With CUDA: compiled kernels in bf16/fp16/fp32;
without: the Triton interpreter on CPU in fp32/fp16 (tests/kernel_helpers.py says why)."""
import math
import os

from kernel_helpers import select_triton_mode

select_triton_mode()  # before triton is imported (kernels are decorated at import)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed; the torch path is tested elsewhere")

from moviegen.kernels import reference  # noqa: E402
import moviegen.kernels.flash_attention as fa  # noqa: E402
from moviegen.kernels.flash_attention import FlashAttention, flash_attention  # noqa: E402
from kernel_helpers import (DEVICE, DTYPE_IDS, DTYPES, as_layout, assert_close,  # noqa: E402
                             check_against_float64)

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)


def _qkv(B, H, S, L, E, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()  # noqa: E731
    return rnd(B, H, S, E), rnd(B, H, L, E), rnd(B, H, L, E)


def _mask(B, L, seed, fully_masked_sample=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, L, generator=g) > 0.4
    mask[:, 0] = True  # every other sample keeps at least one real key
    if fully_masked_sample is not None:
        mask[fully_masked_sample] = False
    return mask.to(DEVICE)


@pytest.fixture(params=["pointer", "tma"])
def forward_kernel(request, monkeypatch):
    """Run the forward through the pointer kernel and through the tensor-descriptor (TMA)
    kernel that Hopper uses; the latter must not have fallen back."""
    monkeypatch.setenv("MOVIEGEN_ATTN_TMA", "1" if request.param == "tma" else "0")
    yield request.param
    assert not fa._TMA_FAILED, "the TMA forward raised and fell back to the pointer kernel"


def _lse_reference(q, k, mask):
    """log-sum-exp over real keys (-inf for a query without one), float64."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.logsumexp(scores, dim=-1)


def _check(q, k, v, mask, dtype, check_lse=True):
    if os.environ.get("MOVIEGEN_ATTN_TMA") == "1":
        assert fa._use_tma(q, k, v), "the TMA forward would not be used for these inputs"
    out, lse = flash_attention(q, k, v, mask, return_lse=True)
    d_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v], d_out)

    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out_ref = reference.attention_reference(*ref, mask)
    ref_grads = torch.autograd.grad(out_ref, ref, d_out.double())
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, out_ref, dtype, "out", "attention")
    for name, g, g_ref in zip(["dq", "dk", "dv"], grads, ref_grads):
        assert g.dtype == dtype and not torch.isnan(g).any(), name
        assert_close(g, g_ref, dtype, name, "attention")
    if check_lse:
        assert_close(lse, _lse_reference(*ref[:2], mask), dtype, "lse", "attention")
    return out, grads


# (B, H, S, L, E): Sq != Sk and neither a multiple of the 16-row interpreter block,
# one query, one key, head dims 16/32/64/128
SHAPES = [(2, 2, 33, 40, 32), (1, 2, 1, 19, 16), (2, 1, 24, 1, 16), (1, 1, 20, 48, 64),
          (1, 1, 16, 32, 128)]


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-S{}-L{}-E{}".format(*s))
def test_matches_reference(shape, dtype, forward_kernel):
    _check(*_qkv(*shape, dtype, seed=sum(shape)), None, dtype)


@dtypes
def test_key_padding_mask_with_fully_masked_sample(dtype, forward_kernel):
    """Sample 1 has no real key: zeros out, -inf lse, zero (not NaN) gradients."""
    B, H, S, L, E = 3, 2, 17, 37, 32
    q, k, v = _qkv(B, H, S, L, E, dtype, seed=7)
    mask = _mask(B, L, seed=7, fully_masked_sample=1)
    out, (dq, dk, dv) = _check(q, k, v, mask, dtype)
    assert torch.count_nonzero(out[1]) == 0
    for g in (dq, dk, dv):
        assert torch.count_nonzero(g[1]) == 0
    # masked keys of the other samples get no gradient either
    assert torch.count_nonzero(dk[0][:, ~mask[0]]) == 0 and torch.count_nonzero(dv[2][:, ~mask[2]]) == 0
    _, lse = flash_attention(q, k, v, mask, return_lse=True)
    assert torch.isneginf(lse[1]).all() and torch.isfinite(lse[[0, 2]]).all()


def test_lse_gradient():
    """The returned LSE is differentiable (a context-parallel merge backpropagates into it)."""
    q, k, v = _qkv(2, 2, 18, 21, 16, torch.float32, seed=8)
    mask = _mask(2, 21, seed=8)
    out, lse = flash_attention(q, k, v, mask, return_lse=True)
    w_out, w_lse = torch.randn_like(out), torch.randn_like(lse)
    grads = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), [q, k, v])
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    loss_ref = ((reference.attention_reference(*ref, mask) * w_out.double()).sum()
                + (_lse_reference(ref[0], ref[1], mask) * w_lse.double()).sum())
    for name, g, g_ref in zip(["dq", "dk", "dv"], grads, torch.autograd.grad(loss_ref, ref)):
        assert_close(g, g_ref, torch.float32, name, "attention")


def _attn_with_lse(mask):
    return lambda q, k, v: flash_attention(q, k, v, mask, return_lse=True)


def _attn_with_lse_ref(mask):
    def ref(q, k, v):
        return reference.attention_reference(q, k, v, mask), _lse_reference(q, k, mask)
    return ref


# q/k/v layouts (the model's [B, S, H, E] projections seen as [B, H, S, E] first) against
# every upstream-gradient layout: the backward must not assume dO is laid out like O or Q.
QKV_LAYOUTS = ["transposed", "contiguous", "sliced", "last_dim_strided"]
GRAD_LAYOUTS = ["contiguous", "transposed", "expanded", "sliced", "last_dim_strided"]


@pytest.mark.parametrize("qkv_layout", QKV_LAYOUTS)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
def test_any_layout_forward_lse_and_gradients(qkv_layout, grad_layout, forward_kernel):
    """fp32, H > 1, Sq != Sk, a key padding mask; out, LSE and dq/dk/dv vs float64."""
    B, H, S, L, E = 2, 3, 21, 19, 16
    q, k, v = _qkv(B, H, S, L, E, torch.float32, seed=11)
    mask = _mask(B, L, seed=11)
    view = lambda t: as_layout(t, qkv_layout)  # noqa: E731
    check_against_float64(_attn_with_lse(mask), _attn_with_lse_ref(mask), [q, k, v],
                          torch.float32, views=[view] * 3, grad_layout=grad_layout,
                          kind="attention", names=["q", "k", "v"])


@dtypes
@pytest.mark.parametrize("grad_layout", ["contiguous", "transposed"])
def test_bshe_layout_every_dtype(dtype, grad_layout, forward_kernel):
    """The model's layout in every dtype of this machine, both dO layouts a consumer gives."""
    B, H, S, L, E = 2, 2, 40, 33, 32
    q, k, v = _qkv(B, H, S, L, E, dtype, seed=12)
    mask = _mask(B, L, seed=12)
    view = lambda t: as_layout(t, "transposed")  # noqa: E731
    check_against_float64(_attn_with_lse(mask), _attn_with_lse_ref(mask), [q, k, v], dtype,
                          views=[view] * 3, grad_layout=grad_layout, kind="attention",
                          names=["q", "k", "v"])


def test_strided_inputs_from_one_qkv_projection(forward_kernel):
    """q/k/v as slices of one fused [B, S, 3, H, E] projection, gradient into that buffer."""
    B, S, H, E = 2, 21, 3, 16
    g = torch.Generator().manual_seed(9)
    qkv = torch.randn(B, S, 3, H, E, generator=g).to(DEVICE).requires_grad_()
    split = lambda t: [t[:, :, i].transpose(1, 2) for i in range(3)]  # noqa: E731
    check_against_float64(lambda t: flash_attention(*split(t)),
                          lambda t: reference.attention_reference(*split(t)), [qkv],
                          torch.float32, kind="attention", names=["qkv"])


def test_module_and_errors():
    q, k, v = _qkv(1, 1, 5, 6, 16, torch.float32, seed=10)
    assert_close(FlashAttention()(q, k, v), reference.attention_reference(q, k, v), torch.float32,
                 "out", "attention")
    with pytest.raises(ValueError, match="head dim 24 not supported"):
        flash_attention(*_qkv(1, 1, 4, 4, 24, torch.float32, seed=0))
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        flash_attention(q, k, v, torch.ones(1, 5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(TypeError, match="share a dtype"):
        flash_attention(q, k.half(), v)

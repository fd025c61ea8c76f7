"""The flash attention backward's modes against the float64 reference: dQ by atomic adds
(the default, 5 GEMMs a block) and by its own deterministic pass, the dK/dV grid split over
query blocks (few keys: cross-attention), and key blocks of trailing padding skipped.

With CUDA: compiled kernels; without: the Triton interpreter (16 x 16 blocks) on CPU.
"""
import math

from kernel_helpers import select_triton_mode

select_triton_mode()  # before triton is imported (kernels are decorated at import)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed; the torch path is tested elsewhere")

from moviegen.kernels import reference  # noqa: E402
import moviegen.kernels.flash_attention as fa  # noqa: E402
from moviegen.kernels.flash_attention import flash_attention  # noqa: E402
from kernel_helpers import DEVICE, as_layout, assert_close, check_against_float64  # noqa: E402

MODES = pytest.mark.parametrize("deterministic", [False, True], ids=["atomic_dq", "dq_pass"])


@pytest.fixture
def dq_mode(request, monkeypatch):
    monkeypatch.setenv("MOVIEGEN_ATTN_DETERMINISTIC", "1" if request.param else "0")
    return request.param


def _leaves(B, H, S, L, E, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, torch.float32)  # noqa: E731
    return rnd(B, H, S, E).requires_grad_(), rnd(B, H, L, E).requires_grad_(), rnd(B, H, L, E).requires_grad_()


def _lse_reference(q, k, mask):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.logsumexp(scores, dim=-1)


def _with_lse(mask):
    return lambda q, k, v: flash_attention(q, k, v, mask, return_lse=True)


def _with_lse_ref(mask):
    return lambda q, k, v: (reference.attention_reference(q, k, v, mask), _lse_reference(q, k, mask))


@pytest.mark.parametrize("dq_mode", [False, True], ids=["atomic_dq", "dq_pass"], indirect=True)
@pytest.mark.parametrize("split", [1, 3])
def test_model_layout_contiguous_upstream_gradient(dq_mode, split, monkeypatch):
    """q/k/v as [B, S, H, E] memory viewed as [B, H, S, E] (H > 1) while dO and dLSE arrive
    contiguous, as from loss = (y * r).sum() with a contiguous r; the dK/dV grid split in 3
    over 5 query blocks (blocks 0 and 3 / 1 and 4 / 2) or not. Out, LSE, dq/dk/dv."""
    monkeypatch.setattr(fa, "_kv_split", lambda *a: split)
    B, H, S, L, E = 2, 3, 70, 37, 16
    q, k, v = _leaves(B, H, S, L, E, seed=21)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    mask[0, 23:] = False  # key blocks 16-31 partly, 32-36 wholly padding
    mask[1, 5:9] = False
    view = lambda t: as_layout(t, "transposed")  # noqa: E731
    check_against_float64(_with_lse(mask), _with_lse_ref(mask), [q, k, v], torch.float32,
                          views=[view] * 3, grad_layout="contiguous", kind="attention",
                          names=["q", "k", "v"])


@pytest.mark.parametrize("dq_mode", [False, True], ids=["atomic_dq", "dq_pass"], indirect=True)
def test_fully_padded_key_blocks_are_skipped(dq_mode):
    """NaN in the K/V rows of key blocks past a sample's last real key: a kernel that visited
    those blocks would turn every output and gradient it touches into NaN (0 * NaN), so
    finite results equal to the reference prove the blocks were skipped, forward and
    backward. Keys inside the last real block stay finite (they are loaded and masked), so
    the poison starts at key 128, a block boundary for every block size (16 in the
    interpreter, up to 128 compiled)."""
    B, H, S, L, E = 2, 2, 20, 160, 16
    q, k, v = _leaves(B, H, S, L, E, seed=22)
    mask = torch.zeros(B, L, dtype=torch.bool, device=DEVICE)
    mask[0, :10] = True   # real keys 0-9: every block from key 16 on is padding only
    mask[1, :129] = True  # the last visited block holds one real key
    mask[1, 3] = False
    poison = torch.zeros(B, 1, L, 1, device=DEVICE)
    poison[0, :, 128:] = float("nan")
    k_in, v_in = k + poison, v + poison  # NaN only where padding fills whole blocks
    out, lse = flash_attention(q, k_in, v_in, mask, return_lse=True)
    d_out, d_lse = torch.randn_like(out), torch.randn_like(lse)
    dq, dk, dv = torch.autograd.grad((out * d_out).sum() + (lse * d_lse).sum(), [q, k, v])

    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out_ref = reference.attention_reference(*ref, mask)
    lse_ref = _lse_reference(ref[0], ref[1], mask)
    grads_ref = torch.autograd.grad((out_ref * d_out.double()).sum() + (lse_ref * d_lse.double()).sum(), ref)
    assert_close(out, out_ref, torch.float32, "out", "attention")
    assert_close(lse, lse_ref, torch.float32, "lse", "attention")
    for name, g, g_ref in zip(["dq", "dk", "dv"], (dq, dk, dv), grads_ref):
        assert torch.isfinite(g).all(), f"{name}: a padded key block was visited"
        assert_close(g, g_ref, torch.float32, name, "attention")
    assert torch.count_nonzero(dk[0, :, 10:]) == 0 and torch.count_nonzero(dv[0, :, 10:]) == 0


@MODES
def test_split_and_modes_agree(deterministic):
    """Direct launcher calls: every split count gives the same gradients (summed partials);
    more splits than query blocks leave the extra ones empty (zero partials)."""
    B, H, S, L, E = 1, 2, 40, 21, 32
    q, k, v = (t.detach() for t in _leaves(B, H, S, L, E, seed=23))
    out, lse = fa.flash_attention_fwd(q, k, v)
    do = torch.randn_like(out)
    base = fa.flash_attention_bwd(do, q, k, v, out, lse, deterministic=deterministic, kv_split=1)
    for split in (2, 5):
        got = fa.flash_attention_bwd(do, q, k, v, out, lse, deterministic=deterministic, kv_split=split)
        for name, a, b in zip(["dq", "dk", "dv"], got, base):
            assert a.dtype == b.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_split_fills_the_gpu_for_cross_attention_only():
    """512 text keys, 6 heads a rank (48 over tensor parallel 8), 132 SMs: 24 programs
    become 144; self-attention at 73,728 tokens has programs enough and is not split."""
    assert fa._kv_split(73728, 512, 6, 132) == 6
    assert fa._kv_split(73728, 73728, 6, 132) == 1
    assert fa._kv_split(100, 512, 1, 132) == 1  # one block of queries: nothing to split


def test_deterministic_setting(monkeypatch):
    monkeypatch.setenv("MOVIEGEN_ATTN_DETERMINISTIC", "1")
    assert fa.deterministic_backward()
    monkeypatch.setenv("MOVIEGEN_ATTN_DETERMINISTIC", "0")
    assert not fa.deterministic_backward()
    monkeypatch.delenv("MOVIEGEN_ATTN_DETERMINISTIC")
    assert not fa.deterministic_backward()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert fa.deterministic_backward()
    finally:
        torch.use_deterministic_algorithms(previous)

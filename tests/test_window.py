"""W.A.L.T window attention: the windowed model against explicit masks over the full
sequence (outputs and gradients, fp32), the config checks, the FLOPs, and a tiny run
that learns. The parallel layouts are checked against one process in
tests/test_window_parallel.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from moviegen.models.transformer import Attention, build_model, effective_window
from dist_helpers import make_batch, loss_of, reference_state, tiny_args


def window_args(spatial=(2, 3), spatiotemporal=(2, 2, 3), **kw):
    return dataclasses.replace(tiny_args(), attention_pattern="window", spatial_window=spatial,
                               spatiotemporal_window=spatiotemporal, **kw)


def window_ids(grid_thw, win_thw) -> torch.Tensor:
    """Window index of every token of a t-major grid."""
    (t, h, w), (a, b, c) = grid_thw, win_thw
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                indexing="ij")
    return (((tt // a) * (h // b) + hh // b) * (w // c) + ww // c).flatten()


class MaskedReferenceAttention(Attention):
    """Full-sequence attention with an explicit [S, S] same-window mask (SDPA)."""

    def forward(self, x_BSD, context_BLD=None, key_padding_mask_BL=None, grid_thw=None):
        if context_BLD is not None or self.window is None:
            return super().forward(x_BSD, context_BLD, key_padding_mask_BL)
        B, S, _ = x_BSD.shape
        q, k, v = (lin(x_BSD).view(B, S, -1, self.head_dim).transpose(1, 2)
                   for lin in (self.wq, self.wk, self.wv))
        ids = window_ids(grid_thw, effective_window(self.window, grid_thw))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ids[:, None] == ids[None, :])
        return self.wo(out.transpose(1, 2).reshape(B, S, -1))


def _models(args):
    state = reference_state(args)
    model = build_model(args)
    model.load_state_dict(state)
    ref = build_model(args)
    ref.load_state_dict(state)
    for block in ref.blocks.values():
        block.attn.__class__ = MaskedReferenceAttention
    return model, ref


@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("windows", [((2, 3), (2, 2, 3)), ((4, 2), (4, 4, 1)),
                                     ((16, 16), (8, 8, 8))])
def test_window_model_matches_masked_reference(kind, windows):
    args = window_args(*windows)
    model, ref = _models(args)
    inputs = make_batch(kind, 4, seed=3)
    loss = loss_of(model, inputs)
    loss.backward()
    ref_loss = loss_of(ref, inputs)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and ref_grads[name].grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def test_window_differs_from_full_attention():
    """A window smaller than the grid changes the model (the test above can fail)."""
    args = window_args()
    model, _ = _models(args)
    full = build_model(dataclasses.replace(args, attention_pattern="full"))
    full.load_state_dict(model.state_dict())
    x_t, t, _, embeds, masks = make_batch("video", 2, seed=5)
    with torch.no_grad():
        diff = (model(x_t, t, embeds, masks) - full(x_t, t, embeds, masks)).abs().max()
    assert diff > 1e-4  # far above the 1e-6 the masked reference is held to


def test_blocks_alternate_spatial_and_spatiotemporal():
    model = build_model(window_args(n_layers=4))
    assert [b.attn.window for b in model.blocks.values()] == [
        (1, 2, 3), (2, 2, 3), (1, 2, 3), (2, 2, 3)]
    assert all(b.cross_attn.window is None for b in model.blocks.values())


def test_effective_window_clamps_and_refuses_untiled_grids():
    assert effective_window((8, 2, 3), (1, 4, 6)) == (1, 2, 3)  # an image: no time mixing
    assert effective_window((16, 16, 16), (4, 4, 6)) == (4, 4, 6)
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(4, 4, 6\)"):
        effective_window((1, 4, 4), (4, 4, 6))


def test_config_refuses_windows_that_do_not_tile_the_data():
    from functools import partial

    from moviegen.config import ConfigError, JobConfig
    from moviegen.config import load_config as load
    from moviegen.training.diffusion import check_job

    load_config = partial(load, checks=check_job)  # as python -m moviegen.train parses
    base = ["--model.attention_pattern=window"]
    cfg = load_config("launch/configs/tiny.yaml", base + [
        "--model.spatial_window=2", "--model.spatial_window=3"], JobConfig)
    assert cfg.model.spatial_window == [2, 3]
    with pytest.raises(ConfigError, match=r"model.spatial_window.*\[3, 4\].*\(4, 4, 6\)"):
        load_config("launch/configs/tiny.yaml", base + [
            "--model.spatial_window=3", "--model.spatial_window=4"], JobConfig)
    with pytest.raises(ConfigError, match=r"model.spatiotemporal_window.*\[3, 4, 6\]"):
        load_config("launch/configs/tiny.yaml", base + [
            "--model.spatiotemporal_window=3", "--model.spatiotemporal_window=4",
            "--model.spatiotemporal_window=6"], JobConfig)
    with pytest.raises(ConfigError, match="model.attention_pattern"):
        load_config("launch/configs/tiny.yaml", ["--model.attention_pattern=sliding"], JobConfig)


def test_window_flops_per_block_and_info():
    from moviegen.info import main
    from moviegen.models.flops import flops_per_sample
    from moviegen.planning import model_args_for
    args = model_args_for("30b", "window", (16, 16), (8, 8, 8))
    grid, S = (32, 48, 48), 73728
    fl = flops_per_sample(args, S, 768, grid)
    # 24 spatial blocks of 256 keys per query, 24 spatiotemporal blocks of 512
    assert fl["self_attention"] == 12 * S * args.dim * 24 * (256 + 512)
    full = flops_per_sample(model_args_for("30b"), S, 768)
    assert full["self_attention"] == 12 * 48 * S * S * args.dim
    assert fl["dense"] == full["dense"]
    with pytest.raises(ValueError, match="patch grid"):
        flops_per_sample(args, S, 768)  # never a silent full-attention count
    info = main(["--model", "30b", "--seq_len", "73728", "--attention_pattern", "window",
                 "--world", "256", "--cp", "8", "--tp", "8"])
    assert info["flops_per_sample"]["attention"] == fl["attention"]
    cp = info["memory_per_gpu"]["context_parallel"]["per_block_forward_gb"]
    assert cp["spatial"]["gb"] == 0.0
    # cp 8: 4 frames per rank, 8-frame windows: K and V of 9216 tokens to one other rank
    assert cp["spatiotemporal"]["gb"] == pytest.approx(2 * 9216 * 6144 / 8 * 2 / 1e9)


def test_tiny_window_run_learns():
    from moviegen.flow import flow_matching_loss
    torch.manual_seed(0)
    model = build_model(window_args())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = make_batch("video", 4, seed=7)
    x_t, t, target, embeds, masks = batch
    losses = []
    for _ in range(30):
        sum_sq, count = flow_matching_loss(model(x_t, t, embeds, masks), target)
        loss = sum_sq / count
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

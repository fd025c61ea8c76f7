import time

import pytest
import torch

from moviegen.models.transformer import (DEFAULT_TEXT_DIMS, MODEL_REGISTRY, ModelArgs, MovieGenTransformer,
                            adapt_stage_state_dict, build_model, count_parameters,
                            resize_position_tables)


def tiny(**kw):
    return ModelArgs(text_dims={"byt5": 24, "metaclip": 16}, **kw)


def text(B, g):
    e = {"byt5": torch.randn(B, 5, 24, generator=g), "metaclip": torch.randn(B, 3, 16, generator=g)}
    m = {"byt5": torch.ones(B, 5, dtype=torch.bool), "metaclip": torch.ones(B, 3, dtype=torch.bool)}
    m["byt5"][:, 3:] = False
    return e, m


def perturb(model):
    """Zero-initialised gates and output hide most of the model; make every path live."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("shape", [(16, 3, 6, 10), (16, 1, 8, 4), (16, 5, 2, 14)])
def test_shapes_non_square_and_one_frame(shape):
    g = torch.Generator().manual_seed(0)
    m = build_model(tiny())
    x = torch.randn(2, *shape, generator=g)
    out = m(x, torch.rand(2, generator=g), *text(2, g))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised final projection


def test_every_parameter_gets_a_gradient():
    g = torch.Generator().manual_seed(0)
    m = build_model(tiny())
    perturb(m)
    out = m(torch.randn(2, 16, 2, 4, 6, generator=g), torch.rand(2, generator=g), *text(2, g))
    out.square().mean().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_gates_and_final_layer_start_at_zero():
    m = build_model(tiny())
    assert torch.count_nonzero(m.final_layer.proj.weight) == 0
    assert torch.count_nonzero(m.time_embed.to_modulation.weight) == 0
    for b in m.blocks.values():
        assert torch.count_nonzero(b.modulation[2]) == 0 and torch.count_nonzero(b.modulation[5]) == 0
        assert torch.count_nonzero(b.modulation[0]) > 0  # shift/scale tables are random


def test_masked_text_tokens_have_no_influence():
    g = torch.Generator().manual_seed(1)
    m = build_model(tiny())
    perturb(m)
    x, t = torch.randn(1, 16, 2, 4, 4, generator=g), torch.rand(1, generator=g)
    e, msk = text(1, g)
    ref = m(x, t, e, msk)
    e2 = {k: v.clone() for k, v in e.items()}
    e2["byt5"][:, 3:] = 100.0  # padded positions
    assert torch.allclose(m(x, t, e2, msk), ref, atol=1e-6)
    e2["byt5"][:, 0] = 100.0  # a real token
    assert not torch.allclose(m(x, t, e2, msk), ref, atol=1e-3)


def test_position_is_used_per_axis():
    """Swapping two frames changes the prediction only through positions (no RoPE)."""
    g = torch.Generator().manual_seed(2)
    m = build_model(tiny())
    perturb(m)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    t = torch.rand(1, generator=g)
    e, msk = text(1, g)
    out = m(x, t, e, msk)
    out_swapped = m(x.flip(2), t, e, msk).flip(2)
    assert not torch.allclose(out, out_swapped, atol=1e-4)
    with torch.no_grad():
        m.pos_embed.pos_t.zero_()
    out = m(x, t, e, msk)
    assert torch.allclose(out, m(x.flip(2), t, e, msk).flip(2), atol=1e-5)


def test_grid_larger_than_tables_is_a_clear_error():
    m = build_model(tiny(max_t=2, max_h=4, max_w=4))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="exceeds the position tables"):
        m(torch.randn(1, 16, 3, 8, 8, generator=g), torch.rand(1), *text(1, g))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        m(torch.randn(1, 16, 1, 7, 8, generator=g), torch.rand(1), *text(1, g))


def test_meta_build_30b_counts_29_to_31_billion_instantly():
    t0 = time.perf_counter()
    with torch.device("meta"):
        m = MovieGenTransformer(ModelArgs(**MODEL_REGISTRY["30b"], text_dims=DEFAULT_TEXT_DIMS))
    counts = count_parameters(m)
    assert 29e9 <= counts["total"] <= 31e9
    # 48 x (4d^2 + 4d^2 + 3 d 16384) = 28.99B in the blocks (Movie Gen 30B)
    d = 6144
    assert counts["blocks"] == 48 * (8 * d * d + 3 * d * 16384 + 6 * d + 3 * d)
    assert all(p.is_meta for p in m.parameters())
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("name", ["7b", "5b", "1b"])
def test_registry_sizes_build_on_meta(name):
    with torch.device("meta"):
        m = MovieGenTransformer(ModelArgs(**MODEL_REGISTRY[name], text_dims=DEFAULT_TEXT_DIMS))
    assert len(m.blocks) == MODEL_REGISTRY[name]["n_layers"]


def test_meta_then_init_matches_plain_init_statistics():
    m = build_model(tiny())
    for n, p in m.named_parameters():
        assert torch.isfinite(p).all(), n
    # every Linear in a block got the small init, not torch's default kaiming range
    w = m.blocks["0"].attn.wq.weight
    assert 0.01 < w.std().item() < 0.03


@pytest.mark.parametrize("mode", ["interpolate", "extend"])
def test_position_table_resize(mode):
    m = build_model(tiny(max_t=4, max_h=6, max_w=5))
    old_t = m.pos_embed.pos_t.detach().clone()
    old_w = m.pos_embed.pos_w.detach().clone()
    resize_position_tables(m, 8, 12, 5, mode=mode)
    assert m.pos_embed.pos_t.shape == (8, 64) and m.pos_embed.pos_h.shape == (12, 64)
    assert torch.equal(m.pos_embed.pos_w, old_w)  # unchanged size stays identical
    if mode == "extend":
        assert torch.equal(m.pos_embed.pos_t[:4], old_t)
    else:
        assert torch.allclose(m.pos_embed.pos_t[0], old_t[0]) and torch.allclose(m.pos_embed.pos_t[-1], old_t[-1])
    g = torch.Generator().manual_seed(0)
    out = m(torch.randn(1, 16, 8, 24, 10, generator=g), torch.rand(1), *text(1, g))
    assert out.shape == (1, 16, 8, 24, 10)


def test_stage_checkpoint_loads_into_bigger_tables():
    small = build_model(tiny(max_t=2, max_h=4, max_w=4))
    big = build_model(tiny(max_t=4, max_h=8, max_w=8))
    state = adapt_stage_state_dict(small.state_dict(), big, "interpolate")
    big.load_state_dict(state)  # strict: every key and shape fits
    assert torch.equal(big.blocks["1"].ffn.w2.weight, small.blocks["1"].ffn.w2.weight)
    assert torch.allclose(big.pos_embed.pos_h[0], small.pos_embed.pos_h[0])

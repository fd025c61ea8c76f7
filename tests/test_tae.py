"""TAE model: shapes for any frame count, OPL by hand, tiled vs untiled, meta init, save/load."""
import json
import math

import pytest
import torch

from moviegen.models.tae import (TAE, TAEConfig, TemporalConv, latent_frames, load_tae,
                          outlier_penalty_loss, save_tae)


def _tiny(**kw) -> TAE:
    torch.manual_seed(0)
    tae = TAE(TAEConfig(preset="tiny", base_channels=8, **kw))
    tae.init_weights()
    return tae.eval()


def _roughen(tae: TAE, std: float = 0.2) -> TAE:
    """Temporal convs start as the identity, which would make tiling trivially exact: mix frames."""
    with torch.no_grad():
        for m in tae.modules():
            if isinstance(m, TemporalConv):
                m.weight.add_(torch.randn_like(m.weight) * std)
    return tae


@pytest.mark.parametrize("T", [1, 5, 7, 9, 17])
def test_shapes_for_odd_frame_counts_and_non_square(T):
    tae = _tiny()
    assert (tae.temporal_compression, tae.spatial_compression, tae.latent_channels) == (4, 4, 8)
    video = torch.rand(2, 3, T, 32, 48) * 2 - 1
    with torch.no_grad():
        z = tae.encode(video)
        assert z.shape == (2, 8, math.ceil(T / 4), 8, 12) == (2, *tae.latent_shape(T, 32, 48))
        assert tae.decode(z, num_frames=T).shape == video.shape
        assert tae.decode(z).shape == (2, 3, 4 * math.ceil(T / 4), 32, 48)
        recon, mean, logvar = tae(video)
    assert recon.shape == video.shape and mean.shape == logvar.shape == z.shape


def test_image_is_a_one_frame_video():
    tae = _tiny()
    image = torch.rand(1, 3, 1, 16, 24) * 2 - 1
    with torch.no_grad():
        z = tae.encode(image)
        assert z.shape == (1, 8, 1, 4, 6)
        assert tae.decode(z, num_frames=1).shape == image.shape


def test_frame_count_formula_and_errors():
    assert [latent_frames(T, 8) for T in (1, 8, 9, 16, 17, 256)] == [1, 1, 2, 2, 3, 32]
    tae = _tiny()
    z = torch.zeros(1, 8, 2, 4, 4)
    with pytest.raises(ValueError, match="decode to 5..8 frames"):
        tae.decode(z, num_frames=9)
    with pytest.raises(ValueError, match="divisible"):
        tae.encode(torch.zeros(1, 3, 4, 30, 32))


def test_full_preset_on_meta_device():
    """Movie Gen's size: 8x in T, H, W and 16 channels; shapes propagate on meta for free."""
    with torch.device("meta"):
        tae = TAE(TAEConfig(preset="full"))
        z = tae.encode(torch.empty(1, 3, 17, 64, 96))
        video = tae.decode(z, num_frames=17)
    assert (tae.temporal_compression, tae.spatial_compression, tae.latent_channels) == (8, 8, 16)
    assert z.shape == (1, 16, 3, 8, 12) and video.shape == (1, 3, 17, 64, 96)


def test_meta_construction_then_init_matches_eager():
    cfg = TAEConfig(preset="tiny", base_channels=8)
    with torch.device("meta"):
        meta = TAE(cfg)
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(3)
    meta.init_weights()
    eager = TAE(cfg)
    torch.manual_seed(3)
    eager.init_weights()
    for (name, a), (_, b) in zip(meta.state_dict().items(), eager.state_dict().items()):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # fresh temporal convs are the identity (a 2.5D conv starts as its 2D conv frame by frame)
    w = meta.encoder.conv_in.temporal.weight
    assert torch.equal(w[:, :, 1], torch.eye(w.shape[0])) and not w[:, :, [0, 2]].any()
    assert meta.encoder.mid.layers["attn_time"].out.weight.std() > 0
    assert meta.decoder.norm_out.weight.eq(1).all()


def test_opl_against_hand_computation():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 2, 2, 3)
    z[0, :, 1, 1, 2] = torch.tensor([6.0, -5.0, 7.0])  # an outlier "spot"
    r = 1.5
    total = 0.0
    for b in range(2):
        x = z[b].reshape(3, -1).tolist()  # C x P
        P = len(x[0])
        mu = [sum(row) / P for row in x]
        sd = [math.sqrt(sum((v - m) ** 2 for v in row) / P) for row, m in zip(x, mu)]
        thresh = r * math.sqrt(sum(s * s for s in sd))
        for p in range(P):
            dist = math.sqrt(sum((x[c][p] - mu[c]) ** 2 for c in range(3)))
            total += max(dist - thresh, 0.0) / P
    expected = total / 2
    got = outlier_penalty_loss(z, r=r)
    assert expected > 0
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert outlier_penalty_loss(torch.randn(2, 16, 1, 8, 8) * 0.01, r=3.0).item() < 1e-3


def test_encode_tiled_equals_untiled_where_tiles_align():
    tae = _roughen(_tiny())
    video = torch.rand(1, 3, 37, 16, 16) * 2 - 1
    with torch.no_grad():
        tiled = tae.encode_tiled(video, tile_frames=16)
        assert tiled.shape == tae.encode(video).shape == (1, 8, 10, 4, 4)
        # each 16-frame tile is an independent encode: equal to encoding that tile alone
        for i, s in enumerate(range(0, 37, 16)):
            torch.testing.assert_close(tiled[:, :, 4 * i:4 * i + 4], tae.encode(video[:, :, s:s + 16]))
        # a clip no longer than a tile is one tile: exactly the untiled encode
        torch.testing.assert_close(tae.encode_tiled(video[:, :, :13]), tae.encode(video[:, :, :13]))
    with pytest.raises(ValueError, match="multiple"):
        tae.encode_tiled(video, tile_frames=6)


def _smooth_latents(t: int) -> torch.Tensor:
    torch.manual_seed(1)  # latents that drift slowly over time, as a trained TAE's do
    a, b = torch.randn(2, 1, 8, 1, 4, 4)
    w = torch.linspace(0, 1, t).view(1, 1, t, 1, 1)
    return a * (1 - w) + b * w


def _frame_steps(video: torch.Tensor) -> torch.Tensor:
    return (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))


def _decoder_reach(tae: TAE, t: int = 40) -> int:
    """How many latent frames either side of its own one a decoded frame depends on."""
    z = torch.randn(1, tae.latent_channels, t, 4, 4, requires_grad=True)
    mid = (t // 2) * tae.temporal_compression
    (grad,) = torch.autograd.grad(tae.decode(z)[:, :, mid].sum(), z)
    used = (grad.abs().sum(dim=(0, 1, 3, 4)) > 0).nonzero().flatten()
    return int(max(t // 2 - used.min(), used.max() - t // 2))


def test_decode_tiled_equals_untiled_away_from_seams():
    # Without attention a decoded frame sees a finite window of latent frames (R either side;
    # 2.5D convs at three rates make R about 14 here). Tiles of 34 latent frames overlapping by
    # 20 on 48 latent frames leave [0, 14) and [34, 48) decoded from a full window in one tile.
    tae = _roughen(_tiny(attention=False))
    reach = _decoder_reach(tae)
    assert 1 <= reach <= 14
    z = _smooth_latents(48)
    with torch.no_grad():
        full = tae.decode(z)
        tiled = tae.decode_tiled(z, tile_latent_frames=34, overlap_latent_frames=20)
    assert tiled.shape == full.shape == (1, 3, 192, 16, 16)
    away = torch.zeros(192, dtype=torch.bool)
    away[:14 * 4] = away[34 * 4:] = True
    torch.testing.assert_close(tiled[:, :, away], full[:, :, away], rtol=0, atol=1e-5)
    # inside the overlap the blend stays close to the untiled decode
    assert (tiled - full).abs().max() < 0.25 * full.abs().max()
    # num_frames crops like decode
    assert tae.decode_tiled(z, num_frames=190).shape[2] == 190


def test_decode_tiled_has_no_seam():
    """Frame-to-frame change at the tile boundaries is no larger than anywhere in the untiled
    decode; the same check catches the seam of tiles cut without overlap."""
    for tae in (_roughen(_tiny(attention=False)), _roughen(_tiny())):
        z = _smooth_latents(14)
        with torch.no_grad():
            full_steps = _frame_steps(tae.decode(z))
            blended = _frame_steps(tae.decode_tiled(z))  # 4-frame tiles, 2 overlapping
            hard_cut = _frame_steps(tae.decode_tiled(z, overlap_latent_frames=0))
        limit = 1.25 * full_steps.max()
        assert blended.max() <= limit, (blended.max(), limit)
        assert hard_cut.max() > limit  # the metric does see a seam when there is one


def test_save_load_round_trip(tmp_path):
    tae = _roughen(_tiny())
    tae.cfg.latent_shift, tae.cfg.latent_scale = 0.25, 2.0
    path = save_tae(tae, str(tmp_path))
    with open(tmp_path / "tae_config.json") as f:
        assert json.load(f)["latent_channels"] == 8
    loaded = load_tae(path)
    also = load_tae(str(tmp_path))  # the directory works too
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        z = tae.encode(video)
        torch.testing.assert_close(loaded.encode(video), z, rtol=0, atol=0)
        torch.testing.assert_close(also.decode(z, 5), tae.decode(z, 5), rtol=0, atol=0)
    assert loaded.cfg == tae.cfg
    torch.testing.assert_close(loaded.unscale_latents(loaded.scale_latents(z)), z)

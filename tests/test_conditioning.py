"""Conditioned generation: the model's conditioning channels, the tasks, their draws.

Model: cond None equals all-zero conditioning; the zero-initialised conditioning weights
make a conditioned model compute what the text-to-video model computes (fresh, and a
text-to-video export loaded through train.init_from into model.cond_channels=17); a
non-zero conditioning weight makes the conditioning count; bad shapes are refused.
Tasks: make_condition, the given frames of each task, the per-sample draws (same seed,
same draw, whatever the batch around it), the loss mask, the upsampler's degradation.
"""
from __future__ import annotations

import os

import pytest
import torch

from moviegen.conditioning import (TASKS, downsample_upsample, draw_task, given_frames,
                                   make_condition, training_condition)
from moviegen.models.transformer import (ModelArgs, adapt_stage_state_dict, build_model)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")


def _inputs(B=2, C=16, T=3, H=4, W=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=g)
    t = torch.rand(B, generator=g)
    embeds = {"byt5": torch.randn(B, 5, 64, generator=g)}
    masks = {"byt5": torch.ones(B, 5, dtype=torch.bool)}
    return x, t, embeds, masks


# --------------------------------------------------------------------------- model
def test_zero_initialised_condition_changes_nothing_until_trained():
    plain = build_model(ModelArgs(), seed=3)
    cond = build_model(ModelArgs(cond_channels=17), seed=3)
    # the latent channels are initialised exactly as in the text-to-video model
    w, w0 = cond.patch_embed.proj.weight, plain.patch_embed.proj.weight
    assert w.shape == (64, 33, 1, 2, 2) and torch.equal(w[:, :16], w0)
    assert torch.count_nonzero(w[:, 16:]) == 0 and w[:, :16].abs().min() >= 0
    # the last layer is zero-init too; give it weights so the outputs are not all zero
    with torch.no_grad():
        for m in (plain, cond):
            torch.manual_seed(1)
            m.final_layer.proj.weight.normal_(std=0.02)
            for b in m.blocks.values():
                b.modulation[2].fill_(0.5)
                b.modulation[5].fill_(0.5)
    x, t, embeds, masks = _inputs()
    ref = plain(x, t, embeds, masks)
    assert ref.abs().max() > 0
    given = torch.tensor([[True, False, False], [True, True, False]])
    c = make_condition(torch.randn_like(x), given)
    assert torch.equal(cond(x, t, embeds, masks, c), ref)
    assert torch.equal(cond(x, t, embeds, masks), ref)  # None: nothing given
    # once the conditioning weights move, the conditioning counts (and None = zeros)
    with torch.no_grad():
        w[:, 16:].normal_(std=0.1)
    out = cond(x, t, embeds, masks, c)
    assert not torch.allclose(out, ref)
    assert torch.equal(cond(x, t, embeds, masks), cond(x, t, embeds, masks,
                                                       torch.zeros_like(c)))


def test_conditioning_shapes_are_checked():
    x, t, embeds, masks = _inputs()
    plain = build_model(ModelArgs())
    with pytest.raises(ValueError, match="model.cond_channels=0"):
        plain(x, t, embeds, masks, torch.zeros(2, 17, 3, 4, 6))
    cond = build_model(ModelArgs(cond_channels=17))
    with pytest.raises(ValueError, match=r"expected \[B, 17, T, H, W\]"):
        cond(x, t, embeds, masks, torch.zeros(2, 16, 3, 4, 6))
    with pytest.raises(ValueError, match=r"expected \[B, 17, T, H, W\]"):
        cond(x, t, embeds, masks, torch.zeros(2, 17, 2, 4, 6))


def test_cond_channels_must_be_zero_or_in_channels_plus_one(tmp_path):
    from moviegen.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.cond_channels: 16, but it must be 0 .* 17"):
        load_config(TINY, [f"--output_dir={tmp_path}", "--model.cond_channels=16"])
    assert load_config(TINY, [f"--output_dir={tmp_path}",
                              "--model.cond_channels=17"]).model.cond_channels == 17


def test_text_to_video_export_loads_into_a_conditioned_model_unchanged(tmp_path):
    """train.init_from of a text-to-video export into model.cond_channels=17: the trainer's
    model computes bitwise what the export computes, with or without conditioning."""
    from moviegen.config import load_config
    from moviegen.training.diffusion import DiffusionTrainer
    from moviegen.training.export import load_inference

    common = ["--train.steps=3", "--train.val_every=1000", "--train.progress_bar=false",
              "--metrics.tensorboard=false", "--data.batch_size=4", "--train.warmup_steps=1"]
    t2v = DiffusionTrainer(load_config(TINY, [f"--output_dir={tmp_path}/t2v", *common]))
    t2v.fit()
    t2v.close()
    export = str(tmp_path / "t2v" / "final")
    ref_model, _, _ = load_inference(export)
    cfg = load_config(TINY, [f"--output_dir={tmp_path}/i2v", *common,
                             f"--train.init_from={export}", "--model.cond_channels=17"])
    cond_model = DiffusionTrainer(cfg)
    model = cond_model.model.eval()
    x, t, embeds, masks = _inputs(T=4, H=8, W=12)
    ref = ref_model(x, t, embeds, masks)
    assert ref.abs().max() > 0  # three steps moved the zero-init output layer
    c = make_condition(torch.randn_like(x), torch.tensor([True, False, False, False]))
    with torch.no_grad():
        assert torch.equal(model(x, t, embeds, masks), ref)
        assert torch.equal(model(x, t, embeds, masks, c), ref)
    cond_model.close()


def test_adapt_pads_only_the_conditioning_channels():
    plain = build_model(ModelArgs(), seed=0)
    cond = build_model(ModelArgs(cond_channels=17), seed=1)
    state = adapt_stage_state_dict(plain.state_dict(), cond)
    w = state["patch_embed.proj.weight"]
    assert w.shape == cond.patch_embed.proj.weight.shape
    assert torch.equal(w[:, :16], plain.patch_embed.proj.weight)
    assert torch.count_nonzero(w[:, 16:]) == 0
    cond.load_state_dict(state)  # strict: every key fits


# --------------------------------------------------------------------------- tasks
def test_make_condition_keeps_given_frames_and_marks_them():
    lat = torch.randn(2, 16, 4, 2, 3)
    given = torch.tensor([[True, False, False, False], [False, True, False, True]])
    c = make_condition(lat, given)
    assert c.shape == (2, 17, 4, 2, 3)
    for b in range(2):
        for f in range(4):
            if given[b, f]:
                assert torch.equal(c[b, :16, f], lat[b, :, f])
                assert torch.all(c[b, 16, f] == 1)
            else:
                assert torch.count_nonzero(c[b, :, f]) == 0
    # one [T] mask for the whole batch
    assert torch.equal(make_condition(lat, given[0]), make_condition(lat, given[[0, 0]]))
    with pytest.raises(ValueError, match=r"expected \[B, T\] = \[2, 4\]"):
        make_condition(lat, torch.ones(2, 3, dtype=torch.bool))


def test_each_task_gives_its_frames():
    assert given_frames("t2v", 5).tolist() == [False] * 5
    assert given_frames("i2v", 5).tolist() == [True, False, False, False, False]
    assert given_frames("extend", 5, extend_frames=2).tolist() == [True, True, False,
                                                                    False, False]
    assert given_frames("interpolate", 5, interpolate_every=2).tolist() == [
        True, False, True, False, True]
    assert given_frames("upsample", 3).tolist() == [True] * 3
    with pytest.raises(ValueError, match="unknown task 'i2i'"):
        given_frames("i2i", 3)


class _Train:
    tasks = {"t2v": 0.2, "i2v": 0.2, "extend": 0.2, "interpolate": 0.2, "upsample": 0.2}
    extend_frames = 0
    interpolate_every = 2
    cond_noise_max = 0.1
    upsample_blur_max = 1.0
    loss_on_given_frames = False


def test_task_draws_are_functions_of_the_seed_alone():
    from moviegen.flow import sample_seed

    seeds = [sample_seed(0, "train", 3, i) for i in range(64)]
    draws = [draw_task(s, 4, _Train) for s in seeds]
    assert {d.task for d in draws} == set(TASKS)
    again = draw_task(seeds[7], 4, _Train)
    assert again.task == draws[7].task and torch.equal(again.given_T, draws[7].given_T)
    assert again.noise_level == draws[7].noise_level
    ks = {int(d.given_T.sum()) for d in draws if d.task == "extend"}
    assert ks <= {1, 2, 3} and len(ks) >= 2  # k drawn from 1..T-1
    assert all(d.noise_level == 0 for d in draws if d.task == "t2v")
    assert all(0 <= d.noise_level <= 0.1 for d in draws)
    # an image (one latent frame) has nothing to generate from given frames
    assert {draw_task(s, 1, _Train).task for s in seeds} <= {"t2v", "upsample"}

    x1 = torch.randn(8, 16, 4, 4, 6)
    cond, loss_mask, names = training_condition(x1, seeds[:8], _Train)
    cond2, loss_mask2, _ = training_condition(x1[3:5], seeds[3:5], _Train)
    assert torch.equal(cond[3:5], cond2) and torch.equal(loss_mask[3:5], loss_mask2)
    for b, name in enumerate(names):
        given = cond[b, 16, :, 0, 0].bool()
        if name in ("i2v", "extend", "interpolate"):
            assert torch.equal(loss_mask[b], ~given)
        else:
            assert loss_mask[b].all()
        if name == "t2v":
            assert torch.count_nonzero(cond[b]) == 0


def test_upsample_input_is_the_low_resolution_video():
    x = torch.randn(1, 16, 2, 8, 12)
    up = downsample_upsample(x)
    assert up.shape == x.shape
    # a video that is already smooth at half resolution passes (nearly) unchanged
    smooth = torch.nn.functional.interpolate(torch.randn(2, 16, 4, 6), size=(8, 12),
                                             mode="bilinear")
    smooth = smooth.view(1, 2, 16, 8, 12).transpose(1, 2)
    assert (downsample_upsample(smooth) - smooth).abs().mean() < 0.5 * (up - x).abs().mean()
    with pytest.raises(ValueError, match="do not divide by the upsampling factor 2"):
        downsample_upsample(torch.randn(1, 16, 2, 7, 12))


def test_upsample_input_from_pixels_is_the_encoded_low_resolution_video():
    from moviegen.conditioning import TaskDraw, low_resolution_latents
    from moviegen.data.sources import RandomPatchEncoder

    enc = RandomPatchEncoder(16, temporal=4, spatial=4)
    pixels = torch.rand(3, 3, 8, 32, 48) * 2 - 1
    x1 = enc.encode(pixels)
    draws = [TaskDraw("upsample", torch.ones(2, dtype=torch.bool), 0.0, 0.0),
             TaskDraw("i2v", torch.tensor([True, False]), 0.0),
             TaskDraw("upsample", torch.ones(2, dtype=torch.bool), 0.0, 0.7)]
    out = low_resolution_latents(x1, draws, pixels, enc.encode, pixels_per_latent=4)
    assert torch.allclose(out[0], enc.encode(downsample_upsample(pixels[:1]))[0], atol=1e-5)
    assert torch.equal(out[1], x1[1])  # not an upsample sample: its own latents
    blurred = enc.encode(downsample_upsample(pixels[2:]))[0]
    assert not torch.allclose(out[2], blurred, atol=1e-3)  # the blur (sigma 2.8 pixels)
    # the latent-space path (no pixels): pooled, bilinear, blurred latents
    lat = low_resolution_latents(x1, draws)
    assert torch.allclose(lat[0], downsample_upsample(x1[:1])[0])


@pytest.mark.timeout(120)
def test_upsampler_trains_from_video_files(tmp_path):
    pytest.importorskip("av")
    from data_helpers import synthetic_dataset
    from moviegen.config import load_config
    from moviegen.training.diffusion import DiffusionTrainer
    from moviegen.training.metrics import read_metrics

    cfg = load_config(os.path.join(ROOT, "launch", "configs", "upsampler_tiny.yaml"), [
        "--data.kind=video", f"--data.video.manifest={synthetic_dataset()}",
        "--data.video.resolution=32", "--data.video.tokens_per_batch=256",
        "--data.video.max_batch_size=4", "--data.video.num_workers=0",
        "--data.video.backend=pyav", "--data.encoder=random_patch", "--train.steps=3",
        "--train.val_every=1000", "--train.log_every=1", "--train.progress_bar=false",
        "--metrics.tensorboard=false", f"--output_dir={tmp_path}"])
    trainer = DiffusionTrainer(cfg)
    trainer.fit()
    trainer.close()
    rows = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert len(rows) == 3 and all(r["loss"] > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_tiny_upsampler_trains_on_cpu_and_uses_its_low_resolution_input(tmp_path):
    """python -m moviegen.train --config launch/configs/upsampler_tiny.yaml: the loss falls,
    and the held-out velocity error ends well below that of the same model trained as
    text-to-video for as long (the low-resolution input carries most of the clip)."""
    import subprocess
    import sys

    from moviegen.training.metrics import read_metrics

    def val_losses(config, name):
        cmd = [sys.executable, "-m", "moviegen.train", "--config",
               os.path.join(ROOT, "launch", "configs", config), f"--output_dir={tmp_path / name}",
               "--train.steps=60", "--train.val_every=60", "--train.progress_bar=false",
               "--metrics.tensorboard=false", "--data.num_val=16"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=220,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert out.returncode == 0, out.stderr[-3000:]
        return [r["val_loss"] for r in read_metrics(str(tmp_path / name)) if "val_loss" in r]

    up = val_losses("upsampler_tiny.yaml", "up")
    t2v = val_losses("tiny.yaml", "t2v")
    assert up[-1] < 0.5 * up[0]
    print("val losses: upsampler", up, "text-to-video", t2v)
    assert up[-1] < 0.9 * t2v[-1], (up, t2v)


def test_image_to_video_is_given_the_first_frame_encoded_alone():
    """With pixels, i2v's given latent is the first pixel frame encoded as an image, and
    latent frame 0 stays in the loss (a video's latent frame 0 summarises several pixel
    frames, so it is still to be generated); extend's given frames are the video's own
    latents and leave the loss."""
    from moviegen.conditioning import image_latents
    from moviegen.data.sources import RandomPatchEncoder

    class OnlyI2v(_Train):
        tasks = {"i2v": 1.0}
        cond_noise_max = 0.0

    enc = RandomPatchEncoder(16, temporal=4, spatial=4)
    pixels = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    x1 = enc.encode(pixels)
    first = image_latents(pixels, enc.encode)
    assert first.shape == (2, 16, 1, 4, 4)
    assert not torch.allclose(first[:, :, 0], x1[:, :, 0])
    cond, loss_mask, names = training_condition(x1, [1, 2], OnlyI2v,
                                                image_latents_BC1HW=first)
    assert names == ["i2v", "i2v"] and loss_mask.all()
    assert torch.equal(cond[:, :16, 0], first[:, :, 0])
    assert torch.count_nonzero(cond[:, :, 1:]) == 0
    cond, loss_mask, _ = training_condition(x1, [1, 2], OnlyI2v)  # no pixels: latent 0
    assert torch.equal(cond[:, :16, 0], x1[:, :, 0]) and not loss_mask[:, 0].any()

import json
import os
import subprocess
import sys

import pytest
import torch

from moviegen.config import load_config
from moviegen.data.latents import SyntheticLatentDataset, SyntheticLatentLoader
from moviegen.data.video_io import read_video
from moviegen.training.metrics import read_metrics
from moviegen.training.diffusion import DiffusionTrainer
from moviegen.training.optim import lr_lambda

REQUIRED = {"step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s",
            "tflops_per_device", "mfu", "max_mem_gb", "data_wait_s"}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("launch/configs/tiny.yaml",
                      ["--train.steps=80", "--train.val_every=40", "--train.log_every=10",
                       "--train.progress_bar=false", f"--output_dir={out}"])
    history = DiffusionTrainer(cfg).fit()
    return out, history


@pytest.mark.slow
def test_loss_falls_and_metrics_have_every_field(short_run):
    out, history = short_run
    rows = read_metrics(str(out))
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(10, 81, 10))
    for r in train_rows:
        assert REQUIRED <= r.keys()
        assert r["mfu"] is None  # CPU has no peak to compare with
        assert r["tokens_per_s"] > 0 and r["step_time_s"] > 0 and r["max_mem_gb"] > 0
    vals = [v for _, v in history["val_loss"]]
    assert len(vals) == 3 and vals[-1] < 0.7 * vals[0]


@pytest.mark.slow
def test_export_is_read_by_the_sampler(short_run, tmp_path):
    out, _ = short_run
    target = tmp_path / "s.pt"
    r = subprocess.run([sys.executable, "-m", "moviegen.sample", "--checkpoint", str(out / "final"),
                        "--prompt", "a red blob moves from left to right", "--prompt", "a blue blob moves from top to bottom",
                        "--output", str(target), "--steps", "6"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    lat = torch.load(target, weights_only=True)["latents"]
    assert lat.shape == (2, 16, 4, 8, 12) and torch.isfinite(lat).all()
    assert not torch.allclose(lat[0], lat[1])


def test_lr_schedule_warmup_then_cosine():
    cfg = load_config(None, ["--train.steps=100", "--train.warmup_steps=10", "--train.min_lr_ratio=0.1"])
    f = lr_lambda(cfg.train)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_synthetic_latents_follow_the_caption_and_resume():
    ds = SyntheticLatentDataset(32, (16, 4, 8, 12), seed=3)
    x0, c0 = ds[0]
    x0b, _ = ds[0]
    assert torch.equal(x0, x0b) and c0.startswith("FPS-16 a red blob")
    a = SyntheticLatentLoader(ds, 4, dp_rank=0, dp_size=2, seed=1)
    b = SyntheticLatentLoader(ds, 4, dp_rank=1, dp_size=2, seed=1)
    seen = []
    for _ in range(a.batches_per_epoch()):
        seen += next(a)["captions"] + next(b)["captions"]
    assert len(seen) == 32
    # resume mid-epoch gives the same next batches
    ref = SyntheticLatentLoader(ds, 4, 0, 1, seed=1)
    for _ in range(3):
        next(ref)
    state = ref.state_dict()
    resumed = SyntheticLatentLoader(ds, 4, 0, 1, seed=1)
    resumed.load_state_dict(state)
    for _ in range(10):  # crosses an epoch boundary
        assert torch.equal(next(ref)["latents"], next(resumed)["latents"])


@pytest.mark.slow
def test_info_cli_reports_30b_and_73728_tokens():
    r = subprocess.run([sys.executable, "-m", "moviegen.info", "--model", "30b"],
                       capture_output=True, text=True, timeout=120)
    info = json.loads(r.stdout)
    assert 29e9 <= info["parameters"]["total"] <= 31e9
    assert info["seq_len"] == 73728 and info["video"]["tokens"] == 73728
    assert 0.5 < info["attention_fraction"] < 0.7


@pytest.mark.slow
def test_training_writes_samples_every_sample_every_steps(tmp_path):
    """Decoded videos (TAE) or latents (no TAE) under samples/step_N/, with EMA weights,
    and the frames in TensorBoard; every sample_every steps and nowhere else."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from moviegen.models.tae import TAE, TAEConfig, save_tae

    torch.manual_seed(0)
    save_tae(TAE(TAEConfig(preset="tiny", base_channels=8, latent_channels=16)),
             str(tmp_path / "tae"))
    prompts = '["a red blob moves from left to right", "a blue blob moves from top to bottom"]'
    common = ["--train.steps=5", "--train.sample_every=2", f"--train.sample_prompts={prompts}",
              "--train.log_every=1", "--train.val_every=100", "--train.progress_bar=false",
              "--flow.sample_steps=3", "--checkpoint.ema_decay=0.9"]
    out = tmp_path / "video"
    DiffusionTrainer(load_config("launch/configs/tiny.yaml", [
        *common, f"--output_dir={out}", f"--data.tae_checkpoint={tmp_path / 'tae'}",
        "--metrics.tensorboard=true"])).fit()
    assert sorted(os.listdir(out / "samples")) == ["step_2", "step_4"]
    step = out / "samples" / "step_4"
    assert json.loads((step / "prompts.json").read_text())["ema"] is True
    for i in (0, 1):
        video = read_video(str(step / f"sample_{i}.webm"))
        assert video.shape[0] == 3 and video.shape[1] > 1  # decoded frames
        assert (step / f"sample_{i}.gif").stat().st_size > 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Images("samples/0")] == [2, 4]

    out = tmp_path / "latents"
    DiffusionTrainer(load_config("launch/configs/tiny.yaml", [*common, f"--output_dir={out}",
                                                     "--checkpoint.ema_decay=0"])).fit()
    assert sorted(os.listdir(out / "samples")) == ["step_2", "step_4"]
    saved = torch.load(out / "samples" / "step_2" / "latents.pt", weights_only=True)
    assert saved["latents"].shape == (2, 16, 4, 8, 12) and torch.isfinite(saved["latents"]).all()
    assert saved["prompts"][1] == "a blue blob moves from top to bottom"


def test_ema_weights_apply_inside_the_block_only():
    from moviegen.training.ema import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.5)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # shadow = before + 0.5
    trained = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.allclose(model.weight, before + 0.5)
    assert torch.equal(model.weight, trained)


@pytest.mark.slow
def test_help_keeps_the_torchrun_example_on_two_lines():
    r = subprocess.run([sys.executable, "-m", "moviegen.train", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    i = next(k for k, x in enumerate(lines) if x.lstrip().startswith("torchrun"))
    assert lines[i].endswith("tiny.yaml \\") and lines[i].startswith("    torchrun ")
    assert lines[i + 1] == "        --parallel.dp_shard=2 --parallel.cp=2 --parallel.tp=2"
    assert "train.sample_every" in r.stdout and "train.sample_prompts" in r.stdout

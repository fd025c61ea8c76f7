"""TAE training through the one training loop: metrics, export, the CLI and its config
errors, FSDP2 over 2 gloo ranks, the optional losses, the clip split, exact resume after
SIGTERM, and a broken file among the clips."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from dist_helpers import spawn
from moviegen.config import ConfigError, TAEJobConfig, load_config
from moviegen.data.clips import clip_loader_config, clips_manifest, held_out_clips
from moviegen.data.loader import build_video_loader
from moviegen.data.video_io import write_frames
from moviegen.models.tae import TAE, TAEConfig, load_tae, outlier_penalty_loss
from moviegen.train_tae import main
from moviegen.training.metrics import read_metrics

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAE_YAML = os.path.join(ROOT, "launch/configs/tae_tiny.yaml")


def write_clips(directory: str, n: int, frames: int = 12, size: int = 32) -> list[str]:
    """``n`` bare VP9 clips (no captions, no manifest) of a square moving across."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        colour = rng.integers(60, 255, size=3)
        video = np.zeros((frames, size, size, 3), np.uint8)
        for t in range(frames):
            x = 2 + (size - 12) * t // max(frames - 1, 1)
            video[t, 10:20, x:x + 10] = colour
        paths.append(write_frames(os.path.join(directory, f"clip_{i:02d}.webm"), video, 8,
                                  realtime=True))
    return paths


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    write_clips(str(d), 5)
    return str(d)


def _args(output_dir, data_dir, *extra):
    return ["--config", TAE_YAML, f"--output_dir={output_dir}", f"--data.data_dir={data_dir}",
            "--tae.base_channels=8", "--data.height=32", "--data.width=32",
            "--data.num_frames=4", "--data.batch_size=2", "--data.image_batch_size=2",
            "--data.num_val=1", "--data.val_frames=5", "--data.num_workers=0",
            "--data.backend=pyav", "--train.steps=4", "--train.log_every=1",
            "--train.val_every=2", "--train.progress_bar=false",
            "--metrics.tensorboard=false", *extra]


def test_short_training_run_writes_metrics_and_checkpoint(tmp_path, clip_dir, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="moviegen.training"):
        history = main(_args(str(out), clip_dir))
    console = [r.getMessage() for r in caplog.records]
    assert [m.split(" |")[0] for m in console if "| loss" in m] == [
        f"tae step {s}/4" for s in (1, 2, 3, 4)]  # the same console line as the transformer
    assert any(m.startswith("tae step 4/4: psnr") for m in console)
    rows = read_metrics(str(out))
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "psnr" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in val_rows] == [0, 2, 4]
    assert [r["kind"] for r in train_rows] == ["video", "video", "video", "image"]  # 1 : 3
    for r in train_rows:
        for key in ("loss", "recon", "opl", "lr", "step_time_s", "grad_norm", "data_wait_s"):
            assert isinstance(r[key], float), key
        assert r["skipped_files"] == 0
    assert history["psnr"][-1] == (4, val_rows[-1]["psnr"])
    assert (out / "recon.gif").exists()
    assert (out / "checkpoints" / "latest").exists()
    tae = load_tae(str(out / "tae.safetensors"))
    assert tae.cfg.base_channels == 8 and tae.cfg.latent_scale > 0
    assert tae.encode(torch.zeros(1, 3, 5, 32, 32)).shape == (1, 8, 2, 8, 8)


def test_cli_help_and_config_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for key in ("--loss.opl_r", "--train.steps", "--checkpoint.every_steps", "--data.data_dir"):
        assert key in help_text
    for override, needle in (("--data.height=30", "data.height"),
                             ("--tae.temporal_compression=8", "tae.temporal_compression"),
                             ("--loss.perceptual_weight=0.1", "perceptual_weights"),
                             ("--parallel.tp=2", "parallel.tp"),
                             ("--train.trainable=[\"encoder.*\"]",
                              "train.trainable: \\['encoder.\\*'\\] is not read by this job")):
        with pytest.raises(ConfigError, match=needle):
            load_config(TAE_YAML, [f"--output_dir={tmp_path}", override], cls=TAEJobConfig)
    with pytest.raises(SystemExit) as info:  # the CLI: one line, exit 2, nothing written
        main(_args(str(tmp_path / "bad"), str(tmp_path), "--data.height=30"))
    assert info.value.code == 2 and not (tmp_path / "bad").exists()


# A value of every shared key the TAE job does not read (its default differs).
NOT_READ_VALUES = {
    "train.position_resize": "extend", "train.sample_every": "10",
    "train.sample_prompts": "[\"a red circle\"]", "train.tasks": "{t2v: 1.0}",
    "train.extend_frames": "2", "train.interpolate_every": "3", "train.cond_noise_max": "0.2",
    "train.upsample_blur_max": "0.5", "train.loss_on_given_frames": "true",
    "train.trainable": "[\"encoder.*\"]", "parallel.tp": "2", "parallel.cp": "2",
    "parallel.ac": "selective", "parallel.ac_full_blocks": "1", "parallel.compile": "true",
    "parallel.reduce_dtype": "bf16", "checkpoint.ema_decay": "0.999",
}


def test_every_shared_key_the_tae_ignores_is_refused_naming_key_and_source(tmp_path, capsys):
    from moviegen.config.tae import TAE_NOT_READ

    assert set(NOT_READ_VALUES) == set(TAE_NOT_READ)
    for key, value in NOT_READ_VALUES.items():
        # on the command line
        with pytest.raises(ConfigError) as info:
            load_config(TAE_YAML, [f"--output_dir={tmp_path}", f"--{key}={value}"],
                        cls=TAEJobConfig)
        assert str(info.value).startswith(f"command line: {key}: "), str(info.value)
        assert "is not read by this job" in str(info.value) and "remove it" in str(info.value)
        # in the file
        section, name = key.split(".")
        tree = yaml.safe_load(open(TAE_YAML).read())
        tree.setdefault(section, {})[name] = yaml.safe_load(value)
        yaml_file = tmp_path / f"{section}_{name}.yaml"
        yaml_file.write_text(yaml.safe_dump(tree))
        with pytest.raises(ConfigError, match=f"^{yaml_file}: {key}: .* is not read by this "
                                              f"job"):
            load_config(str(yaml_file), [f"--output_dir={tmp_path}"], cls=TAEJobConfig)
    # the public command: one line naming the key, exit 2, nothing started or written
    for key in ("train.sample_every", "parallel.ac", "parallel.compile",
                "parallel.reduce_dtype"):
        out = tmp_path / key
        with pytest.raises(SystemExit) as info:
            main(_args(str(out), str(tmp_path), f"--{key}={NOT_READ_VALUES[key]}"))
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"config error: command line: {key}: " in err
        assert not out.exists()
    # --help says which keys this job does not read; the defaults still load
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "--parallel.compile: not read by this job" in help_text
    assert "--train.steps (" in help_text
    load_config(TAE_YAML, [f"--output_dir={tmp_path}", "--parallel.tp=1",
                           "--train.sample_every=0"], cls=TAEJobConfig)


def _fsdp_worker(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from moviegen.models.tae import AxialAttention, ResBlock
    from moviegen.parallel.parallelize import apply_fsdp_units
    from moviegen.parallel.state import gather_full_state_dict, model_tensors

    dist.init_process_group("gloo")
    cfg = TAEConfig(preset="tiny", base_channels=8, variational=False)
    torch.manual_seed(0)
    video = torch.rand(world, 3, 5, 16, 16) * 2 - 1

    def loss_of(model, x):
        recon, mean, _ = model(x)
        return (recon - x).abs().mean() + 0.1 * outlier_penalty_loss(mean)

    torch.manual_seed(1)
    ref = TAE(cfg)
    ref.init_weights()
    sharded = TAE(cfg)
    sharded.load_state_dict(ref.state_dict())
    apply_fsdp_units(sharded, init_device_mesh("cpu", (world,)),
                     [m for m in sharded.modules() if isinstance(m, (ResBlock, AxialAttention))],
                     ("encode", "encode_moments", "decode"))
    for model, x in ((ref, video), (sharded, video[rank:rank + 1])):  # FSDP averages ranks
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_of(model, x).backward()
        opt.step()
    gathered = gather_full_state_dict(model_tensors(sharded), rank == 0)
    if rank == 0:
        for name, p in ref.state_dict().items():
            torch.testing.assert_close(gathered[name], p, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # encode/decode run as FSDP forward methods
        torch.testing.assert_close(sharded.encode(video), ref.encode(video), rtol=1e-4,
                                   atol=1e-5)
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_fsdp2_step_matches_single_process():
    spawn(_fsdp_worker, 2, 110)


def _torchrun_tae(rank: int, world: int, out: str, data: str) -> list:
    history = main(_args(out, data, "--train.steps=3", "--train.val_every=3"))
    return history["psnr"]


@pytest.mark.timeout(180)
def test_tae_trainer_under_fsdp_on_two_ranks(tmp_path, clip_dir):
    per_rank = spawn(_torchrun_tae, 2, 170, str(tmp_path / "fsdp"), clip_dir)
    assert per_rank[0] == per_rank[1] and per_rank[0][-1][0] == 3
    assert (tmp_path / "fsdp" / "tae.safetensors").exists()


def test_optional_perceptual_and_adversarial_terms(tmp_path, clip_dir):
    """Both terms run from local weights only: a VGG16 file on disk, a discriminator from
    scratch (saved with the checkpoint)."""
    from safetensors.torch import save_file

    from moviegen.models.tae_losses import VGG16Features

    torch.manual_seed(0)
    vgg_path = str(tmp_path / "vgg16.safetensors")
    save_file({k: v.contiguous() for k, v in VGG16Features().state_dict().items()}, vgg_path)
    vgg = VGG16Features.from_file(vgg_path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert vgg.distance(x, x).item() == 0.0 and vgg.distance(x, x.flip(-1)).item() > 0
    out = tmp_path / "run"
    main(_args(str(out), clip_dir, "--train.steps=2", f"--loss.perceptual_weights={vgg_path}",
               "--loss.perceptual_weight=0.1", "--loss.adversarial_weight=0.1"))
    rows = [r for r in read_metrics(str(out)) if "loss" in r]
    assert rows[-1]["step"] == 2 and rows[-1]["d_loss"] > 0


def test_clip_split_from_manifest_or_path_order(tmp_path, clip_dir):
    names = sorted(os.listdir(clip_dir))
    manifest, report = clips_manifest(clip_dir, str(tmp_path / "plain"), num_val=2)
    rows = [json.loads(line) for line in open(manifest)]
    assert [os.path.basename(r["path"]) for r in rows if r["split"] == "val"] == names[-2:]
    assert report["unreadable"] == []
    d = tmp_path / "ds"
    (d / "videos").mkdir(parents=True)
    rows = []
    for i, n in enumerate(names):
        os.symlink(os.path.join(clip_dir, n), d / "videos" / n)
        rows.append({"path": f"videos/{n}", "caption": "", "type": "video", "width": 32,
                     "height": 32, "fps": 8, "frames": 12, "duration": 1.5,
                     "split": "val" if i == 0 else "train"})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest, _ = clips_manifest(str(d), str(tmp_path / "ds_work"), num_val=1)
    val = held_out_clips(manifest, num_val=1, frames=5, multiple=8)
    assert len(val) == 1 and val[0].shape == (1, 3, 5, 32, 32)
    cfg = clip_loader_config(manifest, frames=5, fps=8.0, height=32, width=32, batch_size=3,
                             multiple=8, backend="pyav", num_workers=0)
    loader = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0)
    batch = next(loader)["video"]
    assert batch.shape == (3, 3, 5, 32, 32) and -1 <= batch.min() and batch.max() <= 1
    assert loader.batches_per_epoch() == 1  # 4 training clips, batches of 3 (drop last)
    loader.close()


def test_text_file_named_mp4_is_skipped_and_counted(tmp_path, clip_dir):
    data = tmp_path / "clips"
    data.mkdir()
    for n in os.listdir(clip_dir):
        os.symlink(os.path.join(clip_dir, n), data / n)
    (data / "notes.mp4").write_text("this is not a video\n")
    out = tmp_path / "run"
    main(_args(str(out), str(data), "--train.steps=2", "--data.max_skip_fraction=0.5"))
    rows = [r for r in read_metrics(str(out)) if "loss" in r]
    assert rows[-1]["step"] == 2 and rows[-1]["skipped_files"] == 1


def _losses(out) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(str(out)) if "loss" in r}


@pytest.mark.timeout(300)
def test_sigterm_then_same_command_logs_the_uninterrupted_losses(tmp_path, clip_dir):
    """A TAE run stopped by SIGTERM and started again with the same command logs exactly
    the losses of a run that was never stopped."""
    steps = ["--train.steps=12", "--train.val_every=100", "--checkpoint.every_steps=0"]
    straight = tmp_path / "straight"
    main(_args(str(straight), clip_dir, *steps))
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "moviegen.train_tae", *_args(str(out), clip_dir, *steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:  # stop it once a few steps are logged
        if (out / "metrics.jsonl").exists() and len(_losses(out)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, log[-3000:]
    stopped_at = int((out / "preempted").read_text())
    assert 3 <= stopped_at < 12, log[-2000:]
    assert "preempted at step" in log
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _losses(out) == _losses(straight)  # exact: same floats, every step
    ref = load_tae(str(straight / "tae.safetensors")).state_dict()
    got = load_tae(str(out / "tae.safetensors")).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)

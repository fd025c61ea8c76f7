"""Stage configs say what they need: as shipped they stop, naming the text encoder
directories and the data they lack; with stand-ins they validate with their Movie Gen
layouts and buckets (no process group: the layout check is a pure function of config and
world size). Launch scripts parse and print usage."""
import os
import subprocess

import pytest
import torch

from moviegen.config import load_config
from moviegen.training.diffusion import job_layout

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "launch", "configs")


# The tiny stand-ins, only as an explicit override here: the built-in text encoder in each
# slot (no files); the data is given per test.
BUILTIN_ENCODERS = ("--text.encoders=[{name: ul2, max_length: 128}, {name: byt5, max_length: "
                    "128}, {name: metaclip, max_length: 256}]")
# name, GPUs, (dp_shard, cp, tp), the data key it needs, the largest sample in tokens
STAGES = [
    ("stage1_t2i_256", 1536, (384, 1, 4), "data.precomputed_dir", 256),
    ("stage2_joint_256", 3072, (384, 2, 4), "data.precomputed_dir", 8192),
    ("stage3_joint_768", 6144, (192, 4, 8), "data.precomputed_dir", 73728),
    ("upsampler_movie_gen", 1024, (128, 2, 4), "data.video.manifest", 114240),
]


def _encoder_dirs(tmp_path) -> str:
    """--text.encoders naming three (empty) directories: what a user fills in."""
    for name in ("ul2", "byt5", "metaclip"):
        (tmp_path / name).mkdir(exist_ok=True)
    return (f"--text.encoders=[{{name: ul2, path: {tmp_path}/ul2}}, {{name: byt5, path: "
            f"{tmp_path}/byt5}}, {{name: metaclip, path: {tmp_path}/metaclip}}]")


@pytest.mark.parametrize("name, gpus, layout, data_key, tokens", STAGES)
def test_stage_configs_refuse_to_run_without_their_data_and_encoders(
        name, gpus, layout, data_key, tokens, tmp_path, capsys):
    from moviegen.config import ConfigError
    from moviegen.train import main

    path = os.path.join(CONFIGS, f"{name}.yaml")
    # as shipped: the text encoders first, named with what to put there
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: text.encoders[0].path: required"), msg
    assert "save_pretrained" in msg and "--text.encoders=" in msg
    # the encoders given: the data source
    with pytest.raises(ConfigError) as info:
        load_config(path, [_encoder_dirs(tmp_path)])
    msg = str(info.value)
    assert msg.startswith(f"{path}: {data_key}: "), msg
    assert ("python -m moviegen.precompute" if "precomputed" in data_key
            else "python -m moviegen.data.prepare") in msg
    # the public command: one line, exit 2, before any process group or output
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["--config", path, f"--output_dir={out}"])
    assert info.value.code == 2
    assert f"config error: {path}: text.encoders[0].path: required" in capsys.readouterr().err
    assert not out.exists() and not torch.distributed.is_initialized()


@pytest.mark.parametrize("name, gpus, layout, data_key, tokens", STAGES)
def test_stage_configs_validate_with_stand_ins_and_their_layouts(
        name, gpus, layout, data_key, tokens, tmp_path):
    """With the built-in encoders and the config's own video buckets over a manifest file
    (the shapes python -m moviegen.precompute writes for the stages): every bucket fits
    the position tables and splits over cp x tp at the stage's world size."""
    from moviegen.data.buckets import bucket_latent_shapes
    from moviegen.training.diffusion import check_job

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    tae = tmp_path / "tae"
    tae.mkdir()
    (tae / "tae_config.json").write_text('{"preset": "full"}')  # 16-channel latents
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"), [
        BUILTIN_ENCODERS, "--data.kind=video", f"--data.video.manifest={manifest}",
        f"--data.tae_checkpoint={tae}"], checks=check_job)
    assert cfg.model.name == ("7b" if "upsampler" in name else "30b")
    assert cfg.checkpoint.async_save and cfg.output_dir == f"runs/{name}"
    dims = job_layout(cfg, gpus)
    assert (dims.dp_shard, dims.cp, dims.tp) == layout
    with pytest.raises(Exception, match="world|divis|layout|product"):
        job_layout(cfg, gpus + 2)  # cp x tp no longer divides the world
    v, (pt, ph, pw) = cfg.data.video, cfg.model.patch_size
    shapes = bucket_latent_shapes(v, v.temporal_compression, v.spatial_compression,
                                  patch=(1, 1, 1)).values()
    assert max((T // pt) * (H // ph) * (W // pw) for T, H, W in shapes) == tokens
    # synthetic latents (image-shaped, so they fit stage 1's one-frame tables too): the
    # stand-in data tests train on
    assert load_config(os.path.join(CONFIGS, f"{name}.yaml"), [
        BUILTIN_ENCODERS, "--data.kind=synthetic_latents", "--data.latent_frames=1"],
        checks=check_job).data.kind == "synthetic_latents"


def test_upsampler_configs_validate():
    """The Movie Gen-sized upsampler is the upsample task from 1080p clips through the
    full TAE; the tiny one is the same stage at CPU size (it trains in
    tests/test_conditioning.py)."""
    cfg = load_config(os.path.join(CONFIGS, "upsampler_movie_gen.yaml"),
                      [BUILTIN_ENCODERS, "--data.kind=synthetic_latents"])
    assert cfg.model.cond_channels == cfg.model.in_channels + 1
    assert cfg.train.tasks == {"upsample": 1.0} and cfg.data.encoder == "tae"
    tiny = load_config(os.path.join(CONFIGS, "upsampler_tiny.yaml"))
    assert tiny.train.tasks == {"upsample": 1.0} and tiny.model.cond_channels == 17
    assert job_layout(tiny, 1).world_size == 1


@pytest.mark.parametrize("script", ["launch/torchrun.sh", "launch/slurm/train.sbatch"])
def test_scripts_are_valid_bash(script):
    path = os.path.join(ROOT, script)
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", path], check=True)


def test_torchrun_script_prints_usage_without_config():
    out = subprocess.run([os.path.join(ROOT, "launch", "torchrun.sh")], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "CONFIG" in out.stdout

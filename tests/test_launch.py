"""Stage configs validate with their Movie Gen layouts (no process group: the layout check
is a pure function of config and world size); launch scripts parse and print usage."""
import os
import subprocess

import pytest

from moviegen.config import load_config
from moviegen.training.diffusion import job_layout

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "launch", "configs")


@pytest.mark.parametrize("name, gpus, layout", [
    ("stage1_t2i_256", 1536, (384, 1, 4)),
    ("stage2_joint_256", 3072, (384, 2, 4)),
    ("stage3_joint_768", 6144, (192, 4, 8)),
])
def test_stage_configs_validate_with_their_layouts(name, gpus, layout):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg.model.name == "30b" and cfg.checkpoint.async_save
    dims = job_layout(cfg, gpus)
    assert (dims.dp_shard, dims.cp, dims.tp) == layout
    assert cfg.output_dir == f"runs/{name}"
    with pytest.raises(Exception, match="world|divis|layout|product"):
        job_layout(cfg, gpus + 2)  # cp x tp no longer divides the world


def test_stage3_tokens_match_movie_gen():
    cfg = load_config(os.path.join(CONFIGS, "stage3_joint_768.yaml"))
    d, (pt, ph, pw) = cfg.data, cfg.model.patch_size
    assert (d.latent_frames // pt) * (d.latent_height // ph) * (d.latent_width // pw) == 73728


@pytest.mark.parametrize("script", ["launch/torchrun.sh", "launch/slurm/train.sbatch"])
def test_scripts_are_valid_bash(script):
    path = os.path.join(ROOT, script)
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", path], check=True)


def test_torchrun_script_prints_usage_without_config():
    out = subprocess.run([os.path.join(ROOT, "launch", "torchrun.sh")], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "CONFIG" in out.stdout


def test_upsampler_configs_validate():
    """The Movie Gen-sized spatial upsampler validates with its layout; the tiny one is
    the same stage at CPU size (it trains in tests/test_conditioning.py)."""
    cfg = load_config(os.path.join(CONFIGS, "upsampler_movie_gen.yaml"))
    assert cfg.model.name == "7b" and cfg.model.cond_channels == cfg.model.in_channels + 1
    assert cfg.train.tasks == {"upsample": 1.0}
    dims = job_layout(cfg, 1024)
    assert (dims.dp_shard, dims.cp, dims.tp) == (128, 2, 4)
    d, (pt, ph, pw) = cfg.data, cfg.model.patch_size
    assert (d.latent_frames // pt) * (d.latent_height // ph) * (d.latent_width // pw) == 114240
    tiny = load_config(os.path.join(CONFIGS, "upsampler_tiny.yaml"))
    assert tiny.train.tasks == {"upsample": 1.0} and tiny.model.cond_channels == 17
    assert job_layout(tiny, 1).world_size == 1

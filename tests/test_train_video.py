"""data.kind=video: real VP9 files -> DALI/PyAV -> pixel encoder -> flow-matching loss."""
import pytest
import torch

from moviegen.config import ConfigError, load_config
from moviegen.data.sources import RandomPatchEncoder, latent_grids
from moviegen.training.metrics import read_metrics
from moviegen.training.diffusion import DiffusionTrainer

av = pytest.importorskip("av")


def video_overrides(manifest, out):
    return ["--data.kind=video", f"--data.video.manifest={manifest}", "--data.video.resolution=32",
            "--data.video.tokens_per_batch=256", "--data.video.max_batch_size=4",
            "--data.video.num_workers=0", "--data.video.backend=pyav",
            "--data.encoder=random_patch", "--train.steps=6", "--train.val_every=6",
            "--train.log_every=3", "--train.progress_bar=false", f"--output_dir={out}"]


def test_trains_from_video_files_through_the_random_patch_encoder(tmp_path):
    from data_helpers import synthetic_dataset

    manifest = synthetic_dataset()
    cfg = load_config("launch/configs/tiny.yaml", video_overrides(manifest, tmp_path))
    grids = latent_grids(cfg)
    assert grids and all(t >= 1 for _, t, _, _ in grids)
    trainer = DiffusionTrainer(cfg)
    history = trainer.fit()
    rows = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert [r["step"] for r in rows] == [3, 6]
    assert all(r["tokens_per_s"] > 0 and r["loss"] > 0 for r in rows)
    assert len(history["val_loss"]) == 2
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_video_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.video.manifest"):
        load_config("launch/configs/tiny.yaml", ["--data.kind=video"])
    with pytest.raises(ConfigError, match="data.video.backend"):
        load_config("launch/configs/tiny.yaml", ["--data.kind=video", "--data.video.backend=ffmpeg",
                                                 f"--data.video.manifest={tmp_path}"])
    with pytest.raises(ConfigError, match="data.kind"):
        load_config("launch/configs/tiny.yaml", ["--data.kind=webdataset"])


def test_random_patch_encoder_matches_the_tae_frame_formula():
    enc = RandomPatchEncoder(16, temporal=4, spatial=4)
    for frames, latent_frames in [(1, 1), (4, 1), (5, 2), (9, 3), (16, 4)]:
        out = enc.encode(torch.randn(2, 3, frames, 16, 24))
        assert out.shape == (2, 16, latent_frames, 4, 6)
    x = torch.randn(1, 3, 8, 16, 16)
    assert torch.equal(enc.encode(x), RandomPatchEncoder(16, 4, 4).encode(x))  # fixed weights
    assert 0.3 < enc.encode(torch.rand(4, 3, 8, 32, 32) * 2 - 1).std() < 3


def test_builtin_text_encoder_keeps_word_order():
    from moviegen.config import TextConfig
    from moviegen.models.text_encoders import TextEncoders

    enc = TextEncoders(TextConfig())
    e, m = enc.encode(["FPS-16 a red blob moves from left to right",
                       "FPS-16 a red blob moves from right to left"])
    n = int(m["byt5"][0].sum())
    a, b = e["byt5"][0, :n].mean(0), e["byt5"][1, :n].mean(0)
    # same bytes, different order: a bag-of-bytes encoder would give ~1% here
    assert (a - b).norm() / a.norm() > 0.1

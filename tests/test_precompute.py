"""Precompute: TAE latents + text embeddings as resumable shards; the trainer reads them."""
import json

import pytest
import torch

from moviegen import precompute
from moviegen.config import load_config
from moviegen.training.metrics import read_metrics
from moviegen.data.precomputed import PrecomputedLoader
from moviegen.training.diffusion import DiffusionTrainer

pytest.importorskip("av")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_helpers import synthetic_dataset
    from moviegen.models.tae import TAE, TAEConfig, save_tae

    root = tmp_path_factory.mktemp("pre")
    torch.manual_seed(0)
    with torch.device("meta"):
        tae = TAE(TAEConfig(preset="tiny"))
    tae.to_empty(device="cpu")
    tae.init_weights()
    save_tae(tae, str(root / "tae"))
    manifest = synthetic_dataset()
    overrides = [f"--data.video.manifest={manifest}", "--data.video.resolution=32",
                 "--data.video.tokens_per_batch=256", "--data.video.max_batch_size=4",
                 "--data.video.num_workers=0", f"--data.tae_checkpoint={root / 'tae'}",
                 f"--data.precomputed_dir={root / 'latents'}", f"--model.in_channels={tae.latent_channels}"]
    return root, overrides, tae


def test_shards_index_and_resume(setup):
    root, overrides, tae = setup
    report = precompute.main(["--config", "launch/configs/tiny.yaml", *overrides])
    out = root / "latents"
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"]["train"] > 0 and index["num_samples"]["val"] > 0
    shard = index["shards"][0]
    assert shard["latent_shape"][0] == tae.latent_channels
    written = report["train"]["written"] + report["val"]["written"]
    assert written == len(index["shards"])
    # a rerun skips every finished shard
    again = precompute.main(["--config", "launch/configs/tiny.yaml", *overrides])
    assert again["train"]["written"] == 0 and again["val"]["written"] == 0
    assert again["train"]["already_done"] == report["train"]["written"]
    # lose one shard (and leave a stale temporary file): only that one is recomputed,
    # to the same content
    victim = out / index["shards"][0]["file"]
    from safetensors.torch import load_file
    before = load_file(str(victim))
    victim.unlink()
    (out / "train" / "junk.safetensors.tmp").write_bytes(b"partial")
    third = precompute.main(["--config", "launch/configs/tiny.yaml", *overrides])
    assert third["train"]["written"] + third["val"]["written"] == 1
    after = load_file(str(victim))
    assert torch.allclose(before["latents"], after["latents"], atol=1e-6)
    assert json.loads((out / "index.json").read_text())["num_samples"] == index["num_samples"]


def test_trainer_reads_precomputed_shards(setup, tmp_path):
    root, overrides, _ = setup
    if not (root / "latents" / "index.json").exists():
        precompute.main(["--config", "launch/configs/tiny.yaml", *overrides])
    cfg = load_config("launch/configs/tiny.yaml", [
        *overrides, "--data.kind=precomputed", "--train.steps=4", "--train.log_every=2",
        "--train.val_every=4", "--train.progress_bar=false", f"--output_dir={tmp_path}"])
    loader = PrecomputedLoader(cfg.data.precomputed_dir, "train", 2, 0, 1, seed=0)
    batch = next(loader)
    assert "text_embeds" in batch and batch["latents"].shape[0] <= 2
    state = loader.state_dict()
    nxt = next(loader)
    resumed = PrecomputedLoader(cfg.data.precomputed_dir, "train", 2, 0, 1, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed)["latents"], nxt["latents"])
    history = DiffusionTrainer(cfg).fit()
    rows = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4] and len(history["val_loss"]) == 2


def test_precompute_needs_a_destination():
    with pytest.raises(SystemExit):
        precompute.main(["--config", "launch/configs/tiny.yaml"])


def test_precompute_runs_where_training_would(setup, tmp_path, capsys):
    """The device comes from train.device, chosen as training chooses it (auto: the GPU
    and NCCL when there is one, else the CPU and gloo): here the CPU, and a GPU asked for
    on a machine without one is a config error before anything is read or written."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU machine's choice")
    root, overrides, _ = setup
    dest = tmp_path / "on_cuda"
    args = ["--config", "launch/configs/tiny.yaml", *overrides,
            f"--data.precomputed_dir={dest}", "--train.device=cuda"]
    with pytest.raises(SystemExit) as info:
        precompute.main(args)
    assert info.value.code == 2
    assert ("train.device: cuda requested but no CUDA device is visible"
            in capsys.readouterr().err)
    assert not dest.exists()


def test_shards_carry_first_frame_latents_for_image_to_video(setup, tmp_path):
    """Each shard holds its clips' first frames encoded alone (the TAE's latent of the
    image image-to-video is given); an i2v run on precomputed latents uses them."""
    root, overrides, tae = setup
    if not (root / "latents" / "index.json").exists():
        precompute.main(["--config", "launch/configs/tiny.yaml", *overrides])
    batch = next(PrecomputedLoader(str(root / "latents"), "train", 2, 0, 1, seed=0))
    first, lat = batch["first_frame_latents"], batch["latents"]
    assert first.shape == (lat.shape[0], lat.shape[1], 1, *lat.shape[3:])
    # not the video's latent frame 0: the TAE pads symmetrically in time, so that one
    # mixes several pixel frames
    assert torch.isfinite(first).all() and not torch.allclose(first, lat[:, :, :1], atol=1e-3)
    C = tae.latent_channels
    cfg = load_config("launch/configs/tiny.yaml", [
        *overrides, "--data.kind=precomputed", "--train.steps=2", "--train.log_every=1",
        "--train.val_every=1000", "--train.progress_bar=false", f"--output_dir={tmp_path}",
        f"--model.cond_channels={C + 1}", "--train.tasks={i2v: 1.0}"])
    trainer = DiffusionTrainer(cfg)
    inputs = trainer.prepare_batch(next(trainer.train_data), "train", 0, drop_text=False)
    cond, loss_mask = inputs[5], inputs[6]
    assert cond.shape[1] == C + 1 and loss_mask.all()  # frame 0 is generated too
    assert torch.count_nonzero(cond[:, :, 1:]) == 0 and (cond[:, C, 0] == 1).all()
    trainer.fit()
    assert len([r for r in read_metrics(str(tmp_path)) if "loss" in r]) == 2

"""train_tae: a few steps write metrics.jsonl and a loadable checkpoint; FSDP2 over 2 gloo ranks
computes the same update as one process."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moviegen.config import ConfigError, load_config
from moviegen.models.tae import TAE, TAEConfig, load_tae, outlier_penalty_loss
from moviegen.train_tae import TAEJobConfig, main, train, validate_tae_job, write_synthetic_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    write_synthetic_clips(str(d), num_videos=5, num_frames=12, size=32)
    return str(d)


def _job(output_dir, data_dir, *extra):
    return load_config(os.path.join(ROOT, "launch/configs/tae_tiny.yaml"), [
        f"--output_dir={output_dir}", f"--data.data_dir={data_dir}", "--tae.base_channels=8",
        "--data.height=32", "--data.width=32", "--data.num_frames=4", "--data.batch_size=2",
        "--data.image_batch_size=2", "--data.num_val=1", "--data.val_frames=5",
        "--train.steps=4", "--train.log_every=1", "--train.val_every=2", *extra],
        cls=TAEJobConfig, validate=False)


def test_short_training_run_writes_metrics_and_checkpoint(tmp_path, clip_dir):
    out = tmp_path / "run"
    result = train(_job(str(out), clip_dir))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["psnr"] is not None and rows[2]["psnr"] is not None and rows[1]["psnr"] is None
    assert [r["kind"] for r in rows[1:]] == ["video", "video", "video", "image"]  # 1 image : 3 videos
    for r in rows[1:]:
        for key in ("loss", "recon", "opl", "lr", "step_time_s", "grad_norm"):
            assert isinstance(r[key], float), key
    assert result == {"step": 4, "psnr": rows[-1]["psnr"]}
    assert (out / "recon.gif").exists()
    tae = load_tae(str(out / "tae.safetensors"))
    assert tae.cfg.base_channels == 8 and tae.cfg.latent_scale > 0
    assert tae.encode(torch.zeros(1, 3, 5, 32, 32)).shape == (1, 8, 2, 8, 8)


def test_cli_help_and_config_errors(capsys, tmp_path):
    main(["--help"])
    assert "--train.opl_r" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="data.height"):
        validate_tae_job(_job(str(tmp_path), str(tmp_path), "--data.height=30"))
    with pytest.raises(ConfigError, match="tae.temporal_compression"):
        validate_tae_job(_job(str(tmp_path), str(tmp_path), "--tae.temporal_compression=8"))
    with pytest.raises(ConfigError, match="perceptual_weights"):
        validate_tae_job(_job(str(tmp_path), str(tmp_path), "--train.perceptual_weight=0.1"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from parallel.tae import apply_tae_fsdp, full_state_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
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
    apply_tae_fsdp(sharded, init_device_mesh("cpu", (world,)))
    for model, x in ((ref, video), (sharded, video[rank:rank + 1])):  # FSDP averages over ranks
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_of(model, x).backward()
        opt.step()
    gathered = full_state_dict(sharded)
    if rank == 0:
        for name, p in ref.state_dict().items():
            torch.testing.assert_close(gathered[name], p, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # encode/decode run as FSDP forward methods
        torch.testing.assert_close(sharded.encode(video), ref.encode(video), rtol=1e-4, atol=1e-5)
    dist.destroy_process_group()


def test_fsdp2_step_matches_single_process():
    mp.spawn(_fsdp_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_optional_perceptual_and_adversarial_terms(tmp_path, clip_dir):
    """Both terms run from local weights only: a VGG16 file on disk, a discriminator from scratch."""
    from safetensors.torch import save_file

    from moviegen.train_tae import VGG16Features

    torch.manual_seed(0)
    vgg_path = str(tmp_path / "vgg16.safetensors")
    save_file({k: v.contiguous() for k, v in VGG16Features().state_dict().items()}, vgg_path)
    vgg = VGG16Features.from_file(vgg_path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert vgg.distance(x, x).item() == 0.0 and vgg.distance(x, x.flip(-1)).item() > 0
    out = tmp_path / "run"
    train(_job(str(out), clip_dir, "--train.steps=2", f"--train.perceptual_weights={vgg_path}",
               "--train.perceptual_weight=0.1", "--train.adversarial_weight=0.1"))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and "d_loss" in rows[-1]


def test_clip_split_from_manifest_or_sorted_order(tmp_path, clip_dir):
    from moviegen.train_tae import TAEDataConfig, build_clip_loader, prepare_clips

    names = sorted(os.listdir(clip_dir))
    plain = prepare_clips(TAEDataConfig(data_dir=clip_dir, num_val=2))
    assert [os.path.basename(p) for p in plain["val"]] == names[-2:]
    assert len(plain["train"]) == 3
    d = tmp_path / "ds"
    (d / "videos").mkdir(parents=True)
    rows = []
    for i, n in enumerate(names):
        os.symlink(os.path.join(clip_dir, n), d / "videos" / n)
        rows.append({"path": f"videos/{n}", "type": "video", "split": "val" if i == 0 else "train"})
    rows.append({"path": "images/x.png", "type": "image", "split": "train"})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TAEDataConfig(data_dir=str(d), num_val=1, height=32, width=32)
    split = prepare_clips(cfg)
    assert [os.path.basename(p) for p in split["val"]] == names[:1] and len(split["train"]) == 4
    batch = next(build_clip_loader(cfg, split, "train", num_frames=5, batch_size=3))["video"]
    assert batch.shape == (3, 3, 5, 32, 32) and -1 <= batch.min() and batch.max() <= 1

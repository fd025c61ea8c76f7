"""``python -m moviegen.sample`` from given frames, through the public command on tiny
exports (random weights: these check the paths, shapes and errors, not the quality)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

# end-to-end through the public command: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

av = pytest.importorskip("av")

PROMPT = "a red circle moves from left to right"


def _export(root, cond: bool, tae_dir: str) -> str:
    from moviegen.config import load_config
    from moviegen.models.text_encoders import TextEncoders
    from moviegen.models.transformer import build_model, resolve_model_args
    from moviegen.training.export import export_inference

    overrides = ["--model.in_channels=8", "--model.max_latent_frames=4",
                 f"--data.tae_checkpoint={tae_dir}", f"--output_dir={root}"]
    if cond:
        overrides += ["--model.cond_channels=9", '--train.tasks={"t2v": 1, "i2v": 1}']
    cfg = load_config("launch/configs/tiny.yaml", overrides)
    encoders = TextEncoders(cfg.text)
    model = build_model(resolve_model_args(cfg.model, encoders.out_dims), seed=0)
    if cond:  # conditioning weights that do something (a fresh model starts them at 0)
        with torch.no_grad():
            model.patch_embed.proj.weight[:, 8:].normal_(0, 0.1)
    return export_inference(str(root / ("cond" if cond else "t2v")), model.state_dict(), cfg,
                            encoders, latent_shape=[8, 4, 4, 4])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from moviegen.data.video_io import write_video
    from moviegen.models.tae import TAE, TAEConfig, save_tae

    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    tae_dir = str(root / "tae")
    save_tae(TAE(TAEConfig(preset="tiny", base_channels=8)), tae_dir)
    video = torch.rand(3, 16, 16, 16) * 2 - 1
    write_video(str(root / "in.webm"), video, fps=8)
    from PIL import Image

    Image.fromarray(np.full((24, 20, 3), 200, np.uint8)).save(root / "first.png")
    return {"t2v": _export(root, False, tae_dir), "cond": _export(root, True, tae_dir),
            "video": str(root / "in.webm"), "image": str(root / "first.png"), "root": root}


def sample(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "moviegen.sample", "--prompt", PROMPT,
                           "--steps", "2", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def frames(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_image_to_video_and_extension_with_a_conditioned_model(exports, tmp_path):
    out = tmp_path / "i2v.webm"
    r = sample("--checkpoint", exports["cond"], "--image", exports["image"], "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert frames(out) == 16 and (tmp_path / "i2v.gif").exists()
    # the clip extended twice, each time from its last 2 latent frames: 4 + 2 + 2
    out = tmp_path / "ext.pt"
    r = sample("--checkpoint", exports["cond"], "--video", exports["video"], "--task",
               "extend", "--num_extensions", 2, "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert saved["latents"].shape == (1, 8, 8, 4, 4) and saved["joins"] == [4, 6]
    # interpolation: 4 latent frames become every 2nd of 7 (longer than the 4-frame
    # position table: sampled in blended windows)
    out = tmp_path / "interp.webm"
    r = sample("--checkpoint", exports["cond"], "--video", exports["video"], "--task",
               "interpolate", "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert frames(out) == 28
    # 2x spatial upsampling: the 16 px input, bilinear to 32 px, encoded, given whole
    out = tmp_path / "up.webm"
    r = sample("--checkpoint", exports["cond"], "--video", exports["video"], "--task",
               "upsample", "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    from data_helpers import probe_video

    info = probe_video(str(out))
    assert (info["frames"], info["width"], info["height"]) == (16, 32, 32)


def test_text_to_video_model_is_conditioned_at_sampling_time(exports, tmp_path):
    out = tmp_path / "rg.pt"
    r = sample("--checkpoint", exports["t2v"], "--video", exports["video"], "--task", "extend",
               "--reconstruction_guidance", 2, "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    lat = torch.load(out, weights_only=True)["latents"]
    assert lat.shape == (1, 8, 6, 4, 4) and torch.isfinite(lat).all()
    out = tmp_path / "long.webm"  # text only, longer than the position table
    r = sample("--checkpoint", exports["t2v"], "--frames", 7, "--window_overlap", 2,
               "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert frames(out) == 28


def test_bad_inputs_fail_before_sampling_with_one_line(exports, tmp_path):
    ck, out = exports["t2v"], tmp_path / "x.webm"
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.webm").write_bytes(b"not a video")
    cases = [
        (["--image", tmp_path / "missing.png"], "image: '", "does not exist"),
        (["--image", tmp_path / "notes.txt"], "image: ", "is not an image file"),
        (["--video", tmp_path / "broken.webm"], "video: cannot decode", "broken.webm"),
        (["--image", exports["image"], "--video", exports["video"]], "image:", "not both"),
        (["--task", "interpolate"], "video:", "needs --video"),
        (["--video", exports["video"], "--task", "zoom"], "task:", "use one of"),
        # a text-to-video model asked for explicit conditioning: the way out is named
        (["--image", exports["image"]], "checkpoint:", "--reconstruction_guidance"),
        (["--video", exports["video"], "--task", "upsample"], "checkpoint:", "upsampler"),
        (["--video", exports["video"], "--context_frames", 4, "--reconstruction_guidance", 0],
         "context_frames:", "fewer"),
        (["--window_frames", 9], "window_frames:", "position table"),
    ]
    for args, *expected in cases:
        r = sample("--checkpoint", ck, "--output", out, *args, timeout=120)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("config error:"), (args, r.stderr)
        assert all(e in lines[0] for e in expected), (args, lines[0])
        assert not out.exists()

"""Real video folders: every common codec decoded on a CPU machine with default settings,
frames picked by timestamp for variable-frame-rate clips, captions that are not UTF-8
named, and a process-group SIGTERM during a PyAV-fed run saved and exited cleanly."""
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from moviegen.config.video import VideoDataConfig
from moviegen.data.loader import build_video_loader
from moviegen.data.manifest import load_manifest
from moviegen.data.prepare import prepare, probe
from moviegen.data.video_io import write_frames
from moviegen.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A square moving right; frame k's top-left pixel row encodes k (for timing tests)."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(80, 255, size=3)
    out = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n):
        x = 4 + (w - 20) * k // max(n - 1, 1)
        out[k, 16:32, x:x + 16] = colour
    return out


def mixed_folder(d) -> dict:
    """H.264 .mp4, HEVC .mkv, MPEG-2 .mpg, VP9 .webm and images, each with a caption."""
    os.makedirs(d, exist_ok=True)
    files = {}
    for i in range(3):
        files[f"h264_{i}.mp4"] = ("libx264", 8, 16)
        files[f"hevc_{i}.mkv"] = ("libx265", 8, 16)
        files[f"mpeg2_{i}.mpg"] = ("mpeg2video", 25, 40)
        files[f"vp9_{i}.webm"] = ("libvpx-vp9", 8, 16)
    for j, (name, (codec, fps, n)) in enumerate(sorted(files.items())):
        path = os.path.join(d, name)
        write_frames(path, _frames(n, seed=j), fps, codec=codec)
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write(f"a square moves from left to right ({codec})\n")
    for j in range(4):
        img = _frames(1, seed=100 + j)[0]
        Image.fromarray(img).save(os.path.join(d, f"still_{j}.png"))
        with open(os.path.join(d, f"still_{j}.txt"), "w") as f:
            f.write("a square on the left\n")
    return files


@pytest.mark.slow
def test_mixed_codecs_go_through_prepare_into_training_skipping_nothing(tmp_path):
    files = mixed_folder(str(tmp_path / "media"))
    manifest = str(tmp_path / "manifest.jsonl")
    summary = prepare(str(tmp_path / "media"), manifest, VideoDataConfig(), val_fraction=0.25)
    assert summary["unreadable"] == 0 and summary["filtered"] == {}, summary
    assert summary["kept"] == len(files) + 4 and summary["val"] >= 1
    rows = [json.loads(line) for line in open(manifest)]
    codecs = {r["codec"] for r in rows if r["type"] == "video"}
    assert codecs == {"h264", "hevc", "mpeg2video", "vp9"}
    # the split is a function of the path: the same again
    again = prepare(str(tmp_path / "media"), str(tmp_path / "again.jsonl"), VideoDataConfig(),
                    val_fraction=0.25)
    assert again["val"] == summary["val"]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "moviegen.train", "--config",
           os.path.join(ROOT, "launch/configs/tiny.yaml"), f"--output_dir={out}",
           "--data.kind=video", f"--data.video.manifest={manifest}",
           "--data.video.num_workers=0", "--train.steps=6", "--train.log_every=2",
           "--train.val_every=6", "--data.batch_size=2", "--train.progress_bar=false",
           "--model.max_latent_height=32", "--model.max_latent_width=32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    logged = [row for row in read_metrics(str(out)) if "loss" in row]
    assert logged[-1]["step"] == 6 and logged[-1]["skipped_files"] == 0
    assert "skipping" not in r.stdout + r.stderr


def _vfr_clip(path: str, times_s: list[float]) -> None:
    """H.264 in Matroska with frames at the given presentation times (ms precision)."""
    import av

    frames = _frames(len(times_s))
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for k, (t, arr) in enumerate(zip(times_s, frames)):
            arr = arr.copy()
            arr[0, 0, :] = 10 * k  # frame number, readable after decode (top-left pixel)
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_variable_frame_rate_clip_is_sampled_by_time(tmp_path):
    # 20 frames: 10 crowded into the first 0.5 s, 10 spread over the next 4.5 s
    times = [0.05 * k for k in range(10)] + [0.5 + 0.5 * k for k in range(10)]
    path = str(tmp_path / "vfr.mkv")
    _vfr_clip(path, times)
    info = probe(path)
    assert info["vfr"] and info["duration"] == pytest.approx(5.0, abs=0.15)
    with open(os.path.join(tmp_path, "vfr.txt"), "w") as f:
        f.write("a square moves\n")
    manifest = str(tmp_path / "m.jsonl")
    cfg = VideoDataConfig(manifest=manifest, fps=2.0, durations=[4.0], resolution=48,
                          aspect_ratios=[1.3333], use_images=False, max_duration_s=10.0,
                          num_workers=0, backend="pyav", size_multiple=8)
    assert prepare(str(tmp_path), manifest, cfg)["kept"] == 1
    m = load_manifest(manifest)
    assert m.vfr[0]
    ld = build_video_loader(cfg.replace(shuffle=False), dp_rank=0, dp_size=1, seed=0,
                            split="train")
    spec = ld._planner.spec(0, 0).samples[0]
    assert np.allclose(np.diff(spec.frame_times), 0.5)  # evenly timed at 2 fps
    from moviegen.data.decode import decode_video_pyav

    got = decode_video_pyav(path, spec.frame_indices, times=spec.frame_times)
    shown = [int(round(v / 10)) for v in got[:, 0, 0, 0]]
    start = float(spec.frame_times[0])
    expected = [max(k for k, t in enumerate(times) if t <= start + j * 0.5 + 1e-6)
                for j in range(len(shown))]
    assert shown == expected, (shown, expected)
    batch = next(ld)
    assert batch["captions"][0].startswith("FPS-2 ")
    ld.close()


def test_caption_not_utf8_is_named_and_the_manifest_is_written(tmp_path):
    d = tmp_path / "media"
    os.makedirs(d)
    write_frames(str(d / "a.webm"), _frames(16), 8, realtime=True)
    (d / "a.txt").write_text("a square moves\n")
    write_frames(str(d / "b.webm"), _frames(16, seed=1), 8, realtime=True)
    (d / "b.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    write_frames(str(d / "c.mp4"), _frames(16, seed=2), 8)
    (d / "c.json").write_text(json.dumps({"caption": "a square, from json"}))
    (d / "notes.md").write_text("not media\n")
    manifest = str(tmp_path / "m.jsonl")
    summary = prepare(str(d), manifest, VideoDataConfig())
    assert summary["kept"] == 2 and summary["unreadable"] == 1
    report = json.load(open(summary["report"]))
    (path, why), = report["unreadable_files"]
    assert path.endswith("b.webm") and "b.txt is not UTF-8 (byte 3" in why
    captions = sorted(json.loads(line)["caption"] for line in open(manifest))
    assert captions == ["a square moves", "a square, from json"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_group_sigterm_during_a_pyav_fed_run_saves_and_exits_0(tmp_path):
    mixed_folder(str(tmp_path / "media"))
    manifest = str(tmp_path / "manifest.jsonl")
    prepare(str(tmp_path / "media"), manifest, VideoDataConfig(), val_fraction=0.25)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "moviegen.train", "--config",
           os.path.join(ROOT, "launch/configs/tiny.yaml"), f"--output_dir={out}",
           "--data.kind=video", f"--data.video.manifest={manifest}",
           "--data.video.backend=pyav", "--data.video.num_workers=2",
           "--train.steps=100000", "--train.log_every=1", "--train.val_every=100000",
           "--data.batch_size=2", "--train.progress_bar=false",
           "--model.max_latent_height=32", "--model.max_latent_width=32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").exists() and any("loss" in r for r in read_metrics(str(out))):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # what SLURM and Kubernetes do: the whole group
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    assert (out / "preempted").exists() and (out / "checkpoints" / "latest").exists()
    assert "killed by signal" not in log


def test_curation_cuts_scenes_drops_static_clips_trims_and_resumes(tmp_path):
    from moviegen.data.curate import Curation

    d = tmp_path / "media"
    os.makedirs(d)
    # two shots: 3 s of a moving square on black, then 3 s of one on white (8 fps)
    shot_a = _frames(24)
    shot_b = 255 - _frames(24, seed=5)
    write_frames(str(d / "two_shots.mp4"), np.concatenate([shot_a, shot_b]), 8)
    write_frames(str(d / "still.mp4"), np.repeat(_frames(1), 24, axis=0), 8)  # no motion
    for name in ("two_shots", "still"):
        (d / f"{name}.txt").write_text("a square\n")
    manifest = str(tmp_path / "m.jsonl")
    cfg = VideoDataConfig(durations=[1.0, 2.0], max_duration_s=10.0)
    cur = Curation(trim_start_s=0.5, scene_threshold=40.0, min_motion=0.5, min_clip_s=1.0)
    summary = prepare(str(d), manifest, cfg, curation=cur)
    rows = [json.loads(line) for line in open(manifest)]
    assert [(r["path"].split("/")[-1], r["clip_start"]) for r in rows] == [
        ("two_shots.mp4", 0.5), ("two_shots.mp4", 3.0)], rows
    assert rows[0]["duration"] == pytest.approx(2.5) and rows[1]["duration"] == pytest.approx(3.0)
    report = json.load(open(summary["report"]))
    assert [p.split("/")[-1] for p, _ in report["filtered_files"]] == ["still.mp4"]
    assert "static" in report["filtered_files"][0][1]
    # the second clip's frames come from the second shot (white background)
    ld = build_video_loader(cfg.replace(manifest=manifest, num_workers=0, backend="pyav",
                                        shuffle=False), dp_rank=0, dp_size=1, seed=0)
    spec = [s for k in range(ld.batches_per_epoch()) for s in ld._planner.spec(0, k).samples]
    starts = sorted(int(s.frame_indices[0]) for s in spec)
    assert starts[0] >= 4 and starts[-1] >= 24  # after the trim, and inside shot two
    ld.close()
    # a rerun probes nothing again (cached by path, size and modification time)
    again = prepare(str(d), manifest, cfg, curation=cur)
    assert again["probed_now"] == 0 and again["kept"] == summary["kept"]

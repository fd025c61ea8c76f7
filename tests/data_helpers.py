"""Tiny datasets for tests and benchmarks, generated once per process.

`synthetic_dataset()` is a small synthetic set (32-40 px, 1-3 s, 8/12 fps); `broken_dataset()`
adds one of each broken file kind to it: corrupted bytes, truncated, zero-byte, missing,
and H.264 (which DALI's CPU decoder cannot read), each as its own manifest row.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

import numpy as np

from moviegen.data import synthetic
from moviegen.config.video import VideoDataConfig
from moviegen.data.video_io import write_frames

_CACHE: dict[str, str] = {}
BROKEN_KINDS = ("corrupted", "truncated", "zero_byte", "missing", "wrong_codec")


def _tmpdir(tag: str) -> str:
    d = tempfile.mkdtemp(prefix=f"moviegen_{tag}_")
    atexit.register(shutil.rmtree, d, True)
    return d


def tiny_config(manifest: str, **overrides) -> VideoDataConfig:
    """A config for 32 px test data: 4 latent tokens per image, fast to decode."""
    cfg = VideoDataConfig(manifest=manifest, resolution=32, size_multiple=8,
                          tokens_per_batch=64, max_batch_size=4, num_workers=0,
                          max_skip_fraction=0.5, skip_check_min_files=1000)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg.validate()


def synthetic_dataset(num_videos: int = 16, num_images: int = 6) -> str:
    """Manifest path of a cached synthetic dataset (2 val videos)."""
    key = f"clean{num_videos}_{num_images}"
    if key not in _CACHE:
        d = _tmpdir(key)
        _CACHE[key] = synthetic.write_synthetic_dataset(
            d, num_videos=num_videos, num_images=num_images, seed=1, val_fraction=0.125,
            min_duration=1.0, max_duration=3.0, short_sides=(32, 40), frame_rates=(8, 12))
    return _CACHE[key]


def write_h264(path: str, width: int = 48, height: int = 32, frames: int = 16, fps: int = 8):
    """A red square moving right, as H.264 (which DALI's CPU decoder cannot read)."""
    arr = np.stack([synthetic.draw_shape(height, width, "square", (200, 50, 50),
                                         (0.2 + 0.6 * k / (frames - 1), 0.5), 12)
                    for k in range(frames)])
    write_frames(path, arr, fps, codec="libx264")


def probe_video(path: str) -> dict:
    """Decodes the whole file and reports what a player would see: frames, width, height,
    fps and codec."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        n = sum(1 for _ in container.decode(video=0))
        return {"frames": n, "width": stream.codec_context.width,
                "height": stream.codec_context.height,
                "fps": float(stream.average_rate) if stream.average_rate else None,
                "codec": stream.codec_context.name}


def broken_dataset() -> tuple[str, dict[str, str]]:
    """(manifest, {kind: absolute path}) = the clean set + one broken file per kind.

    Broken rows copy the metadata of a good 16-frame, 8 fps, 48x32 row so they land in a
    real bucket and are only found out at decode time.
    """
    if "broken" not in _CACHE:
        src = synthetic_dataset()
        d = _tmpdir("broken")
        root = os.path.dirname(src)
        shutil.copytree(os.path.join(root, "videos"), os.path.join(d, "videos"))
        shutil.copytree(os.path.join(root, "images"), os.path.join(d, "images"))
        with open(src) as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
        good = [r for r in rows if r["type"] == "video" and r["split"] == "train"]
        donor = os.path.join(d, good[0]["path"])
        data = open(donor, "rb").read()
        paths = {k: os.path.join(d, "videos", f"broken_{k}.webm") for k in BROKEN_KINDS}
        paths["wrong_codec"] = os.path.join(d, "videos", "broken_wrong_codec.mp4")
        rng = np.random.default_rng(0)
        with open(paths["corrupted"], "wb") as f:   # a valid header, garbage afterwards
            f.write(data[:200] + rng.integers(0, 256, len(data) - 200, np.uint8).tobytes())
        with open(paths["truncated"], "wb") as f:
            f.write(data[: len(data) // 3])
        open(paths["zero_byte"], "wb").close()
        write_h264(paths["wrong_codec"])
        meta = {"type": "video", "width": 48, "height": 32, "fps": 8, "frames": 16,
                "duration": 2.0, "split": "train"}
        for k, p in paths.items():
            rows.append({"path": os.path.relpath(p, d), "caption": f"broken {k}", **meta})
        manifest = os.path.join(d, "manifest.jsonl")
        with open(manifest, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        _CACHE["broken"] = manifest
        _CACHE["broken_paths"] = json.dumps(paths)
    return _CACHE["broken"], json.loads(_CACHE["broken_paths"])

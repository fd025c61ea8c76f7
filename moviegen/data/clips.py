"""A folder of clips as a training set for the TAE: a manifest with a held-out split, the
loader settings that crop clips to one frame size, and the held-out clips at full size.

    manifest = clips_manifest(data_dir, work_dir, num_val=4)   # reads, probes or generates
    loader = build_video_loader(clip_loader_config(manifest, ...), ...)
    val = held_out_clips(manifest, num_val=4, frames=17, multiple=8)

A folder with a ``manifest.jsonl`` (``python -m moviegen.data.prepare`` or
``moviegen.data.synthetic`` wrote it) is used as it is; a folder of bare files is probed
(``prepare``) into ``<work_dir>/manifest.jsonl`` (captions are not needed); files that
cannot be probed are named and counted. When fewer than ``num_val`` rows are marked
"val", the last video rows in path order are held out (a deterministic split).
"""
from __future__ import annotations

import logging
import os

import torch

from moviegen.config.video import VideoDataConfig
from moviegen.data.manifest import IMAGE_EXTS, VIDEO_EXTS, iter_jsonl, write_rows

logger = logging.getLogger("moviegen.data")


def has_media(directory: str) -> bool:
    for _, _, files in os.walk(directory):
        if any(os.path.splitext(f)[1].lower() in VIDEO_EXTS + IMAGE_EXTS for f in files):
            return True
    return False


def clips_manifest(data_dir: str, work_dir: str, num_val: int) -> tuple[str, dict]:
    """(manifest path with at least ``num_val`` val video rows, report). The report's
    ``unreadable`` lists (path, reason) of files left out by probing."""
    from moviegen.data.prepare import prepare

    report: dict = {"unreadable": []}
    os.makedirs(work_dir, exist_ok=True)
    source = os.path.join(data_dir, "manifest.jsonl")
    if os.path.isfile(source):
        rows = [row for _, _, row in iter_jsonl(source)]
        base = os.path.dirname(os.path.abspath(source))
    else:
        probed = os.path.join(work_dir, "clips_probed.jsonl")
        summary = prepare(data_dir, probed, _permissive_filter(), require_captions=False)
        report["unreadable"] = summary["unreadable_files"]
        rows = [row for _, _, row in iter_jsonl(probed)]
        base = os.path.dirname(os.path.abspath(probed))
    for row in rows:  # absolute paths: the manifest may be written elsewhere
        if not os.path.isabs(row["path"]):
            row["path"] = os.path.normpath(os.path.join(base, row["path"]))
    videos = sorted((r for r in rows if r.get("type", "video") == "video"),
                    key=lambda r: r["path"])
    have = sum(r.get("split") == "val" for r in videos)
    train = [r for r in videos if r.get("split") != "val"]
    if have < num_val:
        if len(train) <= num_val - have:
            raise ValueError(f"{data_dir}: {len(train)} training clips; need more than "
                             f"data.num_val={num_val}")
        for r in train[-(num_val - have):]:
            r["split"] = "val"
    out = os.path.join(work_dir, "clips_manifest.jsonl")
    write_rows(out, rows)
    return out, report


def _permissive_filter() -> VideoDataConfig:
    """prepare's filter that keeps any readable clip (the TAE needs no buckets)."""
    return VideoDataConfig(min_side=1, min_duration_s=0.0, max_duration_s=1e9,
                           durations=[0.125], fps=8.0, resolution=8, size_multiple=8,
                           spatial_compression=1, temporal_compression=1, patch=[1, 1, 1])


def clip_loader_config(manifest: str, frames: int, fps: float, height: int, width: int,
                       batch_size: int, multiple: int, backend: str = "auto",
                       num_workers: int = 1, max_skip_fraction: float = 0.05,
                       cache_decoded_mb: int = 0) -> VideoDataConfig:
    """Loader settings that yield [batch_size, 3, frames, height, width] clips: one bucket
    (width / height, frames / fps seconds), resized so the frame covers it, randomly
    cropped; a last partial batch is dropped, so every step sees batch_size clips."""
    area = int(round((height * width) ** 0.5))
    return VideoDataConfig(
        manifest=manifest, backend=backend, num_workers=num_workers, fps=fps,
        resolution=area, size_multiple=multiple, aspect_ratios=[width / height],
        durations=[frames / fps], use_images=False, tokens_per_batch=1 << 30, drop_last=True,
        max_batch_size=batch_size, temporal_compression=1, spatial_compression=1,
        patch=[1, 1, 1], min_side=1, min_duration_s=0.0, max_duration_s=1e9,
        max_skip_fraction=max_skip_fraction, skip_check_min_files=1 << 30,
        cache_decoded_mb=cache_decoded_mb).validate()


def held_out_clips(manifest: str, num_val: int, frames: int, multiple: int
                   ) -> list[torch.Tensor]:
    """The first ``num_val`` val video rows at full frame size, each [1, 3, <= frames, H, W]
    (H and W cropped down to a multiple of ``multiple``)."""
    from moviegen.data.video_io import read_video

    out = []
    for _, _, row in iter_jsonl(manifest):
        if row.get("split") != "val" or row.get("type", "video") != "video":
            continue
        v = read_video(row["path"], num_frames=frames)
        H, W = (v.shape[2] // multiple) * multiple, (v.shape[3] // multiple) * multiple
        out.append(v[:, :, :H, :W].unsqueeze(0))
        if len(out) == num_val:
            break
    return out

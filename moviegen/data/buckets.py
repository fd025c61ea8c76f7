"""Movie Gen bucketing: aspect ratio x duration for video, aspect ratio for images.

Every batch comes from one bucket, so all its samples share one latent shape and need
no padding. A bucket's pixel size has area ~resolution**2 at its aspect ratio (rounded
to `size_multiple`); its frame count is duration x fps. Batch sizes are chosen per
bucket so that a batch holds about `tokens_per_batch` latent tokens.

Assignment is vectorised over the whole manifest (numpy), so a million rows take well
under a second: a row goes to the nearest aspect ratio (in log space) and to the
longest duration whose frames it can supply at the sampling rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moviegen.config.video import VideoDataConfig, frames_for_duration
from moviegen.data.manifest import Manifest


@dataclass(frozen=True)
class Bucket:
    name: str
    kind: str                 # "video" | "image"
    aspect_ratio: float       # width / height
    duration_s: float         # 0 for images
    frames: int               # pixel frames T (1 for images)
    height: int
    width: int
    batch_size: int           # per data-parallel rank
    tokens_per_sample: int    # transformer tokens after TAE + patchify


def bucket_size(cfg: VideoDataConfig, aspect_ratio: float) -> tuple[int, int]:
    """(height, width) with area ~ resolution**2, both multiples of size_multiple."""
    m = cfg.size_multiple
    h = max(m, int(round(cfg.resolution / math.sqrt(aspect_ratio) / m)) * m)
    w = max(m, int(round(cfg.resolution * math.sqrt(aspect_ratio) / m)) * m)
    return h, w


def _ratio_name(ar: float) -> str:
    return f"{ar:.2f}".rstrip("0").rstrip(".")


def latent_grid(frames: int, height: int, width: int, temporal_compression: int,
                spatial_compression: int, patch=(1, 2, 2)) -> tuple[int, int, int]:
    """Token grid (T', H', W') of a [frames, height, width] clip after the TAE and patchify.

    Latent frames are ceil(frames / temporal_compression) (the TAE pads the last
    temporal window); an image (frames == 1) is one latent frame. Spatial sizes must
    divide exactly, otherwise the model could not patchify them.
    """
    pt, ph, pw = (int(p) for p in patch)
    lt = 1 if frames == 1 else -(-frames // temporal_compression)
    for size, p, axis in ((height, ph, "height"), (width, pw, "width")):
        if size % (spatial_compression * p):
            raise ValueError(f"bucket {axis} {size} is not divisible by spatial compression "
                             f"{spatial_compression} x patch {p}")
    return -(-lt // pt), height // spatial_compression // ph, width // spatial_compression // pw


def make_buckets(cfg: VideoDataConfig) -> list[Bucket]:
    """Video buckets (aspect ratio major, duration minor), then image buckets."""
    out = []
    kinds = (["video"] if cfg.use_videos else []) + (["image"] if cfg.use_images else [])
    for kind in kinds:
        for ar in cfg.aspect_ratios:
            h, w = bucket_size(cfg, ar)
            durs = cfg.durations if kind == "video" else [0.0]
            for dur in durs:
                t = frames_for_duration(dur, cfg.fps) if kind == "video" else 1
                grid = latent_grid(t, h, w, cfg.temporal_compression,
                                   cfg.spatial_compression, cfg.patch)
                tokens = int(np.prod(grid))
                bs = int(min(cfg.max_batch_size, max(1, cfg.tokens_per_batch // tokens)))
                name = (f"video_ar{_ratio_name(ar)}_{dur:g}s" if kind == "video"
                        else f"image_ar{_ratio_name(ar)}")
                out.append(Bucket(name, kind, float(ar), float(dur), t, h, w, bs, tokens))
    return out


def bucket_latent_shapes(cfg: VideoDataConfig, temporal_compression: int,
                         spatial_compression: int, patch=(1, 2, 2)
                         ) -> dict[str, tuple[int, int, int]]:
    """{bucket name: (T', H', W') token grid} for the given TAE compression and patch.

    The product T' * H' * W' is the sequence length of one sample of that bucket. With
    patch=(1, 1, 1) this is the latent shape itself.
    """
    return {b.name: latent_grid(b.frames, b.height, b.width, temporal_compression,
                                spatial_compression, patch)
            for b in make_buckets(cfg)}


def frames_needed(out_frames, src_fps, target_fps):
    """Source frames spanned by `out_frames` sampled at min(target, source) fps."""
    eff = np.minimum(target_fps, src_fps)
    step = src_fps / eff
    return np.floor((np.asarray(out_frames) - 1) * step + 1e-6).astype(np.int64) + 1


def assign_buckets(cfg: VideoDataConfig, m: Manifest, buckets: list[Bucket]) -> np.ndarray:
    """Bucket index per manifest row, -1 where the row is filtered out (int64 [N]).

    Filters: shorter side < min_side; video duration outside [min_duration_s,
    max_duration_s]; video too short for the shortest duration bucket; a kind the
    config does not use.
    """
    n = len(m)
    out = np.full(n, -1, np.int64)
    if n == 0:
        return out
    log_ar = np.log(m.width / m.height)
    ars = np.asarray(cfg.aspect_ratios, np.float64)
    ar_idx = np.abs(log_ar[:, None] - np.log(ars)[None, :]).argmin(axis=1)  # [N]
    big_enough = np.minimum(m.width, m.height) >= cfg.min_side
    index = {(b.kind, b.aspect_ratio, b.duration_s): i for i, b in enumerate(buckets)}

    if cfg.use_videos:
        vid = ~m.is_image & big_enough
        vid &= (m.duration >= cfg.min_duration_s - 1e-6) & (m.duration <= cfg.max_duration_s + 1e-6)
        durs = sorted(cfg.durations)
        # choose the longest duration whose frames fit: later (longer) matches overwrite
        chosen = np.full(n, -1, np.int64)
        for d_i, dur in enumerate(durs):
            t = frames_for_duration(dur, cfg.fps)
            fps = np.where(m.fps > 0, m.fps, 1.0)
            fits = frames_needed(t, fps, cfg.fps) <= m.frames
            chosen[vid & fits] = d_i
        for a_i, ar in enumerate(cfg.aspect_ratios):
            for d_i, dur in enumerate(durs):
                sel = (ar_idx == a_i) & (chosen == d_i)
                out[sel] = index[("video", float(ar), float(dur))]
    if cfg.use_images:
        img = m.is_image & big_enough
        for a_i, ar in enumerate(cfg.aspect_ratios):
            out[img & (ar_idx == a_i)] = index[("image", float(ar), 0.0)]
    return out

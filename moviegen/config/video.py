"""Every setting of the video/image loader in one plain dataclass.

It is nested in the job config as ``data.video``, so it holds only simple types that a
YAML loader can fill. The defaults are the tiny CPU demo (64 px, 8 fps, 0.5-2.5 s clips
from ``python -m moviegen.data.synthetic``); :func:`moviegen_256px` and
:func:`moviegen_768px` give Movie Gen's stage settings (4-16 s clips, 16 fps).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

BACKENDS = ("auto", "dali", "pyav")
SPLITS = ("train", "val")


@dataclass
class VideoDataConfig:
    manifest: str = ""
    """Path of the manifest.jsonl (see moviegen.data.manifest); relative paths inside it
    are resolved against the manifest's folder."""

    val_manifest: Optional[str] = None
    """Manifest for split="val"; None = rows of `manifest` whose "split" is "val"."""

    backend: str = "auto"
    """Decoder: "dali", "pyav", or "auto" (DALI when importable, else PyAV)."""

    num_workers: int = 1
    """PyAV: DataLoader worker processes (0 = decode in the calling process).
    DALI: decoder threads of its one in-process pipeline, at most the usable cores."""

    prefetch_batches: int = 2
    """Batches decoded ahead of the consumer (DALI thread queue / DataLoader prefetch)."""

    fps: float = 8.0
    """Target frame rate of the sampled frames; clips slower than this are sampled at
    their own rate. The rate used is prepended to the caption ("FPS-8 ...")."""

    resolution: int = 64
    """Bucket area is about resolution**2 pixels; e.g. 256 or 768 for Movie Gen stages."""

    size_multiple: int = 8
    """Bucket heights/widths are multiples of this (spatial compression x patch)."""

    aspect_ratios: list[float] = field(
        default_factory=lambda: [0.5625, 0.75, 1.0, 1.3333, 1.7778])
    """Bucket aspect ratios, width / height (9:16, 3:4, 1:1, 4:3, 16:9)."""

    durations: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 2.5])
    """Bucket clip durations in seconds; a clip goes to the longest one it can fill."""

    use_images: bool = True
    """Use the image rows of the manifest (as one-frame videos, in their own buckets)."""

    use_videos: bool = True
    """Use the video rows of the manifest (False: a text-to-image stage)."""

    image_ratio: Optional[float] = None
    """Image batches per video batch in an epoch (Movie Gen: about 0.1). None = every image
    once per epoch; otherwise images are drawn from a shuffled cycle to hit the ratio."""

    tokens_per_batch: int = 1024
    """Target latent tokens per (per-rank) batch; a bucket's batch size is this divided by
    its tokens per sample, clipped to [1, max_batch_size]."""

    max_batch_size: int = 16
    """Upper bound on any bucket's per-rank batch size."""

    temporal_compression: int = 4
    """TAE temporal compression used to count tokens (8 for the full TAE, 4 tiny)."""

    spatial_compression: int = 4
    """TAE spatial compression used to count tokens (8 for the full TAE, 4 tiny)."""

    patch: list[int] = field(default_factory=lambda: [1, 2, 2])
    """Transformer patch size (T, H, W) used to count tokens."""

    min_side: int = 32
    """prepare/loader filter: rows whose shorter side is below this are left out."""

    min_duration_s: float = 0.5
    """Filter: shortest video kept, seconds (Movie Gen: 4)."""

    max_duration_s: float = 16.0
    """Filter: longest video kept, seconds (Movie Gen: 16)."""

    shuffle: bool = True
    """Shuffle samples and batch order each epoch (train split only; val never shuffles)."""

    drop_last: bool = False
    """Drop each bucket's last partial global batch. False keeps it, split over DP ranks
    as evenly as possible, so every sample is seen once per epoch."""

    cache_decoded_mb: int = 0
    """PyAV path: keep decoded clips in memory, up to this many MB per decoding process
    (0: off); for a small set trained for many epochs, e.g. the TAE on a few hundred clips."""

    max_skip_fraction: float = 0.05
    """Fail loudly when skipped files / seen files passes this (checked once at least
    `skip_check_min_files` files were seen, and at every epoch end)."""

    skip_check_min_files: int = 50
    """Files to see before the skipped-fraction check can fire."""

    def validate(self) -> "VideoDataConfig":
        def bad(name: str, why: str):
            raise ValueError(f"data.video.{name}: {why} (got {getattr(self, name)!r})")

        if not isinstance(self.manifest, str):
            bad("manifest", "must be a path string")
        if self.backend not in BACKENDS:
            bad("backend", f"must be one of {BACKENDS}")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if self.cache_decoded_mb < 0:
            bad("cache_decoded_mb", "must be >= 0")
        if self.prefetch_batches < 1:
            bad("prefetch_batches", "must be >= 1")
        if not self.fps > 0:
            bad("fps", "must be > 0")
        if self.size_multiple < 1:
            bad("size_multiple", "must be >= 1")
        if self.resolution < self.size_multiple:
            bad("resolution", "must be >= size_multiple")
        if not self.aspect_ratios or any(not (a > 0) for a in self.aspect_ratios):
            bad("aspect_ratios", "must be a non-empty list of positive width/height ratios")
        if len(set(self.aspect_ratios)) != len(self.aspect_ratios):
            bad("aspect_ratios", "must not repeat")
        if not self.durations or any(not (d > 0) for d in self.durations):
            bad("durations", "must be a non-empty list of positive seconds")
        if len(set(self.durations)) != len(self.durations):
            bad("durations", "must not repeat")
        if any(round(d * self.fps) < 1 for d in self.durations):
            bad("durations", f"each must give >= 1 frame at fps={self.fps}")
        if not (self.use_images or self.use_videos):
            bad("use_videos", "use_images and use_videos cannot both be False")
        if self.image_ratio is not None and self.image_ratio < 0:
            bad("image_ratio", "must be None or >= 0")
        if self.tokens_per_batch < 1:
            bad("tokens_per_batch", "must be >= 1")
        if self.max_batch_size < 1:
            bad("max_batch_size", "must be >= 1")
        if self.temporal_compression < 1:
            bad("temporal_compression", "must be >= 1")
        if self.spatial_compression < 1:
            bad("spatial_compression", "must be >= 1")
        if len(self.patch) != 3 or any(int(p) < 1 for p in self.patch):
            bad("patch", "must be three positive ints (T, H, W)")
        unit = self.spatial_compression * max(int(self.patch[1]), int(self.patch[2]))
        if self.size_multiple % unit:
            bad("size_multiple", f"must be a multiple of spatial_compression x patch = {unit}")
        if self.min_side < 1:
            bad("min_side", "must be >= 1")
        if not (0 <= self.min_duration_s <= self.max_duration_s):
            bad("min_duration_s", f"must be in [0, max_duration_s={self.max_duration_s}]")
        if not (0.0 <= self.max_skip_fraction <= 1.0):
            bad("max_skip_fraction", "must be in [0, 1]")
        if self.skip_check_min_files < 1:
            bad("skip_check_min_files", "must be >= 1")
        return self

    def replace(self, **changes) -> "VideoDataConfig":
        return dataclasses.replace(self, **changes)


def moviegen_256px(manifest: str = "") -> VideoDataConfig:
    """Movie Gen's joint 256 px stage: 16 fps, 4-16 s clips, full 8x TAE, 1:10 images."""
    return VideoDataConfig(
        manifest=manifest, fps=16.0, resolution=256, size_multiple=16,
        durations=[4.0, 6.0, 8.0, 12.0, 16.0], image_ratio=0.1,
        tokens_per_batch=4 * 32 * 16 * 16, max_batch_size=256,
        temporal_compression=8, spatial_compression=8, min_side=256,
        min_duration_s=4.0, max_duration_s=16.0, num_workers=8)


def moviegen_768px(manifest: str = "") -> VideoDataConfig:
    """Movie Gen's 768 px stage: (768/16)^2 x (256/8) = 73,728 tokens per 16 s sample."""
    cfg = moviegen_256px(manifest)
    cfg.resolution = 768
    cfg.min_side = 720
    cfg.tokens_per_batch = 73_728
    cfg.max_batch_size = 32
    return cfg


def frames_for_duration(duration_s: float, fps: float) -> int:
    """Frames a bucket of `duration_s` holds at `fps` (at least one)."""
    return max(1, int(math.floor(duration_s * fps + 0.5)))

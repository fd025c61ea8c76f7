"""Batch specs and the PyAV decode path (the fallback when DALI is absent).

A :class:`BatchSpec` says exactly what to decode for one rank's batch: per sample the
file, the source frame indices, the resize size and the crop corner. Both backends take
the same spec and produce the same tensor, so the sampling maths lives here once:

  * frames: sampled at min(target fps, source fps); index k of a window starting at
    `start` is start + floor(k * source_fps / fps_used)
  * space: resize (bilinear, antialiased) so the bucket size is covered, then crop
  * values: uint8 -> (x - 127.5) / 127.5 in [-1, 1]; layout [C, T, H, W]

PyAV frames become RGB through ``video_io.rgb_frame`` (the project's one conversion,
bit-exact with DALI's CPU decoder on VP9, checked by tests/test_data_decode.py).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from moviegen.data.buckets import Bucket
from moviegen.data.manifest import Manifest
from moviegen.data.video_io import rgb_frame

# Codecs the DALI CPU decoder handles; the GPU ('mixed', NVDEC) one handles these.
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")
DALI_GPU_CODECS = ("h264", "hevc", "av1", "vp8", "vp9", "mjpeg", "mpeg4")


class DecodeError(RuntimeError):
    """A sample that cannot be decoded; the loader logs, counts and skips it."""


@dataclass
class SampleSpec:
    row: int
    path: str
    kind: str                      # "video" | "image"
    frame_indices: np.ndarray      # int64 [T] source frame numbers (empty for images)
    resize_hw: tuple[int, int]     # size after resize, covers the bucket size
    crop_yx: tuple[int, int]       # top-left corner of the crop in the resized frame
    fps_used: float                # sampling rate (0 for images)
    codec: str = ""                # as probed into the manifest ("" unknown)
    frame_times: np.ndarray | None = None  # float64 [T] seconds: pick by timestamp (VFR)


@dataclass
class BatchSpec:
    epoch: int
    index: int                     # global batch index in the epoch
    bucket: Bucket
    samples: list[SampleSpec] = field(default_factory=list)


def sample_spec(m: Manifest, row: int, bucket: Bucket, target_fps: float,
                u: np.ndarray, centre: bool) -> SampleSpec:
    """Spec of one sample from its manifest row and three uniforms (time, y, x)."""
    h, w = int(m.height[row]), int(m.width[row])
    scale = max(bucket.height / h, bucket.width / w)
    rh = max(bucket.height, int(round(h * scale)))
    rw = max(bucket.width, int(round(w * scale)))
    dy, dx = rh - bucket.height, rw - bucket.width
    if centre:
        cy, cx = dy // 2, dx // 2
    else:
        cy = min(dy, int(math.floor(u[1] * (dy + 1))))
        cx = min(dx, int(math.floor(u[2] * (dx + 1))))
    if bucket.kind == "image":
        return SampleSpec(row, m.resolve(row), "image", np.zeros(0, np.int64), (rh, rw),
                          (cy, cx), 0.0, m.codecs[row])
    src_fps, n_src = float(m.fps[row]), int(m.frames[row])
    fps_used = min(target_fps, src_fps)
    if m.vfr[row]:  # evenly timed frames from the presentation timestamps
        span = (bucket.frames - 1) / fps_used
        slack = max(0.0, float(m.duration[row]) - span - 1.0 / src_fps)
        start_s = slack / 2 if centre else float(u[0]) * slack
        times = float(m.clip_start[row]) + start_s + np.arange(bucket.frames) / fps_used
        return SampleSpec(row, m.resolve(row), "video", np.floor(times * src_fps).astype(
            np.int64), (rh, rw), (cy, cx), fps_used, m.codecs[row], times)
    step = src_fps / fps_used
    k = np.arange(bucket.frames)
    offsets = np.floor(k * step + 1e-6).astype(np.int64)
    max_start = max(0, n_src - int(offsets[-1]) - 1)
    start = max_start // 2 if centre else min(max_start, int(math.floor(u[0] * (max_start + 1))))
    start += int(round(float(m.clip_start[row]) * src_fps))  # a clip cut from a longer file
    return SampleSpec(row, m.resolve(row), "video", start + offsets, (rh, rw), (cy, cx),
                      fps_used, m.codecs[row])


# ----------------------------------------------------------------------------- PyAV


@contextmanager
def _decoding(path: str, codecs=None):
    """(container, stream) of ``path``'s first video stream, single-threaded (workers
    parallelise); any failure inside the block (no stream, a codec outside ``codecs``, a
    damaged file) is a DecodeError with the reason."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            if codecs is not None and codec not in codecs:
                raise DecodeError(f"codec {codec!r} not in accepted codecs {list(codecs)}")
            stream.codec_context.thread_count = 1
            yield container, stream
    except DecodeError:
        raise
    except Exception as e:  # av.error.*, OSError, ...: any failure is this file's
        raise DecodeError(f"{type(e).__name__}: {e}") from None


def check_file(path: str) -> None:
    """Cheap checks both backends do before decoding."""
    if not os.path.exists(path):
        raise DecodeError("missing file")
    if os.path.getsize(path) == 0:
        raise DecodeError("zero-byte file")


class ClipCache:
    """Decoded clips kept in this process, least recently used out first, up to a budget:
    a small dataset trained for many epochs (a TAE on a few hundred clips) decodes each
    file once instead of once per batch."""

    def __init__(self, budget_mb: int = 0):
        self.budget = budget_mb * 2**20
        self.used = 0
        self.clips: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray | None:
        clip = self.clips.pop(path, None)
        if clip is not None:
            self.clips[path] = clip  # most recently used last
        return clip

    def put(self, path: str, clip: np.ndarray) -> None:
        if clip.nbytes > self.budget:
            return
        while self.used + clip.nbytes > self.budget and self.clips:
            self.used -= self.clips.pop(next(iter(self.clips))).nbytes
        self.clips[path] = clip
        self.used += clip.nbytes


_CLIP_CACHE = ClipCache(0)


def set_clip_cache(budget_mb: int) -> None:
    """Sizes this process's decoded-clip cache (0: off); kept when the size is unchanged."""
    global _CLIP_CACHE
    if _CLIP_CACHE.budget != budget_mb * 2**20:
        _CLIP_CACHE = ClipCache(budget_mb)


def decode_video_pyav(path: str, indices: np.ndarray, codecs=None,
                     times: np.ndarray | None = None) -> np.ndarray:
    """uint8 [T, H, W, 3] frames `indices` (decode order = presentation order), or with
    ``times`` the frame shown at each time (the last frame whose timestamp, counted from
    the first frame's, is not after it: what a player shows)."""
    check_file(path)
    if times is not None:
        return _decode_by_time(path, np.asarray(times, np.float64), codecs)
    if _CLIP_CACHE.budget > 0 and codecs is None:
        clip = _CLIP_CACHE.get(path)
        if clip is None:
            clip = _decode_all(path)
            _CLIP_CACHE.put(path, clip)
        if int(max(indices)) >= len(clip):
            raise DecodeError(f"truncated: needs frame {int(max(indices))}, decoded "
                              f"{len(clip)} frames")
        return clip[np.asarray(indices, np.int64)]
    wanted = {int(i) for i in indices}
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    count = 0
    with _decoding(path, codecs) as (container, stream):
        for frame in container.decode(stream):
            if count in wanted:
                got[count] = rgb_frame(frame)
            count += 1
            if count > last:
                break
    if len(got) < len(wanted):
        raise DecodeError(f"truncated: needs frame {last}, decoded {count} frames")
    shapes = {a.shape for a in got.values()}
    if len(shapes) != 1:
        raise DecodeError(f"frame size changes inside the clip: {sorted(shapes)}")
    return np.stack([got[int(i)] for i in indices])


def _decode_all(path: str) -> np.ndarray:
    """Every frame of a clip, uint8 [N, H, W, 3]."""
    with _decoding(path) as (container, stream):
        frames = [rgb_frame(f) for f in container.decode(stream)]
    if not frames:
        raise DecodeError("no decodable frames")
    if len({a.shape for a in frames}) != 1:
        raise DecodeError("frame size changes inside the clip")
    return np.stack(frames)


def _decode_by_time(path: str, times: np.ndarray, codecs=None) -> np.ndarray:
    shown: list[np.ndarray | None] = [None] * len(times)
    with _decoding(path, codecs) as (container, stream):
        t0, k = None, 0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t0 = frame.time if t0 is None else t0
            t = frame.time - t0
            while k < len(times) and times[k] < t - 1e-6:
                k += 1  # times before this frame were shown by the previous frame
            if k >= len(times):
                break
            img = rgb_frame(frame)
            for j in range(k, len(times)):  # this frame is shown until the next one
                if times[j] >= t - 1e-6:
                    shown[j] = img
    if any(f is None for f in shown):
        raise DecodeError(f"truncated: no frame shown at {times[-1]:.3f} s")
    return np.stack(shown)


def decode_image_pil(path: str) -> np.ndarray:
    """uint8 [1, H, W, 3]."""
    from PIL import Image

    check_file(path)
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))
    except Exception as e:
        raise DecodeError(f"{type(e).__name__}: {e}") from None
    return arr[None]


def resize_crop_normalize(frames_THWC: np.ndarray, resize_hw, crop_yx, out_hw) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, h, w] in [-1, 1] (what DALI's graph computes)."""
    x = torch.from_numpy(np.ascontiguousarray(frames_THWC)).permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != tuple(resize_hw):
        x = F.interpolate(x, size=tuple(resize_hw), mode="bilinear", antialias=True,
                          align_corners=False)
        x = x.round_().clamp_(0, 255)  # DALI resizes to uint8
    (cy, cx), (h, w) = crop_yx, out_hw
    x = x[:, :, cy:cy + h, cx:cx + w]
    return (x.permute(1, 0, 2, 3) - 127.5) / 127.5


def decode_sample_pyav(s: SampleSpec, hw, codecs=None) -> torch.Tensor:
    """One sample as float32 [3, T, h, w] in [-1, 1]; raises DecodeError with the reason."""
    if s.kind == "video":
        frames = decode_video_pyav(s.path, s.frame_indices, codecs, s.frame_times)
    else:
        frames = decode_image_pil(s.path)
    return resize_crop_normalize(frames, s.resize_hw, s.crop_yx, hw)


def decode_batch_pyav(spec: BatchSpec, codecs=None) -> dict:
    """Decodes one BatchSpec; failed samples are reported, not raised."""
    out, kept, skipped = [], [], []
    hw = (spec.bucket.height, spec.bucket.width)
    for i, s in enumerate(spec.samples):
        try:
            out.append(decode_sample_pyav(s, hw, codecs))
            kept.append(i)
        except DecodeError as e:
            skipped.append((i, str(e)))
    video = (torch.stack(out) if out else
             torch.zeros((0, 3, spec.bucket.frames, *hw), dtype=torch.float32))
    return {"epoch": spec.epoch, "index": spec.index, "video": video, "kept": kept,
            "skipped": skipped}

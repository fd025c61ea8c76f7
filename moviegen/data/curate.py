"""Curation of probed videos (Movie Gen's data pipeline filters, in small): trimming the
unstable first seconds, cutting multi-shot videos into single-shot clips at scene changes,
a motion score that drops near-static clips, and an aspect-ratio range.

Scene cuts and motion come from one cheap pass over each video: frames sampled at
``analysis_fps``, downscaled to 32x32 grey, and the mean absolute difference between
consecutive samples (0-255). A difference above ``scene_threshold`` is a cut (a frame
difference detector, as PySceneDetect's content detector does on HSV); a clip's motion
score is the median difference inside it. Each kept clip becomes one manifest row with
``clip_start`` (seconds into the file), ``duration``, ``frames`` and ``motion``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Curation:
    trim_start_s: float = 0.0
    """Drop the first seconds of every video (Movie Gen: unstable starts)."""
    scene_threshold: float = 0.0
    """Cut where consecutive sampled frames differ by more than this (mean |grey diff|,
    0-255); 0: no scene detection."""
    min_motion: float = 0.0
    """Drop clips whose median frame difference is below this (near-static); 0: keep all."""
    min_clip_s: float = 0.5
    """Shortest clip kept after trimming and cutting, seconds."""
    analysis_fps: float = 4.0
    """Sampling rate of the analysis pass."""
    min_aspect: float = 0.0
    """Drop files whose width / height is below this (0: no bound)."""
    max_aspect: float = math.inf
    """Drop files whose width / height is above this."""

    @property
    def analyses(self) -> bool:
        return self.scene_threshold > 0 or self.min_motion > 0

    @property
    def changes_clips(self) -> bool:
        return self.analyses or self.trim_start_s > 0


def frame_differences(path: str, fps: float, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(times [N], mean |difference| between sample k and k-1 [N], first = 0) of grey
    frames sampled at ``fps`` by presentation time."""
    import av

    times, diffs, prev, next_t = [], [], None, 0.0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        t0 = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t0 = frame.time if t0 is None else t0
            t = frame.time - t0
            if t + 1e-6 < next_t:
                continue
            next_t = t + 1.0 / fps
            grey = frame.reformat(width=size, height=size, format="gray").to_ndarray()
            grey = grey.astype(np.float32)
            diffs.append(0.0 if prev is None else float(np.abs(grey - prev).mean()))
            times.append(t)
            prev = grey
    return np.asarray(times), np.asarray(diffs)


def clips_of(path: str, info: dict, cur: Curation) -> list[dict]:
    """The single-shot clips of one probed video: [{"clip_start", "duration", "frames",
    "motion"}], and the reason when none is left ([{"dropped": why}])."""
    duration, fps = float(info["duration"]), float(info["fps"])
    start, end = min(cur.trim_start_s, duration), duration
    cuts, diffs, times = [], np.zeros(0), np.zeros(0)
    if cur.analyses:
        times, diffs = frame_differences(path, cur.analysis_fps)
        if cur.scene_threshold > 0:
            cuts = [float(t) for t, d in zip(times, diffs) if d > cur.scene_threshold]
    bounds = [start] + [c for c in cuts if start < c < end] + [end]
    out, reasons = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a + 1e-6 < cur.min_clip_s:
            reasons.append(f"clip {a:.2f}-{b:.2f} s shorter than {cur.min_clip_s} s")
            continue
        inside = diffs[(times > a + 1e-6) & (times < b - 1e-6)] if len(times) else diffs
        motion = float(np.median(inside)) if len(inside) else 0.0
        if cur.min_motion > 0 and motion < cur.min_motion:
            reasons.append(f"static: motion {motion:.2f} < {cur.min_motion} "
                           f"(clip {a:.2f}-{b:.2f} s)")
            continue
        out.append({"clip_start": round(a, 6), "duration": round(b - a, 6),
                    "frames": max(1, int(math.floor((b - a) * fps + 1e-6))),
                    "motion": round(motion, 4)})
    return out or [{"dropped": "; ".join(reasons) or "nothing left after trimming"}]

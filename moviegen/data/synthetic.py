"""A small, real video dataset: coloured shapes moving across the frame, as VP9 .webm.

    python -m moviegen.data.synthetic --output_dir data/shapes --num_videos 64 \\
        [--num_images 16] [--seed 0] [--val_fraction 0.1] [--exclude "red circle"]

Each video shows one shape (COLORS x SHAPES) moving in one of DIRECTIONS at one of
several aspect ratios (ASPECT_RATIOS), frame rates (FRAME_RATES) and durations; its
caption says what is seen: "a red circle moves from left to right". Still images show one
shape at one of POSITIONS ("a blue square on the left"), as PNG or JPEG. The output
folder holds videos/, images/, a caption .txt beside every file, and manifest.jsonl
(the format of moviegen.data.manifest, buckets from the default VideoDataConfig).

The vocabulary is module-level so a demo can hold a combination out (--exclude) and
prompt for it later. Defaults stay small for CPUs: 64-80 px short side, 1-3 s clips,
which the default (tiny) VideoDataConfig accepts; Movie Gen's 4-16 s filter would not.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from moviegen.config.core import run_cli
from moviegen.data.video_io import write_frames

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230),
    "yellow": (235, 210, 40), "purple": (150, 60, 200), "orange": (245, 140, 30),
    "white": (240, 240, 240), "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle")
# direction phrase -> (start, end) of the shape centre, as (x, y) fractions of the frame
DIRECTIONS = {
    "from left to right": ((0.15, 0.5), (0.85, 0.5)),
    "from right to left": ((0.85, 0.5), (0.15, 0.5)),
    "from top to bottom": ((0.5, 0.15), (0.5, 0.85)),
    "from bottom to top": ((0.5, 0.85), (0.5, 0.15)),
}
POSITIONS = {
    "in the centre": (0.5, 0.5), "on the left": (0.25, 0.5), "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25), "at the bottom": (0.5, 0.75),
}
ASPECT_RATIOS = {"16:9": 16 / 9, "4:3": 4 / 3, "1:1": 1.0, "3:4": 3 / 4, "9:16": 9 / 16}
FRAME_RATES = (8, 12, 15, 24)
SHORT_SIDES = (64, 72, 80)
BACKGROUND = (16, 16, 24)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def video_caption(color: str, shape: str, direction: str) -> str:
    return f"{_article(color)} {color} {shape} moves {direction}"


def image_caption(color: str, shape: str, position: str) -> str:
    return f"{_article(color)} {color} {shape} {position}"


def frame_size(aspect: float, short_side: int, multiple: int = 8) -> tuple[int, int]:
    """(width, height), even and a multiple of `multiple` (VP9 4:2:0 needs even sizes)."""
    long_side = int(round(short_side * max(aspect, 1 / aspect) / multiple)) * multiple
    return (long_side, short_side) if aspect >= 1 else (short_side, long_side)


def draw_shape(height: int, width: int, shape: str, color, centre_xy, size: float) -> np.ndarray:
    """uint8 [H, W, 3]: the shape over BACKGROUND with 1-px antialiased edges."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cx, cy = centre_xy[0] * width, centre_xy[1] * height
    r = size / 2
    if shape == "circle":
        inside = r - np.hypot(xs - cx, ys - cy)          # signed distance, >0 inside
    elif shape == "square":
        inside = r - np.maximum(np.abs(xs - cx), np.abs(ys - cy))
    elif shape == "triangle":                             # upward, centred on (cx, cy)
        top, base = cy - r, cy + r
        half = (ys - top) / (2 * r) * r * 1.1547         # half-width grows to r*2/sqrt(3)
        inside = np.minimum.reduce([ys - top, base - ys, half - np.abs(xs - cx)])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    alpha = np.clip(inside + 0.5, 0.0, 1.0)[..., None]
    img = np.asarray(BACKGROUND, np.float32) * (1 - alpha) + np.asarray(color, np.float32) * alpha
    return np.round(img).astype(np.uint8)


def write_webm(path: str, frames_THWC: np.ndarray, fps: int, crf: int = 20) -> None:
    """Encodes uint8 frames as VP9 in WebM (the codec DALI decodes on CPU)."""
    write_frames(path, frames_THWC, fps, codec="libvpx-vp9", crf=crf, realtime=True)


def excluded(caption: str, exclude: set[str]) -> bool:
    """An entry excludes every caption that contains all of its '+'-separated parts:
    "red circle" drops red circles; "red+from right to left" drops red shapes moving
    right to left (any shape) -- a colour/direction pairing held out for a demo."""
    return any(all(part.strip() in caption for part in entry.split("+")) for entry in exclude)


def _combos(exclude: set[str], colors=None, shapes=None):
    out = [(c, s, d) for c in (colors or COLORS) for s in (shapes or SHAPES) for d in DIRECTIONS
           if not excluded(video_caption(c, s, d), exclude)]
    if not out:
        raise ValueError("--exclude removed every colour/shape/direction combination")
    return out


def write_synthetic_dataset(output_dir: str, num_videos: int, num_images: int = 0,
                            seed: int = 0, val_fraction: float = 0.1,
                            min_duration: float = 1.0, max_duration: float = 3.0,
                            short_sides=SHORT_SIDES, frame_rates=FRAME_RATES, exclude=(),
                            colors=None, shapes=None, aspect_ratios=None) -> str:
    """Writes the dataset (videos/, images/, captions, manifest.jsonl); returns the manifest path. ``colors``/``shapes``/``aspect_ratios``
    restrict the vocabulary (names from COLORS, SHAPES, ASPECT_RATIOS; None = all)."""
    from moviegen.data.buckets import assign_buckets, make_buckets
    from moviegen.config.video import VideoDataConfig
    from moviegen.data.manifest import load_manifest, write_rows

    rng = np.random.default_rng(seed)
    exclude = {e.strip() for e in exclude if e.strip()}
    for name, chosen, known in (("colour", colors, COLORS), ("shape", shapes, SHAPES),
                                ("aspect ratio", aspect_ratios, ASPECT_RATIOS)):
        unknown = [c for c in (chosen or ()) if c not in known]
        if unknown:
            raise ValueError(f"unknown {name} {unknown[0]!r} (known: {', '.join(known)})")
    combos = _combos(exclude, colors, shapes)
    os.makedirs(os.path.join(output_dir, "videos"), exist_ok=True)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    rows = []
    n_val = int(round(val_fraction * num_videos))
    ar_names = list(aspect_ratios or ASPECT_RATIOS)
    for i in range(num_videos):
        color, shape, direction = combos[rng.integers(len(combos))]
        ar = ASPECT_RATIOS[ar_names[i % len(ar_names)]]   # every aspect ratio is used
        w, h = frame_size(ar, int(rng.choice(short_sides)))
        fps = int(rng.choice(frame_rates))
        duration = float(rng.uniform(min_duration, max_duration))
        n = max(2, int(round(duration * fps)))
        (x0, y0), (x1, y1) = DIRECTIONS[direction]
        size = 0.3 * min(w, h)
        frames = np.stack([
            draw_shape(h, w, shape, COLORS[color],
                       (x0 + (x1 - x0) * k / (n - 1), y0 + (y1 - y0) * k / (n - 1)), size)
            for k in range(n)])
        rel = f"videos/{i:05d}.webm"
        write_webm(os.path.join(output_dir, rel), frames, fps)
        caption = video_caption(color, shape, direction)
        rows.append({"path": rel, "caption": caption, "type": "video", "width": w,
                     "height": h, "fps": fps, "frames": n, "duration": round(n / fps, 6),
                     "codec": "vp9",
                     "split": "val" if i < n_val else "train"})
    positions = list(POSITIONS)
    for j in range(num_images):
        color, shape, _ = combos[rng.integers(len(combos))]  # images: colour/shape/position
        position = positions[rng.integers(len(positions))]
        w, h = frame_size(ASPECT_RATIOS[ar_names[j % len(ar_names)]], int(rng.choice(short_sides)))
        img = draw_shape(h, w, shape, COLORS[color], POSITIONS[position], 0.3 * min(w, h))
        ext = "png" if j % 2 == 0 else "jpg"
        rel = f"images/{j:05d}.{ext}"
        from PIL import Image
        Image.fromarray(img).save(os.path.join(output_dir, rel), quality=95)
        rows.append({"path": rel, "caption": image_caption(color, shape, position),
                     "type": "image", "width": w, "height": h, "split": "train"})
    for row in rows:
        stem = os.path.splitext(os.path.join(output_dir, row["path"]))[0]
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write(row["caption"] + "\n")
    manifest = os.path.join(output_dir, "manifest.jsonl")
    write_rows(manifest, rows)
    # informational bucket names under the default config
    cfg = VideoDataConfig(manifest=manifest)
    buckets = make_buckets(cfg)
    ids = assign_buckets(cfg, load_manifest(manifest), buckets)
    for row, b in zip(rows, ids):
        row["bucket"] = buckets[b].name if b >= 0 else None
    write_rows(manifest, rows)
    return manifest


@dataclass
class SyntheticArgs:
    output_dir: str
    """Folder to write (videos/, images/, captions, manifest.jsonl)."""
    num_videos: int
    """VP9 .webm clips to write."""
    num_images: Optional[int] = None
    """Still images (default: num_videos // 4)."""
    seed: int = 0
    """Random seed (same seed, same files)."""
    val_fraction: float = 0.1
    """Fraction of the videos marked split "val"."""
    min_duration: float = 1.0
    """Shortest clip, seconds."""
    max_duration: float = 3.0
    """Longest clip, seconds."""
    short_side: list[int] = field(default_factory=lambda: list(SHORT_SIDES))
    """Pixel sizes the shorter side is drawn from (e.g. --short_side=[32,40])."""
    exclude: list[str] = field(default_factory=list)
    """Entries never generated: "red circle" (colour + shape) or "red+from right to left"
    (all parts in the caption); repeat the option for several."""
    colors: list[str] = field(default_factory=list)
    """Subset of the colours (default: all)."""
    shapes: list[str] = field(default_factory=list)
    """Subset of the shapes (default: all)."""
    aspect_ratios: list[str] = field(default_factory=list)
    """Subset of the aspect ratios, e.g. "16:9" (default: all)."""
    frame_rates: list[int] = field(default_factory=lambda: list(FRAME_RATES))
    """Frame rates the clips are drawn from."""


def main(argv=None) -> None:
    def run(a: SyntheticArgs) -> None:
        num_images = a.num_videos // 4 if a.num_images is None else a.num_images
        try:
            manifest = write_synthetic_dataset(a.output_dir, a.num_videos, num_images, a.seed, a.val_fraction,
                                a.min_duration, a.max_duration, tuple(a.short_side),
                                frame_rates=tuple(a.frame_rates), exclude=a.exclude,
                                colors=a.colors or None, shapes=a.shapes or None,
                                aspect_ratios=a.aspect_ratios or None)
        except ValueError as e:
            print(f"config error: {e}", file=sys.stderr)
            raise SystemExit(2)
        with open(manifest) as f:
            n = sum(1 for _ in f)
        print(json.dumps({"manifest": manifest, "rows": n, "videos": a.num_videos,
                          "images": num_images}))

    run_cli(run, SyntheticArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()

"""What a generated video of the synthetic vocabulary (moviegen.data.synthetic) shows:
the shape's colour, its motion and its outline, each checked against the caption.

The shape is every pixel far from the synthetic background (any colour, so a shape of
the wrong colour is still found and reported as such):
  colour   the palette colour nearest to most of the shape's pixels, with that fraction
  motion   the shape's centre from the first to the last frame (moved less than 10% of
           the frame: static)
  shape    how much of its bounding box the shape fills (a disc pi/4 = 0.79, a square 1)
"""
from __future__ import annotations

import numpy as np
import torch

from moviegen.data.synthetic import BACKGROUND, COLORS
from moviegen.models.tae import psnr

SHAPE_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel is shape
SQUARE_FILL = 0.9      # bounding-box fill above which the outline is a square


def shape_mask(video_CTHW: torch.Tensor) -> torch.Tensor:
    """[T, H, W] bool: the pixels of the shape."""
    rgb = (video_CTHW.float().clamp(-1, 1) + 1) * 127.5
    bg = torch.tensor(BACKGROUND, dtype=rgb.dtype).view(3, 1, 1, 1)
    return (rgb - bg).norm(dim=0) > SHAPE_DISTANCE


def colour_of(video_CTHW: torch.Tensor, mask_THW: torch.Tensor,
              palette: tuple[str, ...]) -> dict[str, float]:
    """Fraction of the shape's pixels nearest to each palette colour, largest first."""
    rgb = ((video_CTHW.float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0)[mask_THW]
    if rgb.shape[0] == 0:
        return {}
    ref = torch.tensor([COLORS[c] for c in palette], dtype=rgb.dtype)
    nearest = torch.cdist(rgb, ref).argmin(dim=1)
    share = torch.bincount(nearest, minlength=len(palette)).float() / rgb.shape[0]
    return dict(sorted(((c, round(float(s), 3)) for c, s in zip(palette, share)),
                       key=lambda kv: -kv[1]))


def track(mask_THW: torch.Tensor) -> list[tuple[float, float]]:
    """(x, y) centre of the shape per frame, as fractions of the frame (nan: none)."""
    _, H, W = mask_THW.shape
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    out = []
    for m in mask_THW.float():
        n = m.sum()
        if n < 1:
            out.append((float("nan"), float("nan")))
        else:
            out.append((float((m * xs[None, :]).sum() / n), float((m * ys[:, None]).sum() / n)))
    return out


def motion_of(points) -> str:
    pts = np.array([p for p in points if not np.isnan(p[0])])
    if len(pts) < 2:
        return "no shape found"
    dx, dy = pts[-1] - pts[0]
    if max(abs(dx), abs(dy)) < 0.1:
        return "static"
    if abs(dx) >= abs(dy):
        return "from left to right" if dx > 0 else "from right to left"
    return "from top to bottom" if dy > 0 else "from bottom to top"


def fill_of(mask_THW: torch.Tensor) -> float | None:
    """Median over frames of the shape's area / its bounding box's area."""
    fills = []
    for m in mask_THW:
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(ys) < 4:
            continue
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills.append(float(len(ys) / box))
    return float(np.median(fills)) if fills else None


def judge(video_CTHW: torch.Tensor, caption: str, palette: tuple[str, ...]) -> dict:
    """Verdicts for a caption "a <colour> <shape> moves <direction>"."""
    words = caption.split()
    want_colour, want_shape = words[1], words[2]
    want_motion = caption.split(" moves ")[1]
    mask = shape_mask(video_CTHW)
    shares = colour_of(video_CTHW, mask, palette)
    colour = next(iter(shares), "none")
    points = track(mask)
    motion = motion_of(points)
    fill = fill_of(mask)
    shape = "none" if fill is None else ("square" if fill > SQUARE_FILL else "circle")
    return {
        "colour": {"expected": want_colour, "seen": colour,
                   "fraction": shares.get(colour, 0.0), "ok": colour == want_colour,
                   "shares": shares},
        "motion": {"expected": want_motion, "seen": motion, "ok": motion == want_motion},
        "shape": {"expected": want_shape, "seen": shape,
                  "fill": None if fill is None else round(fill, 3), "ok": shape == want_shape},
        "track_xy": [[round(x, 3), round(y, 3)] for x, y in points],
    }


def verdict_line(caption: str, v: dict) -> str:
    c, m, s = v["colour"], v["motion"], v["shape"]
    mark = lambda ok: "ok" if ok else "WRONG"  # noqa: E731
    return (f"colour {c['seen']} ({100 * c['fraction']:.0f}% of the shape) {mark(c['ok'])}; "
            f"motion {m['seen']} {mark(m['ok'])}; shape {s['seen']}"
            + (f" (fill {s['fill']:.2f})" if s["fill"] is not None else "") + f" {mark(s['ok'])}")


def continuity(video_CTHW: torch.Tensor, joins: list[int]) -> dict:
    """How well the frames on either side of each join (the first frame of a new clip)
    agree: ``seam_psnr_db`` the worst join's PSNR between frames j-1 and j, against
    ``consecutive_psnr_db`` the median over every other pair of neighbouring frames (what
    the motion alone costs)."""
    T = video_CTHW.shape[1]
    pairs = [psnr(video_CTHW[:, i - 1], video_CTHW[:, i]) for i in range(1, T)]
    seams = [pairs[j - 1] for j in joins]
    rest = [p for i, p in enumerate(pairs, 1) if i not in joins]
    return {"seam_psnr_db": round(min(seams), 2) if seams else None,
            "seam_psnr_db_per_join": [round(s, 2) for s in seams],
            "consecutive_psnr_db": round(float(np.median(rest)), 2) if rest else None}

"""Test videos for the data benchmark, encoded here with PyAV's encoders.

Content that makes a codec work as on camera footage, not flat shapes: a textured
background that pans (blocks of colour at 1/8 resolution plus fine grain), with a
bright disc crossing it. Sources are 24 fps, as most film/phone footage is, so sampling
at 16 fps skips frames the decoder must still decode.
"""
from __future__ import annotations

import os

import numpy as np

# codec -> (PyAV encoder, container extension, encoder options). Speed presets keep the
# encode short; the decoder's work depends on the bitstream's features, not the preset.
ENCODERS = {
    "h264": ("libx264", ".mp4", {"preset": "veryfast", "crf": "23"}),
    "vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "32",
                                    "b": "0"}),
}
SIZES = {256: (448, 256), 720: (1280, 720)}   # name -> (width, height), both 16:9


def _frames(w: int, h: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    pad = n * 4 + 16
    blocks = rng.integers(30, 220, ((h + pad) // 8 + 1, (w + pad) // 8 + 1, 3), np.uint8)
    bg = np.repeat(np.repeat(blocks, 8, 0), 8, 1)
    yy, xx = np.mgrid[:h, :w]
    r = 0.15 * h
    for k in range(n):
        img = bg[2 * k:2 * k + h, 4 * k:4 * k + w].astype(np.int16)
        img += rng.integers(-6, 7, (h, w, 1), np.int16)           # grain
        cx, cy = w * (0.1 + 0.8 * k / max(1, n - 1)), h * 0.5
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 240
        yield np.clip(img, 0, 255).astype(np.uint8)


def encode(path: str, codec: str, size: int, seconds: float, fps: int = 24,
           seed: int = 0) -> dict:
    """Writes one clip; returns its manifest row (path relative to the file's folder)."""
    import av

    encoder, _, options = ENCODERS[codec]
    w, h = SIZES[size]
    n = int(round(seconds * fps))
    with av.open(path, "w") as c:
        s = c.add_stream(encoder, rate=fps, options=dict(options))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.thread_count = 1
        for img in _frames(w, h, n, seed):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {"path": os.path.basename(path), "caption": "a white disc crosses a textured "
            "background from left to right", "type": "video", "width": w, "height": h,
            "fps": float(fps), "frames": n, "duration": n / fps, "codec": codec}


def make_set(out_dir: str, codec: str, size: int, n: int, seconds: float) -> str:
    """n clips of one codec and size; returns their manifest path."""
    from moviegen.data.manifest import write_rows

    os.makedirs(out_dir, exist_ok=True)
    ext = ENCODERS[codec][1]
    rows = [encode(os.path.join(out_dir, f"{codec}_{size}_{i:03d}{ext}"), codec, size,
                   seconds, seed=i) for i in range(n)]
    path = os.path.join(out_dir, f"manifest_{codec}_{size}.jsonl")
    write_rows(path, rows)
    return path

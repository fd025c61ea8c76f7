"""Video files <-> tensors: [3, T, H, W] float in [-1, 1] (C, frames, height, width).

    write_video("out.mp4", video_CTHW, fps=16)    # H.264 (libx264; mpeg4 if missing)
    write_video("out.webm", video_CTHW, fps=16)   # VP9 (what DALI's CPU decoder reads)
    write_frames("out.mkv", frames_THWC_uint8, fps=8, codec="libx265")
    write_gif("out.gif", video_CTHW, fps=16)      # preview, Pillow
    video_CTHW = read_video("clip.webm", num_frames=16, start=0)
    rgb_HWC_uint8 = rgb_frame(av_frame)           # every PyAV decode's colour conversion

The one place the project encodes video (PyAV); yuv420p needs even sizes, so odd H or W are
padded by repeating the last row/column (a GIF keeps the exact size). Every PyAV decode
(training clips, held-out clips, sampling inputs) converts YUV to RGB through
``rgb_frame``, so a file gives the same pixels wherever it is read.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Optional

import numpy as np
import torch

_CODECS = {".mp4": ("libx264", "mpeg4"), ".webm": ("libvpx-vp9",), ".mkv": ("libx264", "libvpx-vp9"),
           ".mpg": ("mpeg2video",), ".mov": ("libx264", "mpeg4"), ".avi": ("mpeg4",)}


def to_uint8_frames(video_CTHW: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 array [T, H, W, 3]."""
    if video_CTHW.dim() != 4 or video_CTHW.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W], got {tuple(video_CTHW.shape)}")
    x = ((video_CTHW.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def from_uint8_frames(frames_THWC: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [3, T, H, W] float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames_THWC)).float()
    return (x / 127.5 - 1.0).permute(3, 0, 1, 2).contiguous()


def _pick_codec(path: str, codec: Optional[str]) -> str:
    import av

    if codec is not None:
        return codec
    ext = os.path.splitext(path)[1].lower()
    if ext not in _CODECS:
        raise ValueError(f"{path}: unknown video extension (use one of {', '.join(_CODECS)})")
    for name in _CODECS[ext]:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # codec not built into this FFmpeg
            continue
    raise RuntimeError(f"no encoder for {ext} in this PyAV build (tried {_CODECS[ext]})")


def write_frames(path: str, frames_THWC: np.ndarray, fps: float = 16,
                 codec: Optional[str] = None, crf: int = 18, realtime: bool = False) -> str:
    """Encodes uint8 frames [T, H, W, 3]: .mp4 -> H.264 (libx264; mpeg4 if missing),
    .webm -> VP9 (what DALI's CPU decoder reads), .mkv -> H.264, or ``codec`` by name
    (e.g. "libx265", "mpeg2video"). ``realtime``: VP9's fastest preset (test data).
    Odd sizes are padded by repeating the last row/column (yuv420p needs even sizes)."""
    import av

    frames = np.ascontiguousarray(frames_THWC)
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    codec = _pick_codec(path, codec)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "libvpx-vp9"):
            stream.options = {"crf": str(crf)}
            if codec == "libvpx-vp9":
                stream.options["b"] = "0"  # constant quality mode
                if realtime:
                    stream.options.update({"deadline": "realtime", "cpu-used": "8",
                                           "row-mt": "0"})
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_video(path: str, video_CTHW: torch.Tensor, fps: float = 16,
                codec: Optional[str] = None, crf: int = 18) -> str:
    """Writes a [3, T, H, W] video in [-1, 1] (see ``write_frames``); returns path."""
    return write_frames(path, to_uint8_frames(video_CTHW), fps, codec, crf)


def write_gif(path: str, video_CTHW: torch.Tensor, fps: int = 16) -> str:
    """Writes a looping GIF preview of a [3, T, H, W] video in [-1, 1]; returns path."""
    from PIL import Image

    frames = [Image.fromarray(f) for f in to_uint8_frames(video_CTHW)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                   duration=max(1, round(1000 / fps)), optimize=False)
    return path


def rgb_interpolation():
    """swscale's BILINEAR | ACCURATE_RND | FULL_CHR_H_INT: bit-exact with DALI's CPU
    decoder on VP9 (tests/test_data_decode.py); swscale's default flags differ from it by
    up to ~30 levels at chroma edges."""
    from av.video.reformatter import Interpolation
    return Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def rgb_frame(frame) -> np.ndarray:
    """A decoded PyAV video frame -> uint8 [H, W, 3] RGB, with the exact conversion."""
    return frame.to_ndarray(format="rgb24", interpolation=rgb_interpolation())


def read_video(path: str, num_frames: Optional[int] = None, start: int = 0) -> torch.Tensor:
    """Decodes frames [start, start + num_frames) (all when None) -> [3, T, H, W] in [-1, 1],
    pixel for pixel what the training loader decodes from the same file."""
    import av

    frames = []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            frames.append(rgb_frame(frame))
            if num_frames is not None and len(frames) == num_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no frames at or after frame {start}")
    return from_uint8_frames(np.stack(frames))

"""Conditioned tasks from files: what ``python -m moviegen.sample`` runs.

    task         given                                          result (latent frames)
    t2v          the prompt                                     one clip
    i2v          an image, encoded alone, at latent frame 0     one clip
    extend       a video: its last K latent frames start        the video + N (T - K)
                 each of N new clips (Video Diffusion Models)
    interpolate  a video: its latent frames become every n-th   (t - 1) n + 1
                 latent frame (Emu Video's keyframes)
    upsample     a low-resolution video, bilinearly upsampled   the same frames at
                 2x, encoded, given whole (Movie Gen)           twice the size

Every task can be extended further with ``num_extensions``. Pixels enter and leave
through the run's TAE (``encode`` of the input resized to the latent grid, scaled as in
training; ``decode_tiled`` of the result). An image is encoded as a one-frame video.
The solver itself is in ``moviegen.sampling.solver``; the task names and each task's
given frames in training are in ``moviegen.conditioning``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from moviegen.data.manifest import IMAGE_EXTS, VIDEO_EXTS
from moviegen.sampling.solver import Sampler, extend

UPSAMPLE_FACTOR = 2


class InputError(ValueError):
    """An input file that cannot be used; the message names it and what to do."""


def check_input_file(path: str, kind: str) -> None:
    """One-line errors for a missing, misnamed or undecodable --image / --video."""
    exts = IMAGE_EXTS if kind == "image" else VIDEO_EXTS
    if not os.path.isfile(path):
        raise InputError(f"{kind}: '{path}' does not exist")
    if os.path.splitext(path)[1].lower() not in exts:
        raise InputError(f"{kind}: '{path}' is not {'an image' if kind == 'image' else 'a video'}"
                         f" file (use {', '.join(exts)})")
    try:
        if kind == "image":
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
        else:
            from moviegen.data.video_io import read_video

            read_video(path, num_frames=1)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's
        raise InputError(f"{kind}: cannot decode '{path}' ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def read_image(path: str) -> torch.Tensor:
    """[3, 1, H, W] in [-1, 1] (RGB; alpha dropped)."""
    import numpy as np
    from PIL import Image

    from moviegen.data.video_io import from_uint8_frames

    with Image.open(path) as im:
        return from_uint8_frames(np.array(im.convert("RGB"))[None])


def resize_video(video_CTHW: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(video_CTHW.shape[-2:]) == (height, width):
        return video_CTHW
    frames = video_CTHW.transpose(0, 1)  # (T, C, H, W): frames are the batch
    out = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.transpose(0, 1).clamp(-1, 1)


@dataclass
class Request:
    prompts: list[str]
    task: str = "t2v"
    image: Optional[str] = None
    video: Optional[str] = None
    clip_shape_CTHW: tuple = ()
    """Latent shape of one generated clip (C, T, H, W)."""
    num_extensions: int = 0
    context_frames: Optional[int] = None
    """Latent frames each extension starts from (default half a clip)."""
    keyframe_every: int = 2
    seed: int = 0


@dataclass
class Result:
    latents: torch.Tensor
    """[B, C, T, H, W], scaled as the transformer sees them."""
    frames_in: int = 0
    """Pixel frames of the input video or image (0 for t2v)."""
    joins: list = field(default_factory=list)
    """Latent frame where each extension starts."""


def encode(tae, video_CTHW: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[1, C, t, h, w] scaled latents of a video resized to height x width pixels."""
    video = resize_video(video_CTHW, height, width)
    with torch.no_grad():
        return tae.scale_latents(tae.encode_tiled(video[None].float()))


def run_request(sampler: Sampler, tae, req: Request) -> Result:
    """Runs one task (see the module docstring) and the extensions after it."""
    C, T, H, W = req.clip_shape_CTHW
    B = len(req.prompts)
    g = torch.Generator().manual_seed(req.seed)
    cs = tae.spatial_compression if tae is not None else None
    frames_in = 0
    if req.task == "t2v":
        latents = sampler.clip(req.prompts, (C, T, H, W), g)
    elif req.task == "i2v":
        image = read_image(req.image)
        frames_in = 1
        z = encode(tae, image, H * cs, W * cs)
        given = z.new_zeros(B, C, T, H, W)
        given[:, :, :1] = z
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, 0] = True
        # a conditioned model was given the image's own latent, which differs from a
        # video's latent frame 0 under a symmetric-padding TAE, and still generates that
        # frame (moviegen.conditioning.training_condition); replacement has only the image
        latents = sampler.clip(req.prompts, (C, T, H, W), g, given, mask,
                               frames_known=sampler.method != "explicit")
    else:
        from moviegen.data.video_io import read_video

        video = read_video(req.video)
        frames_in = video.shape[1]
        if req.task == "extend":
            latents = encode(tae, video, H * cs, W * cs).expand(B, -1, -1, -1, -1)
        elif req.task == "interpolate":
            z = encode(tae, video, H * cs, W * cs)
            n, t = req.keyframe_every, z.shape[2]
            given = z.new_zeros(B, C, (t - 1) * n + 1, H, W)
            given[:, :, ::n] = z
            mask = torch.zeros(B, given.shape[2], dtype=torch.bool)
            mask[:, ::n] = True
            latents = sampler.clip(req.prompts, given.shape[1:], g, given, mask)
        else:  # upsample: the whole low-resolution video is the conditioning
            h, w = video.shape[-2:]
            up = resize_video(video, h * UPSAMPLE_FACTOR, w * UPSAMPLE_FACTOR)
            z = encode(tae, up, h * UPSAMPLE_FACTOR, w * UPSAMPLE_FACTOR)
            given = z.expand(B, -1, -1, -1, -1)
            mask = torch.ones(B, given.shape[2], dtype=torch.bool)
            latents = sampler.clip(req.prompts, given.shape[1:], g, given, mask,
                                   frames_known=False)
    joins = []
    if req.num_extensions:
        k = req.context_frames or max(1, T // 2)
        latents, joins = extend(
            lambda given, mask, i: sampler.clip(req.prompts, (C, T, H, W), g, given, mask),
            latents, req.num_extensions, T, k)
    return Result(latents, frames_in, joins)


def decode(tae, latents_BCTHW: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] (tiled in time)."""
    with torch.no_grad():
        return tae.decode_tiled(tae.unscale_latents(latents_BCTHW.float().cpu()))

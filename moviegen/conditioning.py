"""Conditioned generation through one input: [noisy latent, conditioning latent, mask].

Emu Video (Girdhar et al., 2023) conditions its video model on an image by concatenating,
along channels, the noisy latent, the image's latent zero-padded over time and a binary
mask of the given frames; its interpolation model uses the same form with the keyframes
zero-interleaved. Movie Gen's spatial upsampler concatenates the encoded, bilinearly
upsampled low-resolution video the same way. So every task here is one rule for which
latent frames are given and what is given in them:

    t2v          nothing given (the conditioning is all zeros)
    i2v          latent frame 0 (VideoCrafter, Emu Video: image-to-video)
    extend       the first k latent frames (Video Diffusion Models: extension)
    interpolate  latent frames 0, n, 2n, ... (Emu Video's interpolation model)
    upsample     every frame, as a 2x-degraded copy (Movie Gen's spatial upsampler)

Training draws each sample's task, its k, its conditioning-noise level and its
degradation from (train.seed, stream, step, global sample index), like t, noise and
caption dropout (``moviegen.flow.per_sample_draws``): the same on any layout.

Shape legend: B batch, C latent channels, T/H/W latent frames/height/width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TASKS = ("t2v", "i2v", "extend", "interpolate", "upsample")
# tasks that give some latent frames exactly and ask for the others
FRAME_TASKS = ("i2v", "extend", "interpolate")


def make_condition(latents_BCTHW: torch.Tensor, given_BT: torch.Tensor) -> torch.Tensor:
    """[B, C + 1, T, H, W]: the latent where a frame is given, zeros elsewhere, and the
    mask channel (1 where given). ``given_BT`` is bool [B, T] (or [T] for the batch)."""
    B, _, T = latents_BCTHW.shape[:3]
    given = given_BT.to(device=latents_BCTHW.device, dtype=torch.bool)
    if given.dim() == 1:
        given = given.expand(B, -1)
    if tuple(given.shape) != (B, T):
        raise ValueError(f"given frames of shape {tuple(given.shape)} do not fit latents "
                         f"{tuple(latents_BCTHW.shape)}: expected [B, T] = [{B}, {T}]")
    mask_B1THW = given[:, None, :, None, None].to(latents_BCTHW.dtype).expand(
        B, 1, T, *latents_BCTHW.shape[3:])
    return torch.cat([latents_BCTHW * mask_B1THW, mask_B1THW], dim=1)


def given_frames(task: str, T: int, extend_frames: int = 1,
                 interpolate_every: int = 2) -> torch.Tensor:
    """bool [T]: the latent frames ``task`` gives on a clip of T latent frames."""
    given = torch.zeros(T, dtype=torch.bool)
    if task == "t2v":
        return given
    if task == "i2v":
        given[0] = True
    elif task == "extend":
        if not 1 <= extend_frames <= T:
            raise ValueError(f"extend gives 1..{T} of {T} latent frames, got {extend_frames}")
        given[:extend_frames] = True
    elif task == "interpolate":
        if interpolate_every < 1:
            raise ValueError(f"interpolate_every must be >= 1, got {interpolate_every}")
        given[::interpolate_every] = True
    elif task == "upsample":
        given[:] = True
    else:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    return given


# --------------------------------------------------------------------------- degradation
def downsample_upsample(latents_BCTHW: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """The low-resolution input of a spatial upsampler, in latent space: average-pool each
    frame by ``factor``, then bilinear back to the full size (Movie Gen upsamples the
    low-resolution video bilinearly before encoding it)."""
    B, C, T, H, W = latents_BCTHW.shape
    if H % factor or W % factor:
        raise ValueError(f"latent frames {H}x{W} do not divide by the upsampling factor "
                         f"{factor}")
    frames = latents_BCTHW.transpose(1, 2).reshape(B * T, C, H, W)
    low = F.avg_pool2d(frames.float(), factor)
    up = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    return up.to(latents_BCTHW.dtype).reshape(B, T, C, H, W).transpose(1, 2)


def gaussian_blur(x_CTHW: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable spatial Gaussian blur of one sample (sigma in latent pixels; 0: none)."""
    if sigma <= 0:
        return x_CTHW
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x_CTHW)
    C, T, H, W = x_CTHW.shape
    frames = x_CTHW.transpose(0, 1).reshape(T * C, 1, H, W)
    frames = F.conv2d(F.pad(frames, (radius, radius, 0, 0), mode="replicate"),
                      kernel.view(1, 1, 1, -1))
    frames = F.conv2d(F.pad(frames, (0, 0, radius, radius), mode="replicate"),
                      kernel.view(1, 1, -1, 1))
    return frames.reshape(T, C, H, W).transpose(0, 1)


def noise_augment(latents: torch.Tensor, level: float, noise: torch.Tensor) -> torch.Tensor:
    """(1 - level) latent + level noise: the flow path at t = 1 - level, so a sampler can
    hand its given frames over at a known noise level the same way (level 0: clean)."""
    return (1 - level) * latents + level * noise


# --------------------------------------------------------------------------- training draws
@dataclass
class TaskDraw:
    """One sample's task: its name, the latent frames given, the conditioning-noise level
    and (upsample only) the blur sigma of the degradation."""

    task: str
    given_T: torch.Tensor
    noise_level: float
    blur_sigma: float = 0.0


def draw_task(seed: int, T: int, train_cfg) -> TaskDraw:
    """Sample ``seed``'s task from ``train_cfg.tasks`` (probabilities), from a generator
    seeded by ``seed`` alone. A clip of one latent frame (an image) has nothing to
    generate from given frames, so frame tasks fall back to t2v there."""
    tasks = normalized_tasks(train_cfg.tasks)
    g = torch.Generator().manual_seed(seed)
    names = list(tasks)
    probs = torch.tensor([tasks[n] for n in names], dtype=torch.float64)
    task = names[int(torch.multinomial(probs, 1, generator=g))]
    u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
    if task in FRAME_TASKS and T < 2:
        task = "t2v"
    k = train_cfg.extend_frames or 1 + int(u[0] * (T - 1))  # 0: k uniform in 1..T-1
    given = given_frames(task, T, extend_frames=min(k, T), interpolate_every=
                         train_cfg.interpolate_every)
    level = 0.0 if task == "t2v" else u[1] * train_cfg.cond_noise_max
    blur = u[2] * train_cfg.upsample_blur_max if task == "upsample" else 0.0
    return TaskDraw(task, given, level, blur)


def normalized_tasks(tasks: dict[str, float]) -> dict[str, float]:
    """train.tasks as probabilities (an empty dict is text-to-video only)."""
    if not tasks:
        return {"t2v": 1.0}
    total = sum(tasks.values())
    return {k: v / total for k, v in tasks.items() if v > 0}


def uses_conditioning(tasks: dict[str, float]) -> bool:
    return any(p > 0 for k, p in normalized_tasks(tasks).items() if k != "t2v")


def image_latents(pixels_BCTHW: torch.Tensor, encode) -> torch.Tensor:
    """[B, C, 1, H, W]: each clip's first pixel frame encoded on its own (an image is a
    one-frame video to the TAE): what image-to-video is given at sampling time."""
    with torch.no_grad():
        return encode(pixels_BCTHW[:, :, :1])


def low_resolution_latents(x1_BCTHW, draws: list[TaskDraw], pixels_BCTHW=None,
                           encode=None, pixels_per_latent: int = 1) -> torch.Tensor:
    """The upsample samples' conditioning latents (other samples keep x1).

    With the training pixels and their encoder (data.kind=video), Movie Gen's way: each
    frame downsampled 2x, bilinearly upsampled back, blurred, then encoded. Without pixels
    (precomputed or synthetic latents, no encoder in the loop) the same degradation in
    latent space: 2x average pooling, bilinear back, blur."""
    out = x1_BCTHW.clone()
    idx = [b for b, d in enumerate(draws) if d.task == "upsample"]
    if not idx:
        return out
    if pixels_BCTHW is not None:
        low = downsample_upsample(pixels_BCTHW[idx])
        low = torch.stack([gaussian_blur(low[i], draws[b].blur_sigma * pixels_per_latent)
                           for i, b in enumerate(idx)])
        with torch.no_grad():
            out[idx] = encode(low).to(out.dtype)
        return out
    low = downsample_upsample(x1_BCTHW[idx])
    out[idx] = torch.stack([gaussian_blur(low[i], draws[b].blur_sigma)
                            for i, b in enumerate(idx)])
    return out


def training_condition(x1_BCTHW: torch.Tensor, seeds: list[int], train_cfg,
                       pixels_BCTHW=None, encode=None, pixels_per_latent: int = 1,
                       image_latents_BC1HW=None):
    """(cond [B, C + 1, T, H, W], loss mask [B, T] bool, task names) for clean latents x1.

    Each sample's task, degradation and augmentation noise come from its seed alone. The
    loss mask covers the frames the model must generate: every frame except the given
    ones of frame tasks (unless train.loss_on_given_frames); upsample generates all.
    ``pixels_BCTHW`` and ``encode`` (the frozen pixel encoder) make the upsample input
    from pixels; see ``low_resolution_latents``.

    i2v with ``image_latents_BC1HW`` (the first pixel frame encoded on its own, as an
    image): that latent is what is given, as it will be at sampling time from a still
    image. Our TAE pads symmetrically in time, so a video's latent frame 0 summarises
    several pixel frames and differs from it: latent frame 0 must then still be generated
    and stays in the loss. Without image latents (synthetic latents) the video's own latent
    frame 0 is given and left out of the loss, like extend's frames."""
    B, C, T = x1_BCTHW.shape[:3]
    draws = [draw_task(s, T, train_cfg) for s in seeds]
    given = torch.stack([d.given_T for d in draws]).to(x1_BCTHW.device)
    latents = low_resolution_latents(x1_BCTHW, draws, pixels_BCTHW, encode,
                                     pixels_per_latent)
    from_image = torch.zeros(B, dtype=torch.bool, device=x1_BCTHW.device)
    if image_latents_BC1HW is not None:
        for b, d in enumerate(draws):
            if d.task == "i2v":
                latents[b, :, 0] = image_latents_BC1HW[b, :, 0].to(latents)
                from_image[b] = True
    noise = torch.empty(x1_BCTHW.shape)
    for b, seed in enumerate(seeds):  # its own stream, so t and x0 stay as without tasks
        noise[b] = torch.randn(x1_BCTHW.shape[1:], generator=torch.Generator().manual_seed(
            seed ^ 0x5EED_C0DE))
    level = torch.tensor([d.noise_level for d in draws], dtype=x1_BCTHW.dtype,
                         device=x1_BCTHW.device).view(B, 1, 1, 1, 1)
    latents = noise_augment(latents, level, noise.to(x1_BCTHW))
    cond = make_condition(latents, given)
    loss_on_given = getattr(train_cfg, "loss_on_given_frames", False)
    frame_task = torch.tensor([d.task in FRAME_TASKS for d in draws],
                              device=x1_BCTHW.device)[:, None]
    exact = given & frame_task & ~from_image[:, None]  # given frames equal to x1's
    loss_mask = ~exact if not loss_on_given else torch.ones_like(given)
    return cond, loss_mask, [d.task for d in draws]


# --------------------------------------------------------------------------- config rules
def check_tasks(cfg, grids) -> None:
    """train.tasks against the model and the data shapes (``JobConfig.validate``, before
    any process group): conditioning channels present, even latent frames for a 2x
    upsampler, extend leaving frames to generate."""
    from moviegen.config.core import check

    tasks = normalized_tasks(cfg.train.tasks)
    if uses_conditioning(cfg.train.tasks):
        check(cfg.model.cond_channels == cfg.model.in_channels + 1, "model.cond_channels",
              f"train.tasks {sorted(tasks)} give the model conditioning frames, but "
              f"model.cond_channels is {cfg.model.cond_channels}: set it to "
              f"model.in_channels + 1 = {cfg.model.in_channels + 1}")
    for name, T, H, W in grids:
        if "upsample" in tasks:
            check(H % 2 == 0 and W % 2 == 0, "train.tasks.upsample",
                  f"data '{name}' gives {H}x{W} latent frames, which a 2x spatial upsampler "
                  f"cannot halve (use even latent heights and widths)")
        if "extend" in tasks and cfg.train.extend_frames and T > 1:
            check(cfg.train.extend_frames < T, "train.extend_frames",
                  f"{cfg.train.extend_frames} given latent frames leave none to generate "
                  f"in data '{name}' ({T} latent frames)")

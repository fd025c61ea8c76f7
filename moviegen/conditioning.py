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


def training_condition(x1_BCTHW: torch.Tensor, seeds: list[int], train_cfg):
    """(cond [B, C + 1, T, H, W], loss mask [B, T] bool, task names) for clean latents x1.

    Each sample's task, degradation and augmentation noise come from its seed alone. The
    loss mask covers the frames the model must generate: every frame except the given
    ones of frame tasks (unless train.loss_on_given_frames); upsample generates all."""
    B, C, T = x1_BCTHW.shape[:3]
    draws = [draw_task(s, T, train_cfg) for s in seeds]
    given = torch.stack([d.given_T for d in draws]).to(x1_BCTHW.device)
    latents = x1_BCTHW
    if any(d.task == "upsample" for d in draws):
        low = downsample_upsample(x1_BCTHW)
        is_up = [d.task == "upsample" for d in draws]
        latents = torch.stack([gaussian_blur(low[b], draws[b].blur_sigma) if is_up[b]
                               else x1_BCTHW[b] for b in range(B)])
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
    loss_mask = ~(given & frame_task) if not loss_on_given else torch.ones_like(given)
    return cond, loss_mask, [d.task for d in draws]

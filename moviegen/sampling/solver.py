"""Flow-matching samplers on latents: text-to-video, clips that agree with given latent
frames, videos longer than the position tables, and autoregressive extension.

Shape legend: B batch, C latent channels, T latent frames, H x W latent grid; mask_BT is
True where a latent frame is given.

A velocity function is ``velocity(x_BCTHW, t_B, cond_BCTHW=None)`` (classifier-free
guidance included, ``text_velocity``). Three ways to make a clip agree with given frames:

  explicit      a model trained with conditioning channels (``model.cond_channels``; Emu
                Video's image-to-video, Movie Gen's spatial upsampler) sees [given latents,
                zero elsewhere; mask] beside the noisy latent (``cond_BCTHW``); given
                frames of the clip itself also stay on their flow path, as in training.
  replacement   a model that never saw conditioning: before every Euler step the given
                frames of x_t are overwritten with the given latents taken along the same
                path with the same noise, x_t = t x1 + (1 - (1 - s) t) x0 (the baseline of
                Video Diffusion Models, Ho et al. 2022, sec. 3.1).
  reconstruction guidance
                replacement, plus for the frames to generate a gradient step on the model's
                own reconstruction of the given frames (Video Diffusion Models, eq. 7):
                    x1_b <- x1_b - (w t / 2) d/dx_b ||x1_given - x1_a(x_t)||^2
                where x1(x_t) = (1 - s) x_t + (1 - (1 - s) t) v is the velocity's
                x-prediction and t plays the part of alpha_t. w = 0 is replacement.

Sliding window (Movie Gen's spatial upsampler at inference: windows of 14 latent frames
overlapping by 4): a clip longer than the position tables is denoised window by window at
every Euler step and the windows' velocities are blended with linear ramps across each
overlap (the weights of every frame sum to one). One window covering the clip is plain
sampling.

Extension (Video Diffusion Models, sec. 3.1): each new clip of T latent frames is
conditioned on the last K latent frames of the video so far, so N extensions add
N (T - K) latent frames.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from moviegen.flow import euler_sample, linear_quadratic_schedule

METHODS = ("explicit", "replacement", "reconstruction_guidance")

Velocity = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- text
def text_velocity(model, encoders, prompts: list[str], fps: float, scale: float) -> Velocity:
    """Classifier-free guided velocity for the prompts (FPS prefix added as in training),
    one batched model call per evaluation: v_u + scale (v_c - v_u). ``cond_BCTHW`` (when
    given) goes to both halves: guidance is on the text only."""
    from moviegen.models.text_encoders import null_text
    from moviegen.models.tokenizer import fps_prefix

    embeds, masks = encoders.encode([fps_prefix(p, fps) for p in prompts])
    masks_u = null_text(masks)
    embeds2 = {k: torch.cat([v, v]) for k, v in embeds.items()}
    masks2 = {k: torch.cat([masks[k], masks_u[k]]) for k in masks}

    def velocity(x, t_B, cond_BCTHW=None):
        extra = {} if cond_BCTHW is None else {"cond_BCTHW": torch.cat([cond_BCTHW] * 2)}
        v = model(torch.cat([x, x]), torch.cat([t_B, t_B]), embeds2, masks2, **extra)
        v_c, v_u = v.chunk(2)
        return v_u + scale * (v_c - v_u)

    return velocity


# --------------------------------------------------------------------------- windows
def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frame of each window: stride window - overlap, the last one flush with the
    end (so the last overlap may be wider)."""
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap ({overlap}) < window ({window})")
    if num_frames <= window:
        return [0]
    stride = window - overlap
    return list(range(0, num_frames - window, stride)) + [num_frames - window]


def window_weights(num_frames: int, window: int, overlap: int) -> torch.Tensor:
    """[n_windows, num_frames] blend weights: 1 inside a window, a linear ramp across each
    overlap with a neighbour (from 1/(2L) up to 1 - 1/(2L) over L frames), 0 outside;
    normalised so each frame's weights sum to one."""
    starts = window_starts(num_frames, window, overlap)
    w = torch.zeros(len(starts), num_frames, dtype=torch.float64)
    for i, s in enumerate(starts):
        e = min(s + window, num_frames)
        ramp = torch.ones(e - s, dtype=torch.float64)
        n = starts[i - 1] + window - s if i > 0 else 0
        if n > 0:  # up across the overlap with the previous window
            ramp[:n] = torch.minimum(ramp[:n], (torch.arange(n) + 0.5) / n)
        n = e - starts[i + 1] if i < len(starts) - 1 else 0
        if n > 0:  # down across the overlap with the next window
            ramp[-n:] = torch.minimum(ramp[-n:], 1 - (torch.arange(n) + 0.5) / n)
        w[i, s:e] = ramp
    return (w / w.sum(0, keepdim=True)).float()


def sliding_window(velocity: Velocity, window: int, overlap: int) -> Velocity:
    """``velocity`` evaluated on windows of ``window`` latent frames and blended (see
    ``window_weights``); the conditioning is cut into the same windows."""

    def blended(x, t_B, cond_BCTHW=None):
        T = x.shape[2]
        if T <= window:
            return velocity(x, t_B, cond_BCTHW)
        weights = window_weights(T, window, overlap).to(x.device, x.dtype)
        out = torch.zeros_like(x)
        for s, w_T in zip(window_starts(T, window, overlap), weights):
            c = None if cond_BCTHW is None else cond_BCTHW[:, :, s:s + window]
            v = velocity(x[:, :, s:s + window], t_B, c)
            out[:, :, s:s + window] += v * w_T[s:s + window].view(1, 1, -1, 1, 1)
        return out

    return blended


# --------------------------------------------------------------------------- given frames
def x1_prediction(x, v, t_B, sigma_min: float):
    """The data the velocity points at: x1 = (1 - s) x_t + (1 - (1 - s) t) v."""
    a = 1 - sigma_min
    t = t_B.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return a * x + (1 - a * t) * v


def _frames(mask_BT: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask_BT.to(like.device).view(mask_BT.shape[0], 1, -1, 1, 1)


def denoise(velocity: Velocity, x0: torch.Tensor, schedule: torch.Tensor,
            given: Optional[torch.Tensor] = None, mask_BT: Optional[torch.Tensor] = None,
            method: str = "explicit", weight: float = 0.0, sigma_min: float = 1e-5,
            make_condition: Optional[Callable] = None, frames_known: bool = True
            ) -> torch.Tensor:
    """Euler solve from the noise ``x0`` with the latent frames ``mask_BT`` of ``given``
    known (see the module docstring for ``method``). ``make_condition(given, mask_BT)``
    builds the conditioning channels for "explicit".

    ``frames_known``: the given latents are the clip's own frames (extension,
    interpolation), so every method keeps them on their flow path during the solve (where
    a conditioned model saw them in training: its loss leaves them out) and returns them
    exactly. False: they are the conditioning only and every frame is generated (spatial
    upsampling; image-to-video with a conditioned model, given the image's own latent)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if given is None:
        return euler_sample(lambda x, t: velocity(x, t), x0, schedule)
    cond = make_condition(given, mask_BT) if method == "explicit" else None
    if not frames_known:
        if method != "explicit":
            raise ValueError(f"{method} needs given frames of the clip itself")
        return euler_sample(lambda x, t: velocity(x, t, cond), x0, schedule)
    m = _frames(mask_BT, x0)
    x = _replacement_solve(velocity, x0, schedule, given, m, cond,
                           weight if method == "reconstruction_guidance" else 0.0, sigma_min)
    return torch.where(m, given.to(x.dtype), x)


def _replacement_solve(velocity, x0, schedule, given, m, cond, weight, sigma_min):
    from moviegen.flow import interpolate

    x, a = x0, 1 - sigma_min
    for t_cur, t_next in zip(schedule[:-1].tolist(), schedule[1:].tolist()):
        t_B = torch.full((x.shape[0],), t_cur, device=x.device, dtype=torch.float32)
        # the given frames where the path through them would be at time t, same noise
        x = torch.where(m, interpolate(x0, given, t_B, sigma_min).to(x.dtype), x)
        if weight == 0:
            with torch.no_grad():
                v = velocity(x, t_B, cond)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                v = velocity(xg, t_B, cond)
                err = ((x1_prediction(xg, v, t_B, sigma_min) - given) * m).pow(2).sum()
                (g,) = torch.autograd.grad(err, xg)
            # x1_b moves by -(w t / 2) g; v = (x1 - a x) / (1 - a t) moves by that / (1 - a t)
            v = v.detach() - (weight * t_cur / 2) * g * (~m) / (1 - a * t_cur)
        x = x + (t_next - t_cur) * v.to(x.dtype)
    return x


# --------------------------------------------------------------------------- extension
def extend(sample_clip: Callable, latents_BCTHW: torch.Tensor, num_extensions: int,
           clip_frames: int, context_frames: int) -> tuple[torch.Tensor, list[int]]:
    """Appends ``num_extensions`` clips, each of ``clip_frames`` latent frames whose first
    ``context_frames`` are the last ones so far: ``sample_clip(given, mask_BT, index)``
    returns the clip. Returns (latents, the latent frame where each extension starts)."""
    if not 0 < context_frames < clip_frames:
        raise ValueError(f"context_frames ({context_frames}) must be in [1, clip_frames "
                         f"({clip_frames}))")
    if latents_BCTHW.shape[2] < context_frames:
        raise ValueError(f"the video has {latents_BCTHW.shape[2]} latent frames, fewer than "
                         f"the {context_frames} to extend from")
    B, C, _, H, W = latents_BCTHW.shape
    joins = []
    for i in range(num_extensions):
        given = latents_BCTHW.new_zeros(B, C, clip_frames, H, W)
        given[:, :, :context_frames] = latents_BCTHW[:, :, -context_frames:]
        mask = torch.zeros(B, clip_frames, dtype=torch.bool)
        mask[:, :context_frames] = True
        clip = sample_clip(given, mask, i)
        joins.append(latents_BCTHW.shape[2])
        latents_BCTHW = torch.cat([latents_BCTHW, clip[:, :, context_frames:]], dim=2)
    return latents_BCTHW, joins


# --------------------------------------------------------------------------- one call
class Sampler:
    """A model, its text encoders and run config with the sampling settings: makes
    clips for prompts, optionally agreeing with given frames, windowed when longer than
    the position tables."""

    def __init__(self, model, encoders, cfg, steps: int | None = None,
                 guidance: float | None = None, method: str = "explicit", weight: float = 0.0,
                 window: int | None = None, overlap: int | None = None, device="cpu",
                 progress: bool = False):
        self.model, self.encoders, self.cfg = model, encoders, cfg
        self.scale = cfg.flow.guidance_scale if guidance is None else guidance
        self.schedule = linear_quadratic_schedule(steps or cfg.flow.sample_steps,
                                                  cfg.flow.linear_steps_as_if)
        self.method, self.weight, self.device, self.progress = method, weight, device, progress
        self.window = window or max_clip_frames(model)
        self.overlap = default_overlap(self.window) if overlap is None else overlap
        window_starts(self.window + 1, self.window, self.overlap)  # checks the pair

    def clip(self, prompts: list[str], shape_CTHW, generator: torch.Generator,
             given=None, mask_BT=None, frames_known: bool = True) -> torch.Tensor:
        """Latents [B, *shape_CTHW] for the prompts (B = len(prompts)), agreeing with
        the latent frames ``mask_BT`` of ``given`` when given (see ``denoise``)."""
        velocity = sliding_window(text_velocity(self.model, self.encoders, prompts,
                                                self.cfg.data.fps, self.scale),
                                  self.window, self.overlap)
        x0 = torch.randn((len(prompts), *shape_CTHW), generator=generator).to(self.device)
        make_condition = None
        if given is not None:
            given, mask_BT = given.to(self.device, x0.dtype), mask_BT.to(self.device)
            if self.method == "explicit":
                from moviegen.conditioning import make_condition
        from moviegen.training.metrics import ProgressBar

        bar = ProgressBar(len(self.schedule) - 1, 0, self.progress, desc="sample")

        def counted(x, t_B, cond_BCTHW=None):
            bar.update(1)
            return velocity(x, t_B, cond_BCTHW)

        try:
            return denoise(counted, x0, self.schedule, given, mask_BT, self.method,
                           self.weight, self.cfg.flow.sigma_min, make_condition, frames_known)
        finally:
            bar.close()


def max_clip_frames(model) -> int:
    """Latent frames the model's temporal position table covers."""
    return model.args.max_t * model.args.patch_size[0]


def default_overlap(window: int) -> int:
    """Movie Gen's 4 of 14, scaled to the window (at least 1 frame)."""
    return min(window - 1, max(1, round(window * 4 / 14)))


@torch.no_grad()
def sample_latents(model, encoders, cfg, prompts: list[str], latent_shape_CTHW, seed: int = 0,
             steps: int | None = None, guidance: float | None = None, device="cpu",
             progress: bool = False):
    """Text-to-video latents [B, C, T, H, W] for the prompts; windowed when T is longer
    than the position tables."""
    sampler = Sampler(model, encoders, cfg, steps, guidance, device=device, progress=progress)
    return sampler.clip(prompts, latent_shape_CTHW, torch.Generator().manual_seed(seed))

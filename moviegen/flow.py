"""Flow matching (Movie Gen): the path, its velocity target, the loss, the Euler sampler.

Path      X_t = t X1 + (1 - (1 - s) t) X0,  s = sigma_min, X0 ~ N(0, I), X1 = data
Target    V = dX_t/dt = X1 - (1 - s) X0
Time      t ~ logit-normal: sigmoid(N(0, 1))
Sampling  Euler from t=0 (noise) to t=1 on the linear-quadratic schedule (classifier-free
          guidance v = v_u + w (v_c - v_u) is moviegen.sampling.solver.text_velocity).
"""
from __future__ import annotations

from typing import Callable

import torch


def sample_t(batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal flow times in (0, 1): sigmoid of a standard normal, shape [B]."""
    return torch.sigmoid(torch.randn(batch, device=device, generator=generator))


def sample_seed(*parts) -> int:
    """A 63-bit seed from any parts (run seed, stream, step, sample index): the key of
    one sample's randomness, independent of which rank draws it."""
    import hashlib

    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def per_sample_draws(shape_BCTHW, seeds: list[int], drop_prob: float = 0.0):
    """(t [B], x0 ~ N(0, I) of ``shape``, keep_text [B] bool) with sample b's numbers drawn
    from a CPU generator seeded by ``seeds[b]`` alone: a sample gets the same t, noise and
    caption dropout whichever rank holds it and whatever the batch around it."""
    B = shape_BCTHW[0]
    t, x0 = torch.empty(B), torch.empty(shape_BCTHW)
    keep = torch.ones(B, dtype=torch.bool)
    for b, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        t[b] = sample_t(1, generator=g)[0]
        x0[b] = torch.randn(shape_BCTHW[1:], generator=g)
        keep[b] = drop_prob <= 0 or bool(torch.rand((), generator=g) >= drop_prob)
    return t, x0, keep


def _bcast(t_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t_B.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t_B: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """X_t on the path between noise x0 (t=0) and data x1 (t=1)."""
    t = _bcast(t_B, x1)
    return t * x1 + (1 - (1 - sigma_min) * t) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """d X_t / dt, constant along the path."""
    return x1 - (1 - sigma_min) * x0


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor,
                       token_mask: torch.Tensor | None = None):
    """Sum of squared errors and the number of real elements they cover.

    Returns (sum_sq, count) rather than a mean so a caller that holds only a shard of
    the tokens (context parallel) can divide by the global count. ``token_mask``
    broadcasts against ``pred`` (True = real, unpadded); None = every element is real.
    """
    err = (pred.float() - target.float()).pow(2)
    if token_mask is None:
        return err.sum(), torch.tensor(float(err.numel()), device=err.device)
    mask = token_mask.to(err.dtype).expand_as(err)
    return (err * mask).sum(), mask.sum()


def linear_quadratic_schedule(num_steps: int = 50, linear_steps_as_if: int = 1000,
                              num_linear: int | None = None) -> torch.Tensor:
    """Times t_0 = 0 < t_1 < ... < t_num_steps = 1 for the Euler solve.

    The first half of the steps follow a linear schedule as if the solve had
    ``linear_steps_as_if`` steps (t_i = i / 1000); the rest are spaced quadratically from
    there up to 1 (Movie Gen: 50 steps, 25 + 25). Quadratic spacing makes the step sizes
    grow linearly, so the late, low-noise part of the path takes the big steps.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    n_lin = num_steps // 2 if num_linear is None else num_linear
    if not 0 < n_lin < num_steps:
        raise ValueError(f"num_linear must be in (0, {num_steps}), got {n_lin}")
    if n_lin >= linear_steps_as_if:
        raise ValueError("linear_steps_as_if must exceed the number of linear steps")
    t_lin = torch.arange(n_lin + 1, dtype=torch.float64) / linear_steps_as_if
    t_end = t_lin[-1]
    n_quad = num_steps - n_lin
    j = torch.arange(1, n_quad + 1, dtype=torch.float64) / n_quad
    t_quad = t_end + (1 - t_end) * j.pow(2)
    return torch.cat([t_lin, t_quad]).float()


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def euler_sample(velocity_fn: VelocityFn, x0: torch.Tensor, schedule: torch.Tensor) -> torch.Tensor:
    """First-order ODE solve dx/dt = v(x, t) from schedule[0] to schedule[-1]."""
    x = x0
    for t_cur, t_next in zip(schedule[:-1].tolist(), schedule[1:].tolist()):
        t_B = torch.full((x.shape[0],), t_cur, device=x.device, dtype=torch.float32)
        x = x + (t_next - t_cur) * velocity_fn(x, t_B).to(x.dtype)
    return x

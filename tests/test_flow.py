import math

import torch

from moviegen.flow import (euler_sample, flow_matching_loss, interpolate, linear_quadratic_schedule,
                           sample_t, target_velocity)

S = 1e-5


def test_path_endpoints():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    x1 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(interpolate(x0, x1, torch.zeros(3), S), x0)
    # at t=1 only sigma_min of the noise is left
    assert torch.allclose(interpolate(x0, x1, torch.ones(3), S), x1 + S * x0)


def test_target_is_the_time_derivative():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.randn(2, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    h = 1e-6
    fd = (interpolate(x0, x1, t + h, S) - interpolate(x0, x1, t - h, S)) / (2 * h)
    assert torch.allclose(fd, target_velocity(x0, x1, S), atol=1e-8)


def test_logit_normal_t():
    t = sample_t(200_000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1) < 0.01


def test_schedule_shape_and_monotonic():
    s = linear_quadratic_schedule(50, 1000)
    assert s.shape == (51,)
    assert s[0] == 0 and abs(s[-1].item() - 1) < 1e-6
    d = s[1:] - s[:-1]
    assert (d > 0).all()
    # first 25 steps: exactly 1/1000 each (linear as if 1000 steps)
    assert torch.allclose(d[:25], torch.full((25,), 1e-3), atol=1e-6)
    assert abs(s[25].item() - 0.025) < 1e-6
    # quadratic part: step sizes grow linearly
    dd = d[25:]
    assert (dd[1:] > dd[:-1]).all()
    assert torch.allclose(dd[1:] - dd[:-1], (dd[1:] - dd[:-1]).mean().expand(24), atol=1e-5)


def test_euler_on_linear_field_is_analytic():
    # dx/dt = a x + b has x(1) = e^{a} x0 + b (e^{a} - 1) / a; Euler converges to it,
    # and a constant field is solved exactly on any schedule.
    x0 = torch.randn(4, 3, dtype=torch.float64)
    sched = linear_quadratic_schedule(50).double()
    const = euler_sample(lambda x, t: torch.full_like(x, 2.0), x0, sched)
    assert torch.allclose(const, x0 + 2.0, atol=1e-6)
    a, b = -0.7, 0.3
    fine = torch.linspace(0, 1, 20001, dtype=torch.float64)
    x1 = euler_sample(lambda x, t: a * x + b, x0, fine)
    exact = math.exp(a) * x0 + b * (math.exp(a) - 1) / a
    assert torch.allclose(x1, exact, atol=1e-4)
    # the flow-matching optimum for a point mass at c is v = (c - x) / (1 - t) (sigma_min=0):
    c = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    xs = euler_sample(lambda x, t: (c - x) / (1 - t[:, None].double()).clamp(min=1e-9), x0,
                      linear_quadratic_schedule(50).double())
    assert torch.allclose(xs, c.expand_as(xs), atol=1e-6)


def test_loss_counts_only_real_tokens():
    pred = torch.zeros(2, 1, 3)
    target = torch.ones(2, 1, 3)
    target[1] = 3.0
    mask = torch.tensor([True, False]).view(2, 1, 1)
    s, n = flow_matching_loss(pred, target, mask)
    assert n.item() == 3 and s.item() == 3.0
    s, n = flow_matching_loss(pred, target)
    assert n.item() == 6 and s.item() == 3 + 27


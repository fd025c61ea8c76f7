"""The solver of moviegen.sampling.solver against plain references: sliding-window blending,
replacement, reconstruction guidance, extension."""
import pytest
import torch

from moviegen.flow import interpolate, linear_quadratic_schedule, target_velocity
from moviegen.sampling.solver import (denoise, extend, sliding_window, text_velocity,
                                      window_starts, window_weights, x1_prediction)

SIGMA = 1e-5


@pytest.mark.parametrize("T,window,overlap", [(4, 4, 1), (10, 4, 1), (10, 4, 2), (30, 14, 4),
                                              (7, 3, 0), (9, 5, 4)])
def test_window_weights_cover_every_frame_and_sum_to_one(T, window, overlap):
    starts = window_starts(T, window, overlap)
    w = window_weights(T, window, overlap)
    assert starts[0] == 0 and starts[-1] + window == max(T, window)
    assert w.shape == (len(starts), T)
    torch.testing.assert_close(w.sum(0), torch.ones(T))
    for s, row in zip(starts, w):  # nothing outside its window, something inside
        assert (row[:s] == 0).all() and (row[s + window:] == 0).all()
        assert (row[s:s + window] > 0).all()


def test_window_weights_ramp_linearly_across_an_overlap():
    # two windows of 4 over 6 frames share frames 2 and 3
    w = window_weights(6, 4, 2)
    torch.testing.assert_close(w[0], torch.tensor([1, 1, 0.75, 0.25, 0, 0]))
    torch.testing.assert_close(w[1], torch.tensor([0, 0, 0.25, 0.75, 1, 1]))
    assert window_starts(14 + 10 * 3, 14, 4) == [0, 10, 20, 30]  # Movie Gen's 14 / 4


class _RecordingEncoders:
    """Text encoders' interface: every prompt gets its length in tokens, two slots."""

    def __init__(self):
        self.seen = []

    def encode(self, prompts):
        self.seen += prompts
        n = torch.tensor([len(p.split()) for p in prompts])
        masks = {s: torch.arange(8)[None] < n[:, None] for s in ("a", "b")}
        return {s: torch.zeros(len(prompts), 8, 4) for s in ("a", "b")}, masks


def test_text_velocity_is_classifier_free_guidance_in_one_batched_call():
    """v_u + w (v_c - v_u): the conditional half sees the prompt (FPS prefix added, as in
    training), the unconditional half no text token in any slot, both the same x, t and
    conditioning channels; one model call per evaluation."""
    calls = []

    def model(x, t_B, embeds, masks, cond_BCTHW=None):
        calls.append((x.shape[0], t_B.tolist(), None if cond_BCTHW is None else cond_BCTHW))
        tokens = (masks["a"].sum(-1) + masks["b"].sum(-1)).float()
        extra = 0 if cond_BCTHW is None else cond_BCTHW.sum((1, 2, 3, 4))
        return x * 0 + (tokens + extra).view(-1, 1, 1, 1, 1) + 1  # v_u = 1 + extra

    encoders = _RecordingEncoders()
    velocity = text_velocity(model, encoders, ["a red circle", "blue"], fps=16, scale=7.5)
    assert encoders.seen == ["FPS-16 a red circle", "FPS-16 blue"]
    x, cond = torch.zeros(2, 1, 1, 1, 1), torch.tensor([1.0, 2.0]).view(2, 1, 1, 1, 1)
    v = velocity(x, torch.tensor([0.25, 0.5]), cond)
    assert len(calls) == 1 and calls[0][0] == 4 and calls[0][1] == [0.25, 0.5, 0.25, 0.5]
    assert torch.equal(calls[0][2].flatten(), torch.tensor([1.0, 2.0, 1.0, 2.0]))
    # tokens per slot: 4 and 2 ("FPS-16" is one), two slots: v_c - v_u = 8 and 4
    torch.testing.assert_close(v.flatten(), torch.tensor([1 + 1 + 7.5 * 8, 1 + 2 + 7.5 * 4]))


def _mixing_velocity(seed=0, C=2):
    """A velocity that mixes frames (like attention) and depends on t and the conditioning."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=g) * 0.3

    def v(x, t_B, cond_BCTHW=None):
        out = torch.einsum("dc,bcthw->bdthw", mix, x) + x.mean(2, keepdim=True)
        out = out * (1 + t_B.view(-1, 1, 1, 1, 1))
        if cond_BCTHW is not None:
            out = out + cond_BCTHW[:, :C]
        return out

    return v


def test_one_window_is_plain_sampling():
    v = _mixing_velocity()
    x0 = torch.randn(2, 2, 5, 3, 3)
    sched = linear_quadratic_schedule(8, 100)
    plain = denoise(v, x0, sched)
    assert torch.equal(denoise(sliding_window(v, 5, 2), x0, sched), plain)
    assert torch.equal(denoise(sliding_window(v, 9, 3), x0, sched), plain)


def test_windows_of_a_framewise_velocity_equal_the_whole_clip():
    """A velocity that acts on each frame alone gives every window the same numbers on
    the frames they share, so any blend with weights summing to one reproduces it."""
    def framewise(x, t_B, cond_BCTHW=None):
        return torch.sin(x) * t_B.view(-1, 1, 1, 1, 1) + (0 if cond_BCTHW is None else
                                                          cond_BCTHW)

    x = torch.randn(2, 3, 11, 2, 2)
    cond = torch.randn_like(x)
    t = torch.tensor([0.3, 0.7])
    for window, overlap in ((4, 1), (4, 3), (5, 2)):
        got = sliding_window(framewise, window, overlap)(x, t, cond)
        torch.testing.assert_close(got, framewise(x, t, cond))


def test_windows_blend_each_windows_velocity_by_its_weight():
    v = _mixing_velocity(1)
    x, t = torch.randn(1, 2, 10, 2, 2), torch.tensor([0.4])
    got = sliding_window(v, 4, 2)(x, t)
    ref = torch.zeros_like(x)
    for s, w in zip(window_starts(10, 4, 2), window_weights(10, 4, 2)):
        ref[:, :, s:s + 4] += v(x[:, :, s:s + 4], t) * w[s:s + 4].view(1, 1, -1, 1, 1)
    torch.testing.assert_close(got, ref)


def test_x1_prediction_inverts_the_path():
    x0, x1 = torch.randn(3, 2, 4, 2, 2), torch.randn(3, 2, 4, 2, 2)
    t = torch.tensor([0.0, 0.5, 0.97])
    xt = interpolate(x0, x1, t, SIGMA)
    torch.testing.assert_close(x1_prediction(xt, target_velocity(x0, x1, SIGMA), t, SIGMA), x1)


def _given(T=6, k=2, shape=(1, 2, 6, 3, 3)):
    given = torch.randn(shape)
    mask = torch.zeros(shape[0], T, dtype=torch.bool)
    mask[:, :k] = True
    return given, mask


def test_replacement_keeps_the_given_frames_on_their_path():
    """Every evaluation sees the given frames exactly where the flow path through them
    is at that time (same noise), and the result holds them exactly."""
    given, mask = _given()
    x0 = torch.randn_like(given)
    sched = linear_quadratic_schedule(6, 100)
    seen = []

    def v(x, t_B, cond_BCTHW=None):
        seen.append((x.clone(), t_B.clone()))
        return _mixing_velocity()(x, t_B)

    out = denoise(v, x0, sched, given, mask, "replacement", sigma_min=SIGMA)
    assert len(seen) == 6
    for x, t in seen:
        torch.testing.assert_close(x[:, :, :2], interpolate(x0, given, t, SIGMA)[:, :, :2])
    assert torch.equal(out[:, :, :2], given[:, :, :2])
    assert not torch.allclose(out[:, :, 2:], given[:, :, 2:])


def test_reconstruction_guidance_of_weight_zero_is_replacement():
    given, mask = _given()
    x0, sched, v = torch.randn_like(given), linear_quadratic_schedule(6, 100), _mixing_velocity()
    a = denoise(v, x0, sched, given, mask, "replacement", sigma_min=SIGMA)
    b = denoise(v, x0, sched, given, mask, "reconstruction_guidance", 0.0, sigma_min=SIGMA)
    assert torch.equal(a, b)


def test_reconstruction_guidance_step_matches_a_hand_derived_gradient():
    """For a linear velocity v = M x (frames mixed by M), one Euler step of reconstruction
    guidance moves the generated frames by -dt (w t / 2) grad / (1 - a t), with
    grad = 2 (1 - a t) M_ab^T (x1_a - given_a) written out by hand."""
    T, k, w, t0, t1 = 5, 2, 3.0, 0.4, 0.6
    g = torch.Generator().manual_seed(3)
    M = torch.randn(T, T, generator=g) * 0.5
    v = lambda x, t_B, cond_BCTHW=None: torch.einsum("st,bcthw->bcshw", M, x)  # noqa: E731
    given, mask = _given(T, k, (1, 1, T, 1, 1))
    x0 = torch.randn(1, 1, T, 1, 1, generator=g)
    sched = torch.tensor([t0, t1])
    out = denoise(v, x0, sched, given, mask, "reconstruction_guidance", w, SIGMA)

    a = 1 - SIGMA
    x = x0.clone().flatten()
    x[:k] = (t0 * given.flatten() + (1 - a * t0) * x0.flatten())[:k]  # replacement
    vel = M @ x
    x1 = a * x + (1 - a * t0) * vel
    grad = 2 * (1 - a * t0) * M[:k].T @ (x1[:k] - given.flatten()[:k])
    step = vel - (w * t0 / 2) * grad / (1 - a * t0)
    ref = x + (t1 - t0) * step
    torch.testing.assert_close(out.flatten()[k:], ref[k:])
    assert torch.equal(out.flatten()[:k], given.flatten()[:k])  # the given frames, exactly


def test_reconstruction_guidance_pulls_the_reconstruction_towards_the_given_frames():
    """With a velocity whose x-prediction of every frame is a shared value driven by the
    generated frames, guidance brings that prediction of the given frames closer than
    replacement does."""
    given, mask = _given(4, 1, (1, 1, 4, 1, 1))
    given[:, :, 0] = 2.0

    def v(x, t_B, cond_BCTHW=None):  # x1 of every frame = mean of the generated frames
        t = t_B.view(-1, 1, 1, 1, 1)
        x1 = x[:, :, 1:].mean(2, keepdim=True).expand_as(x)
        return (x1 - (1 - SIGMA) * x) / (1 - (1 - SIGMA) * t)

    x0 = torch.zeros(1, 1, 4, 1, 1)
    sched = linear_quadratic_schedule(10, 100)
    rep = denoise(v, x0, sched, given, mask, "replacement", sigma_min=SIGMA)
    gui = denoise(v, x0, sched, given, mask, "reconstruction_guidance", 2.0, SIGMA)
    assert (gui[:, :, 1:] - 2).abs().max() < 0.5 * (rep[:, :, 1:] - 2).abs().max()


def test_explicit_conditioning_passes_the_condition_and_keeps_known_frames_on_their_path():
    given, mask = _given()
    calls = []

    def make_condition(latents, given_BT):
        return torch.cat([latents * given_BT[:, None, :, None, None],
                          given_BT[:, None, :, None, None].expand_as(latents[:, :1]).float()], 1)

    def v(x, t_B, cond_BCTHW=None):
        calls.append((x.clone(), t_B, cond_BCTHW))
        return -x

    x0 = torch.randn_like(given)
    sched = linear_quadratic_schedule(4, 100)
    out = denoise(v, x0, sched, given, mask, "explicit", make_condition=make_condition)
    assert len(calls) == 4 and all(c.shape == (1, 3, 6, 3, 3) for _, _, c in calls)
    cond = calls[0][2]
    assert torch.equal(cond[:, :2, :2], given[:, :, :2]) and (cond[:, :2, 2:] == 0).all()
    for x, t, _ in calls:  # the given frames where training put them: on their path
        torch.testing.assert_close(x[:, :, :2], interpolate(x0, given, t, SIGMA)[:, :, :2])
    assert torch.equal(out[:, :, :2], given[:, :, :2])
    # the upsampler's conditioning is not the clip's frames: every frame is generated
    calls.clear()
    full = torch.ones_like(mask)
    out = denoise(v, x0, sched, given, full, "explicit", make_condition=make_condition,
                  frames_known=False)
    assert torch.equal(calls[0][0], x0) and (calls[0][2][:, 2] == 1).all()
    torch.testing.assert_close(out, denoise(v, x0, sched))  # -x ignores the condition
    with pytest.raises(ValueError, match="replacement"):
        denoise(v, x0, sched, given, full, "replacement", frames_known=False)


def test_extend_conditions_each_clip_on_the_end_of_the_video_so_far():
    start = torch.arange(4.0).view(1, 1, 4, 1, 1)
    seen = []

    def clip(given, mask, i):
        seen.append((given.clone(), mask.clone()))
        out = given.clone()
        out[:, :, 2:] = 10 * (i + 1) + torch.arange(2.0).view(1, 1, 2, 1, 1)
        return out

    video, joins = extend(clip, start, 2, clip_frames=4, context_frames=2)
    assert video.flatten().tolist() == [0, 1, 2, 3, 10, 11, 20, 21]
    assert joins == [4, 6]
    assert seen[0][0][0, 0, :2].flatten().tolist() == [2, 3]
    assert seen[1][0][0, 0, :2].flatten().tolist() == [10, 11]
    assert seen[1][1].tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="context_frames"):
        extend(clip, start, 1, clip_frames=4, context_frames=4)

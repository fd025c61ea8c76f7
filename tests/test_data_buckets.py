"""Bucket definitions, assignment, token-balanced batch sizes and the epoch plan."""
import time

import numpy as np
import pytest

from moviegen.data.buckets import assign_buckets, bucket_latent_shapes, make_buckets
from moviegen.config.video import VideoDataConfig, moviegen_256px, moviegen_768px
from moviegen.data.manifest import Manifest
from moviegen.data.epoch_plan import build_epoch_plan


def fake_manifest(width, height, fps, frames, is_image=None, is_val=None) -> Manifest:
    width, height = np.asarray(width, np.int64), np.asarray(height, np.int64)
    fps, frames = np.asarray(fps, np.float64), np.asarray(frames, np.int64)
    n = len(width)
    is_image = np.zeros(n, bool) if is_image is None else np.asarray(is_image)
    return Manifest(source="<fake>", root="/", paths=[f"f{i}.webm" for i in range(n)],
                    captions=["c"] * n, is_image=is_image, width=width, height=height,
                    fps=np.where(is_image, 0.0, fps), frames=np.where(is_image, 1, frames),
                    duration=np.where(is_image, 0.0, frames / np.maximum(fps, 1e-9)),
                    is_val=np.zeros(n, bool) if is_val is None else np.asarray(is_val))


def test_5x5_video_buckets_plus_images_and_768px_token_count():
    cfg = moviegen_768px()
    buckets = make_buckets(cfg)
    assert sum(b.kind == "video" for b in buckets) == 25
    assert sum(b.kind == "image" for b in buckets) == 5
    shapes = bucket_latent_shapes(cfg, temporal_compression=8, spatial_compression=8)
    # the design's example: 768 px square, 256 frames -> 48 x 48 x 32 = 73,728 tokens
    assert shapes["video_ar1_16s"] == (32, 48, 48)
    assert np.prod(shapes["video_ar1_16s"]) == 73_728
    assert shapes["image_ar1"] == (1, 48, 48)
    assert shapes["video_ar1.78_4s"] == (8, 36, 64)   # 576 x 1024, 64 frames
    assert bucket_latent_shapes(cfg, 8, 8, patch=(1, 1, 1))["video_ar1_16s"] == (32, 96, 96)
    # tiny TAE (4x) on the tiny default: 64 px square, 2.5 s at 8 fps = 20 frames
    tiny = bucket_latent_shapes(VideoDataConfig(), 4, 4)
    assert tiny["video_ar1_2.5s"] == (5, 8, 8) and tiny["image_ar1"] == (1, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        bucket_latent_shapes(VideoDataConfig(), 4, 8)   # 64 px is not a multiple of 16


def test_batch_sizes_keep_tokens_near_target():
    cfg = moviegen_256px()
    for b in make_buckets(cfg):
        assert b.batch_size * b.tokens_per_sample <= cfg.tokens_per_batch or b.batch_size == 1
        assert (b.batch_size + 1) * b.tokens_per_sample > cfg.tokens_per_batch \
            or b.batch_size == cfg.max_batch_size
    sizes = {b.name: b.batch_size for b in make_buckets(cfg)}
    assert sizes["video_ar1_4s"] == 4 * sizes["video_ar1_16s"]


def test_assignment_aspect_duration_fps_and_filters():
    cfg = moviegen_256px()   # 16 fps, 4/6/8/12/16 s, 4-16 s filter, min side 256
    rows = [  # width, height, fps, frames, expected bucket
        (1920, 1080, 30, 30 * 6, "video_ar1.78_6s"),
        (1920, 1080, 30, 30 * 5, "video_ar1.78_4s"),     # 5 s -> longest that fits: 4 s
        (1080, 1920, 24, 24 * 16, "video_ar0.56_16s"),
        (1000, 1000, 8, 8 * 16, "video_ar1_8s"),          # 8 fps source: 128 frames = 8 s at 8 fps
        (1440, 1080, 25, 25 * 13, "video_ar1.33_12s"),
        (1080, 1440, 60, 60 * 7, "video_ar0.75_6s"),
        (1920, 1080, 30, 30 * 3, None),                   # 3 s < 4 s minimum
        (1920, 1080, 30, 30 * 17, None),                  # 17 s > 16 s maximum
        (320, 200, 30, 30 * 8, None),                     # shorter side 200 < 256
    ]
    m = fake_manifest(*zip(*[r[:4] for r in rows]))
    buckets = make_buckets(cfg)
    ids = assign_buckets(cfg, m, buckets)
    got = [buckets[i].name if i >= 0 else None for i in ids]
    assert got == [r[4] for r in rows]
    img = fake_manifest([1000, 300, 100], [1000, 400, 100], [0] * 3, [1] * 3, [True] * 3)
    got = [buckets[i].name if i >= 0 else None for i in assign_buckets(cfg, img, buckets)]
    assert got == ["image_ar1", "image_ar0.75", None]


def _epoch_rows(plan, k, rank, dp):
    return plan.rows[plan.rank_slice(k, rank, dp)]


@pytest.mark.parametrize("dp", [1, 2, 3])
def test_dp_plan_partitions_every_sample_once(dp):
    rng = np.random.default_rng(0)
    n = 5000
    m = fake_manifest(rng.choice([640, 480, 360], n), rng.choice([360, 480, 640], n),
                      rng.choice([8, 12, 24], n), rng.integers(8, 80, n),
                      is_image=rng.random(n) < 0.1)
    cfg = VideoDataConfig(min_side=32)
    buckets = make_buckets(cfg)
    ids = assign_buckets(cfg, m, buckets)
    assert (ids >= 0).sum() > 0.9 * n
    plan = build_epoch_plan(ids, buckets, seed=5, epoch=2, split="train", dp_size=dp,
                            shuffle=True, drop_last=False, image_ratio=None)
    seen = []
    for k in range(len(plan)):
        shares = [_epoch_rows(plan, k, r, dp) for r in range(dp)]
        assert all(len(s) > 0 for s in shares)
        assert len({int(ids[x]) for s in shares for x in s}) == 1     # one bucket per step
        for s in shares:
            assert len(s) <= buckets[plan.batch_bucket[k]].batch_size
        flat = [int(x) for s in shares for x in s]
        assert len(set(flat)) == len(flat)              # ranks never share a sample
        seen.extend(flat)
    used = np.flatnonzero(ids >= 0)
    assert set(seen) == set(used.tolist())
    # once each, except a bucket's last global batch holding fewer rows than ranks, which
    # is topped up from the bucket's start so every rank steps (< dp fillers per bucket)
    remainders = [int((ids == b).sum()) % (buckets[b].batch_size * dp)
                  for b in range(len(buckets))]
    fillers = sum(dp - r for r in remainders if 0 < r < dp)
    assert len(seen) == len(used) + fillers
    again = build_epoch_plan(ids, buckets, seed=5, epoch=2, split="train", dp_size=dp,
                             shuffle=True, drop_last=False, image_ratio=None)
    np.testing.assert_array_equal(plan.rows, again.rows)
    other = build_epoch_plan(ids, buckets, seed=5, epoch=3, split="train", dp_size=dp,
                             shuffle=True, drop_last=False, image_ratio=None)
    assert not np.array_equal(plan.rows, other.rows)


def test_image_ratio_sets_image_batches_per_video_batch():
    rng = np.random.default_rng(1)
    n = 3000
    m = fake_manifest(np.full(n, 64), np.full(n, 64), np.full(n, 8), np.full(n, 20),
                      is_image=rng.random(n) < 0.3)
    cfg = VideoDataConfig(image_ratio=0.1)
    buckets = make_buckets(cfg)
    ids = assign_buckets(cfg, m, buckets)
    plan = build_epoch_plan(ids, buckets, seed=0, epoch=0, split="train", dp_size=1,
                            shuffle=True, drop_last=False, image_ratio=0.1)
    kinds = np.array([buckets[b].kind for b in plan.batch_bucket])
    n_vid, n_img = (kinds == "video").sum(), (kinds == "image").sum()
    assert n_img == round(0.1 * n_vid)
    gaps = np.diff(np.flatnonzero(kinds == "image"))    # spread out, not bunched
    assert gaps.min() >= 8


def test_million_row_assignment_and_plan_are_vectorised():
    rng = np.random.default_rng(2)
    n = 1_000_000
    m = fake_manifest(rng.integers(200, 2000, n), rng.integers(200, 2000, n),
                      rng.choice([24, 30], n), rng.integers(100, 600, n),
                      is_image=rng.random(n) < 0.1)
    cfg = moviegen_256px()
    buckets = make_buckets(cfg)
    t0 = time.perf_counter()
    ids = assign_buckets(cfg, m, buckets)
    plan = build_epoch_plan(ids, buckets, seed=0, epoch=0, split="train", dp_size=8,
                            shuffle=True, drop_last=False, image_ratio=0.1)
    elapsed = time.perf_counter() - t0
    assert len(plan) > 100 and elapsed < 10.0, elapsed

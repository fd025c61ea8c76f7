"""The loader end to end on real files: shapes, determinism, exact resume, DP sharding."""
import json
import os
from itertools import islice

import pytest
import torch

from moviegen.data import build_video_loader, make_buckets
from moviegen.data.manifest import load_manifest
from data_helpers import synthetic_dataset, tiny_config

BACKENDS = ["pyav"] + (["dali"] if __import__("importlib").util.find_spec("nvidia.dali")
                       else [])


def take(loader, n):
    return list(islice(loader, n))


def same(a, b):
    assert a["bucket"] == b["bucket"] and a["paths"] == b["paths"]
    assert a["captions"] == b["captions"]
    torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def cfg():
    return tiny_config(synthetic_dataset())


def test_batch_shapes_match_buckets_and_captions_are_tokenised(cfg):
    loader = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0)
    buckets = {b.name: b for b in make_buckets(cfg)}
    n = loader.batches_per_epoch()
    kinds = set()
    for batch in take(loader, n):
        b = buckets[batch["bucket"]]
        kinds.add(b.kind)
        B = len(batch["paths"])
        assert 1 <= B <= b.batch_size
        assert batch["video"].shape == (B, 3, b.frames, b.height, b.width)
        assert batch["video"].dtype == torch.float32
        assert batch["video"].min() >= -1 and batch["video"].max() <= 1
        assert batch["video"].std() > 0.05                    # not blank
        assert len(batch["captions"]) == B
        for cap in batch["captions"]:
            assert cap.startswith("FPS-8 ") == (b.kind == "video")
    assert kinds == {"video", "image"}
    assert loader.stats()["seen_files"] == 14 + 6 and loader.stats()["skipped_files"] == 0
    assert loader.epoch == 1 and loader.batch_index == 0


def test_direction_in_caption_is_what_the_frames_show(cfg):
    """Frame order and captions agree: the shape's centroid moves the captioned way."""
    loader = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0, split="val")
    checked = 0
    for batch in take(loader, loader.batches_per_epoch()):
        for video, cap in zip(batch["video"], batch["captions"]):
            fg = (video.max(dim=0).values > -0.6).float()          # [T, H, W] shape mask
            ys = torch.arange(fg.shape[1]).view(1, -1, 1).float()
            xs = torch.arange(fg.shape[2]).view(1, 1, -1).float()
            area = fg.sum(dim=(1, 2)).clamp_min(1)
            cx, cy = (fg * xs).sum((1, 2)) / area, (fg * ys).sum((1, 2)) / area
            dx, dy = float(cx[-1] - cx[0]), float(cy[-1] - cy[0])
            want = {"left to right": (dx, 1), "right to left": (dx, -1),
                    "top to bottom": (dy, 1), "bottom to top": (dy, -1)}
            (moved, sign), = [v for k, v in want.items() if k in cap]
            assert moved * sign > 2, (cap, dx, dy)
            checked += 1
    assert checked == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_runs_are_identical_and_seed_matters(cfg, backend):
    c = cfg.replace(backend=backend)
    a = take(build_video_loader(c, dp_rank=0, dp_size=1, seed=3), 6)
    b = take(build_video_loader(c, dp_rank=0, dp_size=1, seed=3), 6)
    for x, y in zip(a, b):
        same(x, y)
    other = take(build_video_loader(c, dp_rank=0, dp_size=1, seed=4), 6)
    assert [x["paths"] for x in a] != [x["paths"] for x in other]


@pytest.mark.parametrize("backend,workers", [("pyav", 0), ("pyav", 2)]
                         + [("dali", 1)] * ("dali" in BACKENDS))
def test_exact_resume_mid_epoch_and_across_epochs(cfg, backend, workers):
    c = cfg.replace(backend=backend, num_workers=workers)
    full = build_video_loader(c, dp_rank=1, dp_size=2, seed=7)
    n = full.batches_per_epoch()
    k = n // 2
    reference = take(full, n + 3)          # past the epoch boundary
    first = build_video_loader(c, dp_rank=1, dp_size=2, seed=7)
    take(first, k)
    state = json.loads(json.dumps(first.state_dict()))   # survives JSON
    stats_at_k = first.stats()
    first.close()
    resumed = build_video_loader(c, dp_rank=1, dp_size=2, seed=7)
    resumed.load_state_dict(state)
    assert resumed.stats() == stats_at_k
    for x, y in zip(reference[k:], take(resumed, n + 3 - k)):
        same(x, y)
    assert resumed.stats() == full.stats()
    with pytest.raises(ValueError, match="dp_rank"):
        build_video_loader(c, dp_rank=0, dp_size=2, seed=7).load_state_dict(state)


def test_dp_ranks_cover_the_epoch_without_overlap(cfg):
    dp = 2
    loaders = [build_video_loader(cfg, dp_rank=r, dp_size=dp, seed=11) for r in range(dp)]
    n = loaders[0].batches_per_epoch()
    assert all(ld.batches_per_epoch() == n for ld in loaders)
    per_rank = [take(ld, n) for ld in loaders]
    seen = []
    for step in zip(*per_rank):
        assert len({b["bucket"] for b in step}) == 1           # same latent shape per step
        paths = [p for b in step for p in b["paths"]]
        seen.extend(paths)
    m = load_manifest(cfg.manifest)
    train = {m.resolve(i) for i in range(len(m)) if not m.is_val[i]}
    assert set(seen) == train
    # every sample once, except fillers for buckets whose last batch has 1 row for 2 ranks
    assert len(seen) - len(train) == _fillers(loaders[0], dp)


def _fillers(loader, dp):
    ids = loader.bucket_ids
    return sum(dp - r for r in (int((ids == b).sum()) % (bk.batch_size * dp)
                                for b, bk in enumerate(loader.buckets)) if 0 < r < dp)


def test_val_is_centre_cropped_and_seed_independent_train_crops_vary():
    cfg = tiny_config(synthetic_dataset(), aspect_ratios=[1.0], use_images=False)
    v1 = take(build_video_loader(cfg, dp_rank=0, dp_size=1, seed=1, split="val"), 2)
    v2 = take(build_video_loader(cfg, dp_rank=0, dp_size=1, seed=2, split="val"), 2)
    for x, y in zip(v1, v2):
        same(x, y)
    # all clips are cropped to squares; training crops (and windows) follow the seed
    def crops(seed):
        ld = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=seed)
        out = {}
        for b in take(ld, ld.batches_per_epoch()):
            for p, v in zip(b["paths"], b["video"]):
                out[p] = v
        return out
    a, b = crops(1), crops(2)
    assert a.keys() == b.keys()
    assert sum(not torch.equal(a[p], b[p]) for p in a) >= len(a) // 2


def test_device_and_contract_errors(cfg):
    with pytest.raises(ValueError, match="dp_rank"):
        build_video_loader(cfg, dp_rank=2, dp_size=2, seed=0)
    with pytest.raises(ValueError, match="split"):
        build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0, split="test")
    with pytest.raises(RuntimeError, match="no train samples"):
        build_video_loader(cfg.replace(min_side=4096), dp_rank=0, dp_size=1, seed=0)
    with pytest.raises(ValueError, match="manifest"):
        build_video_loader(cfg.replace(manifest=""), dp_rank=0, dp_size=1, seed=0)
    assert os.path.isfile(cfg.manifest)


@pytest.mark.skipif("dali" not in BACKENDS, reason="nvidia-dali not installed")
@pytest.mark.parametrize("workers, cores, threads", [(4, 2, 2), (1, 2, 1), (0, 2, 1),
                                                     (3, 8, 3)])
def test_dali_threads_never_exceed_the_usable_cores(cfg, monkeypatch, workers, cores, threads):
    # more DALI threads than cores was measured slower (benchmarks/dataloader.py)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    loader = build_video_loader(cfg.replace(backend="dali", num_workers=workers),
                                dp_rank=0, dp_size=1, seed=0)
    try:
        assert next(loader)["video"].dim() == 5
        assert loader._dali.num_threads == threads
    finally:
        loader.close()

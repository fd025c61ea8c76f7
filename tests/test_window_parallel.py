"""Window attention under parallel layouts vs the one-process run (gloo on CPU, fp32).

The tiny step of tests/dist_helpers.py (a 4 x 4 x 6 video grid and one-frame images);
each layout is chosen for the context-parallel exchange it exercises: on the video,
tp 2 x cp 2 with [4, 2, 3] spatiotemporal windows sends K/V to the other rank of the
window (2 frames per rank, 4 per window; with [2, 3] spatial windows this model's
step-3 attention gradients are ~1e-5 and differ by 2e-4 relative even without CP, under
tp 2 x dp_shard 2, so the spatial windows here are [4, 3]), cp 4 with [2, 2, 3] windows exchanges within
pairs of ranks only (1 frame per rank), FSDP 2 x cp 2 with [2, 2, 3] windows exchanges
nothing; the one-frame images do not split on frames and take the all-gather fallback.
"""
from __future__ import annotations

import os

import pytest

from dist_helpers import (compare, launch_failure, reference_state, run_parallel,
                          run_reference, spawn)
from test_window import window_args

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

LAYOUTS = [  # (layout, spatial window, spatiotemporal window)
    ({"tp": 2, "cp": 2}, (4, 3), (4, 2, 3)),
    ({"cp": 4}, (2, 3), (2, 2, 3)),
    ({"dp_shard": 2, "cp": 2}, (2, 3), (2, 2, 3)),
]


def check_window_layouts(rank: int, world_size: int, layouts) -> dict:
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        report = {}
        for layout, sp_window, st_window in layouts:
            args = window_args(spatial=sp_window, spatiotemporal=st_window)
            state = reference_state(args)
            ref = run_reference(args, state)
            got = run_parallel(args, state, layout)
            name = " x ".join(f"{k} {v}" for k, v in layout.items()) + f" windows {sp_window} {st_window}"
            report[name] = {"problems": compare(ref, got, name), "losses": got[0]}
        return report
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_window_attention_layouts_match_one_process():
    report = spawn(check_window_layouts, 4, 290, LAYOUTS)
    assert len(report[0]) == len(LAYOUTS)
    for rank_report in report:
        for name, r in rank_report.items():
            assert not r["problems"], f"{name}:\n" + "\n".join(r["problems"])


def test_window_exchange_plan():
    from moviegen.parallel.context_parallel import window_exchange
    assert window_exchange((4, 4, 6), (1, 2, 3), 4) == 1       # spatial: nothing
    assert window_exchange((4, 4, 6), (2, 2, 3), 2) == 1       # windows inside a rank
    assert window_exchange((4, 4, 6), (2, 2, 3), 4) == 2       # pairs of ranks
    assert window_exchange((4, 4, 6), (4, 2, 3), 2) == 2
    assert window_exchange((1, 4, 6), (1, 2, 3), 2) is None    # a frame split: fallback
    assert window_exchange((6, 4, 6), (2, 2, 3), 2) is None    # 3 frames, 2-frame windows


@pytest.mark.timeout(200)
def test_cli_window_run_on_tp2_cp2_logs_the_one_process_losses(tmp_path):
    """W.A.L.T windows through the public command: python -m moviegen.train on 1 process
    and torchrun tp 2 x cp 2 (the CP split on frame boundaries: spatiotemporal windows of
    2 frames exchange with the neighbouring rank) log the same losses."""
    import subprocess
    import sys

    from moviegen.training.metrics import read_metrics

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    common = ["-m", "moviegen.train", "--config", "launch/configs/tiny.yaml",
              "--model.attention_pattern=window", "--model.spatial_window=[4, 3]",
              "--model.spatiotemporal_window=[2, 2, 3]", "--data.global_batch_size=8",
              "--train.steps=4", "--train.log_every=1", "--train.val_every=1000",
              "--train.progress_bar=false", "--metrics.tensorboard=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    runs = {"one": [sys.executable],
            "tp2_cp2": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=4", "--no-python", sys.executable]}
    layouts = {"one": [], "tp2_cp2": ["--parallel.tp=2", "--parallel.cp=2"]}
    losses = {}
    for name, prefix in runs.items():
        out = subprocess.run(prefix + common + layouts[name] + [f"--output_dir={tmp_path / name}"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, launch_failure(name, out)
        losses[name] = [r["loss"] for r in read_metrics(str(tmp_path / name)) if "loss" in r]
    assert len(losses["one"]) == 4
    assert losses["tp2_cp2"] == pytest.approx(losses["one"], rel=1e-5)

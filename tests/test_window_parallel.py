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

import pytest

from dist_helpers import compare, reference_state, run_parallel, run_reference, spawn
from test_window import window_args

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
    from parallel.context_parallel import window_exchange
    assert window_exchange((4, 4, 6), (1, 2, 3), 4) == 1       # spatial: nothing
    assert window_exchange((4, 4, 6), (2, 2, 3), 2) == 1       # windows inside a rank
    assert window_exchange((4, 4, 6), (2, 2, 3), 4) == 2       # pairs of ranks
    assert window_exchange((4, 4, 6), (4, 2, 3), 2) == 2
    assert window_exchange((1, 4, 6), (1, 2, 3), 2) is None    # a frame split: fallback
    assert window_exchange((6, 4, 6), (2, 2, 3), 2) is None    # 3 frames, 2-frame windows

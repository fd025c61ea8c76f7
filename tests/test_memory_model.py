"""Activation checkpointing and the memory model, measured on TP 2 x CP 2 (4 gloo ranks).

Per AC mode (none, selective, full, and selective with the first two of four blocks
full: the memory-budget mode) one fp32 training step of a small model: the peak of
live activation memory measured by torch's MemTracker on every rank is within 10% of
``moviegen.parallel.memory_model.activation_peak_bytes``, and the loss and every gradient equal
the AC-none run's.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import memory_ranks  # noqa: E402
from moviegen.parallel.memory_model import (Shape, activation_peak_bytes, block_saved_bytes,  # noqa: E402
                                   full_blocks_for_budget)
from dist_helpers import spawn  # noqa: E402

MODES = [("none", 0), ("selective", 0), ("full", 0), ("selective", 2)]


def _shape(tp, cp):
    return Shape(S=memory_ranks.tokens(), D=memory_ranks.DIM, F=memory_ranks.FFN,
                 N=memory_ranks.HEADS, L=memory_ranks.TEXT_LEN, layers=memory_ranks.LAYERS,
                 tp=tp, cp=cp, b=4)


@pytest.fixture(scope="module")
def tp2_cp2():
    return spawn(memory_ranks.step_per_mode, 4, 280, MODES, {"tp": 2, "cp": 2})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_measured_peak_within_10_percent_per_mode(tp2_cp2):
    sh = _shape(tp=2, cp=2)
    for rank, per_mode in enumerate(tp2_cp2):
        for r in per_mode:
            model = activation_peak_bytes(sh, r["ac"], table_bytes=4, full_blocks=r["full_blocks"])
            err = (model - r["peak_bytes"]) / r["peak_bytes"]
            assert abs(err) < 0.10, (f"rank {rank} ac {r['ac']} full_blocks {r['full_blocks']}: "
                                     f"measured {r['peak_bytes']} B, model {model:.0f} B "
                                     f"({100 * err:+.1f}%)")
    peaks = [r["peak_bytes"] for r in tp2_cp2[0]]
    assert peaks[0] > peaks[1] > peaks[3] > peaks[2]  # none > selective > budget > full


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_losses_and_gradients_unchanged_by_ac(tp2_cp2):
    for per_mode in tp2_cp2:
        base = per_mode[0]
        assert base["ac"] == "none"
        for r in per_mode[1:]:
            assert r["loss"] == pytest.approx(base["loss"], rel=1e-6)
            assert set(r["grads"]) == set(base["grads"])
            for name, g in base["grads"].items():
                assert g.abs().max() > 0, name
                torch.testing.assert_close(r["grads"][name], g, rtol=1e-5, atol=1e-7,
                                           msg=lambda m: f"ac {r['ac']}: {name}: {m}")


def test_selective_keeps_sequence_sharded_tensors_only():
    """Movie Gen's 768px layout: selective keeps ~34 s d / tp-like bytes per block, not the
    row-parallel matmul outputs (which would add 3 x b x S/cp x D per block)."""
    sh = Shape(S=73728, D=6144, F=16384, N=48, L=768, layers=48, tp=8, cp=4, b=2)
    sel = block_saved_bytes(sh, "selective")
    assert sel < 0.5e9
    assert sel < block_saved_bytes(sh, "none") / 2
    assert activation_peak_bytes(sh, "selective", table_bytes=2) < 25e9


def test_budget_mode_picks_fewest_full_blocks():
    sh = Shape(S=73728, D=6144, F=16384, N=48, L=768, layers=48, tp=8, cp=2, b=2)
    sel = activation_peak_bytes(sh, "selective", table_bytes=2)
    full = activation_peak_bytes(sh, "full", table_bytes=2)
    budget = (sel + full) / 2
    k = full_blocks_for_budget(sh, budget, table_bytes=2)
    assert 0 < k < sh.layers
    assert activation_peak_bytes(sh, "selective", 2, k) <= budget
    assert activation_peak_bytes(sh, "selective", 2, k - 1) > budget
    assert full_blocks_for_budget(sh, full / 2, table_bytes=2) is None
    assert full_blocks_for_budget(sh, sel * 2, table_bytes=2) == 0


def test_full_blocks_needs_selective():
    from moviegen.models.transformer import MovieGenTransformer
    from moviegen.parallel.activation_checkpoint import apply_activation_checkpointing
    with torch.device("meta"):
        model = MovieGenTransformer(memory_ranks.model_args())
    with pytest.raises(ValueError, match="needs ac mode 'selective'"):
        apply_activation_checkpointing(model, "full", full_blocks=1)
    with pytest.raises(ValueError, match=r"full_blocks must be in \[0, 4\]"):
        apply_activation_checkpointing(model, "selective", full_blocks=5)

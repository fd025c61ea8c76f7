"""benchmarks/plan.py and ``python -m moviegen.info`` on the one memory model.

The planner runs the real ``parallelize`` on a fake process group, so these build real
(meta-device) sharded models: the 7B at world 64, the 30B at world 6144.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moviegen.planning import memory_per_gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import plan  # noqa: E402

KEYS = ("params_per_rank", "param_gb", "grad_gb", "optimizer_gb", "fsdp_buffer_gb",
        "activation_gb", "total_gb")


@pytest.mark.timeout(240)
def test_plan_and_info_agree_and_plan_names_a_best_layout(tmp_path):
    out = tmp_path / "p.json"
    rows, top = plan.main(["--model", "7b", "--world", "64", "--seq_len", "8192",
                           "--tp", "2", "4", "--cp", "1", "2", "--ac", "none", "selective",
                           "full", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert (tmp_path / "p.md").exists() and saved["best"] == top
    assert top is not None and top["fits"]
    assert top["samples_per_s"] == max(r["samples_per_s"] for r in rows if r["fits"])
    for key in ("tp", "cp", "ac", "total_gb", "fits_80gb", "comm_gb", "step_s"):
        assert key in top
    # the same layout through moviegen.info: identical figures
    row = next(r for r in rows if (r["tp"], r["cp"], r["ac"]) == (4, 2, "selective"))
    info = memory_per_gpu("7b", 8192, 768, 64, 1, 2, 4, "selective")
    for key in KEYS:
        assert info[key] == pytest.approx(row[key], rel=1e-12), key
    # selective keeps less than none and more than full, and costs recompute time under TP
    by_ac = {r["ac"]: r for r in rows if (r["tp"], r["cp"]) == (4, 2)}
    assert by_ac["none"]["activation_gb"] > by_ac["selective"]["activation_gb"] \
        > by_ac["full"]["activation_gb"]
    assert by_ac["none"]["step_s"] < by_ac["selective"]["step_s"] < by_ac["full"]["step_s"]


@pytest.mark.timeout(120)
def test_movie_gen_768px_layout_with_selective_ac_fits_in_40gb():
    info = memory_per_gpu("30b", 73728, 768, 6144, 1, 4, 8, "selective")
    assert info["layout"]["dp_shard"] == 192
    assert info["total_gb"] <= 40.0
    assert info["fits_80gb"]


@pytest.mark.timeout(120)
def test_budget_mode_fits_where_selective_does_not(tmp_path):
    rows, top = plan.main(["--model", "30b", "--world", "6144", "--seq_len", "73728",
                           "--tp", "4", "--cp", "2", "--ac", "selective", "budget", "full",
                           "--output", str(tmp_path / "b.json")])
    by_ac = {r["ac"]: r for r in rows}
    assert not by_ac["selective"]["fits"]
    budget = by_ac["budget"]
    assert budget["fits"] and 0 < budget["ac_full_blocks"] < 48
    assert budget["step_s"] < by_ac["full"]["step_s"]
    assert top is budget


@pytest.mark.slow
def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="no valid layout: tp 3 does not divide 48 heads"):
        plan.main(["--model", "30b", "--world", "6144", "--seq_len", "73728", "--tp", "3",
                   "--cp", "1", "--output", "/tmp/x.json"])
    cmd = [sys.executable, "benchmarks/plan.py", "--model", "30b", "--world", "8",
           "--seq_len", "64", "--output", "plan.csv"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--output plan.csv: give a .json file name" in r.stderr


def test_info_names_a_layout_the_model_cannot_take():
    with pytest.raises(SystemExit, match="--tp/--cp/--world: .*tp=8 does not divide the model's 4"):
        memory_per_gpu("tiny", 256, 16, 64, 1, 1, 8, "selective")

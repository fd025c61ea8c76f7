"""Parallel layouts vs the one-process run (multi-process gloo on CPU, tiny fp32 model).

For every layout: the loss (rel 1e-5) and the global grad norm, every gradient after
``full_tensor()``, and every parameter after three AdamW steps equal the one-process
run's. The steps use a non-square latent (grid 4 x 4 x 6) and a batch of one-frame
images; the zero-initialised gates and final layer are perturbed so no gradient is
trivially zero. One spawn per world size runs all its layouts in one process group.
"""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from moviegen.config import ConfigError, load_config
from moviegen.training.diffusion import job_layout
from moviegen.parallel.parallel_dims import LayoutError, ParallelDims
from moviegen.parallel.tensor_parallel import BLOCK_TP_PLAN, is_sequence_parallel_param
from dist_helpers import check_layouts, spawn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_equal(report: list[dict], expected: int):
    assert len(report[0]) == expected
    for rank_report in report:
        for layout, r in rank_report.items():
            assert not r["problems"], f"{layout}:\n" + "\n".join(r["problems"])


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_world2_fsdp_tp_cp():
    report = spawn(check_layouts, 2, 140, [
        {"dp_shard": 2},
        {"tp": 2, "ac": "selective"},
        {"cp": 2, "ac": "full"},
    ])
    _assert_equal(report, 3)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_world4_hsdp_cp4_tp2cp2():
    report = spawn(check_layouts, 4, 190, [
        {"dp_replicate": 2, "dp_shard": 2},
        {"cp": 4},
        {"tp": 2, "cp": 2},
    ])
    _assert_equal(report, 3)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_world8_fsdp2_tp2_cp2():
    report = spawn(check_layouts, 8, 230, [{"dp_shard": 2, "tp": 2, "cp": 2}])
    _assert_equal(report, 1)


# --------------------------------------------------------------------------- invalid layouts
def _cfg(*overrides):
    return load_config(os.path.join(ROOT, "launch/configs/tiny.yaml"), list(overrides))


INVALID = [
    (["--parallel.cp=2", "--parallel.tp=2", "--parallel.dp_shard=1"], "!= world size 2"),
    (["--parallel.tp=4"], "does not divide the world size 2"),
    (["--parallel.cp=2", "--data.latent_frames=1", "--data.latent_height=2",
      "--data.latent_width=6"], "data bucket 'synthetic_latents'"),
]


def _invalid_on_every_rank(rank, world_size):
    from moviegen.training.distributed import init_distributed
    messages = []
    for overrides, _ in INVALID:
        try:
            init_distributed(job_layout(_cfg(*overrides), world_size), torch.device("cpu"))
            messages.append(None)
        except ConfigError as e:
            messages.append(str(e))
    return messages


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_invalid_layouts_same_error_on_every_rank_without_hanging():
    per_rank = spawn(_invalid_on_every_rank, 2, 50)
    assert per_rank[0] == per_rank[1]  # the same clear error on every rank
    for msg, (_, expected) in zip(per_rank[0], INVALID):
        assert msg is not None and expected in msg, msg


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_torchrun_invalid_layout_exits_cleanly_on_every_rank():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "-m", "moviegen.train", "--config", "launch/configs/tiny.yaml",
           "--parallel.cp=2", "--data.latent_frames=1", "--data.latent_height=2",
           "--data.latent_width=6", "--output_dir=/tmp/moviegen-invalid-layout"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=80)
    assert out.returncode != 0
    assert out.stderr.count("config error: data bucket 'synthetic_latents'") == 2, out.stderr[-3000:]


def test_bucket_error_names_the_bucket():
    dims = ParallelDims(1, 1, 4, 2, 8)
    dims.validate_buckets([("768px_10s", 32, 96, 96), ("768px_portrait", 16, 96, 54)], (1, 2, 2))
    with pytest.raises(LayoutError, match="'image_odd'.*not divisible by cp x tp = 4 x 2"):
        dims.validate_buckets([("768px_10s", 32, 96, 96), ("image_odd", 1, 6, 6)], (1, 2, 2))


def test_dims_resolve_and_reject():
    cfg = SimpleNamespace(dp_replicate=2, dp_shard=-1, cp=4, tp=8)
    dims = ParallelDims.from_config(cfg, 6144)
    assert (dims.dp_shard, dims.dp, dims.fsdp, dims.seq_shards) == (96, 192, 384, 32)
    with pytest.raises(LayoutError, match="tp=8 does not divide the model's 4 attention heads"):
        ParallelDims(1, 1, 1, 8, 8).validate_model(n_heads=4, ffn_dim=128)
    assert job_layout(_cfg("--parallel.cp=2", "--parallel.tp=2"), 8).dp_shard == 2
    with pytest.raises(ConfigError, match="parallel.tp: tp=8 does not divide"):
        job_layout(_cfg("--parallel.tp=8"), 8)


def test_plan_covers_every_parameter():
    """Each parameter is TP-sharded by the plan, reduced as sequence-parallel, or the
    text projection (whose gradient DTensor reduces through the replicated text)."""
    from dist_helpers import tiny_args
    from moviegen.models.transformer import MovieGenTransformer
    with torch.device("meta"):
        model = MovieGenTransformer(tiny_args())
    tp_modules = {k for k, v in BLOCK_TP_PLAN.items() if v in ("colwise", "rowwise_to_sequence")}
    for name, _ in model.named_parameters():
        in_plan = name.startswith("blocks.") and name.split(".", 2)[2].rsplit(".", 1)[0] in tp_modules
        kinds = [in_plan, is_sequence_parallel_param(name), name.startswith("text_proj.")]
        assert sum(kinds) == 1, (name, kinds)


def test_adamw_parameter_rule_passes_rounding_and_fails_a_wrong_step():
    """The rule the layout tests compare parameters with: gradients that differ by fp32
    summation order pass, even where AdamW turns a small gradient's relative error into a
    visible step; a 1% wrong learning rate, or a shard stepped with another step's gradient
    than the one recorded, does not."""
    from dist_helpers import adamw_param_problems
    torch.manual_seed(0)
    init = {"w": torch.randn(64, 64)}
    grads_ref = [{"w": torch.randn(64, 64) * 1e-3 * torch.rand(64, 64) ** 6} for _ in range(3)]
    rounding = [{"w": g["w"] * (1 + 1e-6 * torch.randn(64, 64)) + 1e-10 * torch.randn(64, 64)}
                for g in grads_ref]
    off = [{"w": g["w"].clone()} for g in grads_ref]
    off[1]["w"][:8] = grads_ref[0]["w"][:8]

    def adamw(grads, lr):
        p = torch.nn.Parameter(init["w"].clone())
        opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.01)
        for g in grads:
            p.grad = g["w"].clone()
            opt.step()
        return {"w": p.detach()}

    ref = adamw(grads_ref, 1e-2)
    kw = dict(lr_sum=3e-2, what="t", ref_grads=grads_ref, lr=1e-2)
    assert adamw_param_problems(adamw(rounding, 1e-2), ref, grads=rounding, **kw) == []
    assert adamw_param_problems(adamw(grads_ref, 1.01e-2), ref, grads=grads_ref, **kw) != []
    assert adamw_param_problems(adamw(off, 1e-2), ref, grads=grads_ref, **kw) != []
    # without gradients: the fraction rule
    assert adamw_param_problems(adamw(grads_ref, 1.01e-2), ref, lr_sum=3e-2, what="t") != []

"""Scale plan: per-GPU memory and communication of the 30B at 73,728 tokens on 6,144 GPUs.

    python benchmarks/plan.py                    # the default table (about 2 minutes)
    python benchmarks/plan.py --world 6144 --tp 4 8 --cp 1 2 4 --ac none full selective

How it works. The 30B is built on the meta device and the REAL ``parallel.parallelize``
(TP plan, context parallel, AC, FSDP2) is applied under a fake process group of the given
world size (torch's "fake" backend: collectives are no-ops, meshes and DTensors are real).
Parameter, gradient and AdamW bytes per rank are then read from the local shards of the
sharded parameters (``parallel.memory_model.sharded_state_bytes``); mixed precision as on
GPUs (fp32 master weights, grads and Adam states; bf16 compute; fp32 reduce-scatter).
Activations come from the per-block model in parallel/memory_model.py, checked first
against the peak measured on this CPU for a small model (the error is printed).

How to read the table. One row per (tp, cp, AC mode), dp_shard = the rest (FSDP over
dp_shard x cp ranks). "state" = params + grads + Adam from the sharded tensors, "fsdp buf"
= gathered bf16 block parameters (current + prefetched) and one block's unsharded
gradients, "act" = modelled activation peak for one 73,728-token sample per CP x TP group,
"total" vs the 80 GB of an H100 (fits = below 90% of 80e9 bytes, leaving room for the
CUDA context, NCCL buffers and fragmentation). Communication columns are GB sent per rank
per optimizer step for FSDP, TP and our CP (all-gather K/V), and, for comparison, ring
attention and Ulysses all-to-all at the same cp. Frozen text encoders are not counted
(their embeddings are assumed precomputed).

Writes benchmarks/results/plan_30b_6144.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parallel.memory_model import (Shape, activation_peak_bytes, comm_bytes_per_rank,  # noqa: E402
                                   sharded_state_bytes)

GB = 1e9
H100_BYTES = 80e9
TEXT_TOKENS = 768  # UL2 + ByT5 + MetaCLIP, 256 each


def measure_tiny_activation_error() -> list[dict]:
    """Peak activation bytes of a small fp32 model on CPU (MemTracker) vs the model."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from moviegen.flow import flow_matching_loss
    from moviegen.models.transformer import ModelArgs, build_model
    from parallel.activation_checkpoint import apply_activation_checkpointing

    rows = []
    for mode in ("none", "full", "selective"):
        args = ModelArgs(dim=128, n_layers=4, n_heads=4, ffn_dim=256, text_dims={"byt5": 32},
                         time_freq_dim=64, max_t=8)
        torch.manual_seed(0)
        model = build_model(args)
        apply_activation_checkpointing(model, mode)
        x = torch.randn(1, 16, 8, 16, 16)  # 8 x 8 x 8 = 512 tokens
        emb, mask = {"byt5": torch.randn(1, 8, 32)}, {"byt5": torch.ones(1, 8, dtype=torch.bool)}
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            sum_sq, count = flow_matching_loss(model(x, torch.rand(1), emb, mask), x)
            (sum_sq / count).backward()
        peak = {str(k).split(".")[-1]: v
                for k, v in next(iter(tracker.get_tracker_snapshot("peak").values())).items()}
        measured = peak["Total"] - peak["PARAM"] - peak["GRAD"] - peak["OPT"]
        modelled = activation_peak_bytes(Shape(S=512, D=128, F=256, N=4, L=8, layers=4, b=4),
                                         mode, table_bytes=4)
        rows.append({"ac": mode, "measured_bytes": measured, "model_bytes": modelled,
                     "error": (modelled - measured) / measured})
    return rows


def plan(world: int, tps, cps, acs, dp_replicate: int = 1) -> list[dict]:
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from moviegen.models.transformer import DEFAULT_TEXT_DIMS, MODEL_REGISTRY, ModelArgs, MovieGenTransformer
    from parallel.parallel_dims import ParallelDims
    from parallel.parallelize import parallelize

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    # 768px stage: spatial tables 3x the 256px ones (48 patches a side fit), 32 frames
    args = ModelArgs(**MODEL_REGISTRY["30b"], text_dims=DEFAULT_TEXT_DIMS,
                     max_t=32, max_h=144, max_w=144)
    S = 32 * 48 * 48
    rows = []
    for tp in tps:
        for cp in cps:
            t0 = time.perf_counter()
            dims = ParallelDims.from_config(SimpleNamespace(dp_replicate=dp_replicate,
                                                            dp_shard=-1, cp=cp, tp=tp), world)
            dims.validate_model(args)
            mesh = dims.build_mesh("cpu")
            with torch.device("meta"):
                model = MovieGenTransformer(args)
            cfg = SimpleNamespace(ac="none", compile=False, param_dtype="bf16",
                                  reduce_dtype="fp32", reshard_after_forward=True)
            parallelize(model, dims, mesh, cfg, device_type="cuda")
            static = sharded_state_bytes(model)
            for ac in acs:
                sh = Shape(S=S, D=args.dim, F=args.ffn_dim, N=args.n_heads, L=TEXT_TOKENS,
                           layers=args.n_layers, tp=tp, cp=cp, b=2)
                act = activation_peak_bytes(sh, ac, table_bytes=2)
                state = static["param_bytes"] + static["grad_bytes"] + static["optimizer_bytes"]
                total = state + static["fsdp_buffer_bytes"] + act
                comm = comm_bytes_per_rank(sh, dims.fsdp, dims.dp_replicate,
                                           static["block_params_per_tp_rank"] * args.n_layers,
                                           ac)
                rows.append({
                    "world": world, "dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard,
                    "cp": cp, "tp": tp, "ac": ac, "tokens": S,
                    "params_per_rank": static["params_local"],
                    "param_gb": static["param_bytes"] / GB, "grad_gb": static["grad_bytes"] / GB,
                    "optimizer_gb": static["optimizer_bytes"] / GB,
                    "fsdp_buffer_gb": static["fsdp_buffer_bytes"] / GB,
                    "activation_gb": act / GB, "total_gb": total / GB,
                    "fits_80gb": total < 0.9 * H100_BYTES,
                    "comm_gb": {k: v / GB for k, v in comm.items()},
                })
            print(f"  built and sharded tp={tp} cp={cp} in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)
    dist.destroy_process_group()
    return rows


def table(rows) -> list[str]:
    head = ("| dp_shard | cp | tp | AC | params/rank | state GB | fsdp buf GB | act GB | "
            "total GB | fits 80GB | FSDP GB | TP GB | CP GB | ring GB | Ulysses GB |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        c = r["comm_gb"]
        state = r["param_gb"] + r["grad_gb"] + r["optimizer_gb"]
        lines.append(f"| {r['dp_shard']} | {r['cp']} | {r['tp']} | {r['ac']} | "
                     f"{r['params_per_rank'] / 1e6:.2f}M | {state:.2f} | {r['fsdp_buffer_gb']:.2f} | "
                     f"{r['activation_gb']:.1f} | {r['total_gb']:.1f} | "
                     f"{'yes' if r['fits_80gb'] else 'no'} | {c['fsdp']:.1f} | {c['tp']:.1f} | "
                     f"{c['cp']:.1f} | {c['ring_attention']:.1f} | {c['ulysses']:.1f} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=6144)
    ap.add_argument("--tp", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--cp", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ac", nargs="+", default=["none", "selective", "full"])
    ap.add_argument("--output", default=os.path.join(ROOT, "benchmarks/results/plan_30b_6144"))
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    calib = measure_tiny_activation_error()
    print("activation model vs measured peak (CPU, dim 128, 4 blocks, 512 tokens, fp32):")
    for c in calib:
        print(f"  AC {c['ac']:9s} measured {c['measured_bytes'] / 2**20:7.2f} MiB  model "
              f"{c['model_bytes'] / 2**20:7.2f} MiB  error {100 * c['error']:+.1f}%")
    rows = plan(a.world, a.tp, a.cp, a.ac)
    lines = table(rows)
    print(f"\n30B, {rows[0]['tokens']:,} tokens/sample, world {a.world} (one sample per CP x TP "
          f"group; GB = 1e9 bytes; comm = GB sent per rank per step)")
    print("\n".join(lines))
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output + ".json", "w") as f:
        json.dump({"model": "30b", "world": a.world, "tokens": rows[0]["tokens"],
                   "text_tokens": TEXT_TOKENS, "h100_bytes": H100_BYTES,
                   "activation_model_check": calib, "layouts": rows}, f, indent=1)
    with open(a.output + ".md", "w") as f:
        f.write(f"# 30B at {rows[0]['tokens']:,} tokens on {a.world} GPUs "
                f"(`python benchmarks/plan.py`)\n\n")
        f.write("Activation model vs measured CPU peak: " + ", ".join(
            f"AC {c['ac']} {100 * c['error']:+.1f}%" for c in calib) + "\n\n")
        f.write("\n".join(lines) + "\n\n")
        how = __doc__.split("How to read the table.")[1].split("Writes ")[0]
        f.write("How to read the table." + how)
    return rows


if __name__ == "__main__":
    main()

"""Scale planner: which layout (tp, cp, activation checkpointing) for a model, a sequence
length and a cluster, ranked by modelled step time.

    python benchmarks/plan.py --model 30b --world 6144 --seq_len 73728
    python benchmarks/plan.py --model 7b --world 64 --seq_len 8192 --gpu_mem_gb 141
    python benchmarks/plan.py --model 30b --world 6144 --seq_len 73728 --tp 2 8 --cp 4 8 \\
        --ac selective full --output runs/plan/mine.json

How it works. For every (tp, cp, AC mode) the model is built on the meta device and the
REAL ``parallel.parallelize`` (TP plan, context parallel, the AC mode being planned, FSDP2)
is applied under a fake process group of --world ranks (torch's "fake" backend:
collectives are no-ops, meshes and DTensors are real). Parameter, gradient and AdamW
bytes per rank are read from the local shards (rank 0, the largest FSDP shard); mixed
precision as on GPUs (fp32 master weights, grads and Adam states; bf16 compute; fp32
reduce-scatter). Activations come from moviegen/parallel/memory_model.py, whose per-mode
prediction tests/test_memory_model.py checks against the peak measured on TP 2 x CP 2
(gloo, CPU). AC "budget" recomputes the fewest leading blocks fully (the rest selective)
that make the layout fit. ``python -m moviegen.info`` uses the same functions.

Step time (one sample per CP x TP group, i.e. one optimizer step of dp samples):
compute = FLOPs per sample (moviegen.models.flops, plus the AC recomputation) / (cp x tp) at
--compute_efficiency of --peak_tflops; plus the communication this code does not overlap:
TP (sequence all-gathers / reduce-scatters, on the critical path) over NVLink, CP (K/V
all-gathers) over NVLink when the cp x tp group fits in a node, else over the network;
FSDP all-gathers and reduce-scatters over the network, overlapped with compute by FSDP2's
prefetch, so only what exceeds the compute time counts. Layouts are ranked by samples/s
(= by the step time of a fixed global batch). Bandwidths are per GPU, one direction.

How to read the table. dp_shard = the rest (FSDP over dp_shard x cp ranks). "state" =
params + grads + Adam, "fsdp buf" = gathered bf16 block parameters (current + prefetched)
and one block's unsharded gradients, "act" = modelled activation peak, "total" vs
--gpu_mem_gb (fits = below --headroom of it, leaving room for the CUDA context, NCCL
buffers and fragmentation). Communication columns are GB sent per rank per step for
FSDP, TP and our CP (all-gather K/V) and, for comparison, ring attention and Ulysses at
the same cp (full attention); "CP MB/block" = MB one block sends forward for CP (with
--attention_pattern window: spatial / spatiotemporal blocks, which exchange K/V only
within a window's ranks when the split falls on frames). Frozen text encoders are not
counted (embeddings precomputed).

The 30B is sharded with 2 of its 48 identical blocks (FSDP shards each block on its own,
so the per-rank state scales exactly with depth; sharding all 48 over 6,144 ranks takes
about a minute per layout).

Writes --output (JSON, and a Markdown table beside it; default under runs/plan/);
--update_results writes benchmarks/results/plan_<model>_<world>.{json,md} instead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from moviegen.planning import cp_kv_ranks, grid_for, model_args_for, sharded_model  # noqa: E402
from moviegen.parallel.memory_model import (GB, Shape, comm_bytes_per_rank, fake_world,  # noqa: E402
                                   full_blocks_for_budget, layout_dims, layout_memory,
                                   recompute_fraction, sharded_state_bytes,
                                   state_and_buffers_gb)

AC_CHOICES = ("none", "selective", "full", "budget")


def valid_layouts(args, world: int, seq_len: int, tps, cps, gpus_per_node: int):
    out, skipped = [], []
    for tp in tps:
        for cp in cps:
            why = None
            if args.n_heads % tp or args.ffn_dim % tp:
                why = f"tp {tp} does not divide {args.n_heads} heads / FFN {args.ffn_dim}"
            elif tp > gpus_per_node:
                why = f"tp {tp} > {gpus_per_node} GPUs per node (TP stays inside a node)"
            elif world % (tp * cp):
                why = f"cp x tp = {cp * tp} does not divide world {world}"
            elif seq_len % (tp * cp):
                why = f"cp x tp = {cp * tp} does not divide {seq_len} tokens"
            (skipped if why else out).append(why or (tp, cp))
    return out, skipped


def step_time(a, args, dims, sh: Shape, ac: str, full_blocks: int, comm: dict) -> dict:
    from moviegen.models.flops import flops_per_sample

    flops = flops_per_sample(args, sh.S, sh.L, grid_for(args, sh.S))["total"]
    rf = recompute_fraction(args, sh, ac, full_blocks)
    # recomputation repeats part of the forward, which is a third of forward + backward
    rank_flops = flops * (1 + rf / 3) / (dims.cp * dims.tp)
    compute = rank_flops / (a.peak_tflops * 1e12 * a.compute_efficiency)
    nvlink, net = a.nvlink_gbps * GB, a.net_gbps * GB
    tp_s = comm["tp"] / nvlink
    cp_s = comm["cp"] / (nvlink if dims.cp * dims.tp <= a.gpus_per_node else net)
    fsdp_crosses = dims.dp_replicate * dims.fsdp * dims.tp > a.gpus_per_node
    fsdp_s = comm["fsdp"] / (net if fsdp_crosses else nvlink)
    step = compute + tp_s + cp_s + max(0.0, fsdp_s - compute)
    samples_s = dims.dp / step
    return {"compute_s": compute, "tp_s": tp_s, "cp_s": cp_s, "fsdp_s": fsdp_s,
            "fsdp_exposed_s": max(0.0, fsdp_s - compute), "step_s": step,
            "samples_per_s": samples_s, "tokens_per_s": samples_s * sh.S,
            "mfu": flops * dims.dp / (step * a.world * a.peak_tflops * 1e12),
            "recompute_fraction": rf}


def plan(a) -> tuple[list[dict], list[str]]:
    args = model_args_for(a.model, a.attention_pattern, a.spatial_window,
                          a.spatiotemporal_window)
    grid = grid_for(args, a.seq_len)
    layouts, skipped = valid_layouts(args, a.world, a.seq_len, a.tp, a.cp, a.gpus_per_node)
    if not layouts:
        raise SystemExit("no valid layout: " + "; ".join(skipped))
    limit = a.headroom * a.gpu_mem_gb * GB
    rows = []
    with fake_world(a.world):
        for tp, cp in layouts:
            t0 = time.perf_counter()
            dims = layout_dims(a.world, tp, cp)
            dims.validate_model(args.n_heads, args.ffn_dim)
            mesh = dims.build_mesh("cpu")
            sh = Shape(S=a.seq_len, D=args.dim, F=args.ffn_dim, N=args.n_heads, L=a.text_len,
                       layers=args.n_layers, tp=tp, cp=cp, b=2)
            static = None
            for ac in a.ac:
                mode, k = ac, 0
                if ac == "budget":
                    if static is None:  # the state does not depend on AC: read it once
                        static = sharded_state_bytes(sharded_model(args, dims, mesh, "full"),
                                                     args.n_layers)
                    k = full_blocks_for_budget(sh, limit, state_and_buffers_gb(static) * GB,
                                               table_bytes=2)
                    if k is None or k in (0, args.n_layers):
                        continue  # nothing fits, or plain selective / full already does
                    mode = "selective"
                static = sharded_state_bytes(sharded_model(args, dims, mesh, mode, k),
                                             args.n_layers)
                mem = layout_memory(static, args, dims, a.seq_len, a.text_len, mode, k)
                comm = comm_bytes_per_rank(sh, dims.fsdp, dims.dp_replicate,
                                           static["block_params_per_tp_rank"] * args.n_layers,
                                           mode, cp_kv_ranks=cp_kv_ranks(args, grid, cp))
                row = {"model": a.model, "world": a.world, "dp_replicate": dims.dp_replicate,
                       "dp_shard": dims.dp_shard, "cp": cp, "tp": tp, "ac": ac,
                       "ac_full_blocks": k, "tokens": a.seq_len, "text_tokens": a.text_len,
                       **mem,
                       f"fits_{a.gpu_mem_gb:g}gb": mem["total_gb"] * GB < limit,
                       "comm_gb": {key: ([x / GB for x in v] if isinstance(v, list) else v / GB)
                                   for key, v in comm.items()},
                       **step_time(a, args, dims, sh, mode, k, comm)}
                row["fits"] = row[f"fits_{a.gpu_mem_gb:g}gb"]
                rows.append(row)
            print(f"  parallelized tp={tp} cp={cp} ({len(a.ac)} AC modes) in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return rows, skipped


def block_mb(per_block_gb: list) -> str:
    """CP MB one block sends forward: one figure, or spatial / spatiotemporal ones."""
    kinds = list(dict.fromkeys(round(1e3 * x, 1) for x in per_block_gb[:2]))
    return " / ".join(f"{x:g}" for x in kinds)


def best(rows):
    fitting = [r for r in rows if r["fits"]]
    return max(fitting, key=lambda r: r["samples_per_s"]) if fitting else None


def ac_name(r) -> str:
    return f"budget ({r['ac_full_blocks']} full)" if r["ac"] == "budget" else r["ac"]


def table(rows, gpu_mem_gb) -> list[str]:
    head = ("| rank | dp_shard | cp | tp | AC | params/rank | state GB | fsdp buf GB | act GB | "
            f"total GB | fits {gpu_mem_gb:g}GB | step s | samples/s | MFU | FSDP GB | TP GB | "
            "CP GB | CP MB/block | ring GB | Ulysses GB |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    order = sorted(rows, key=lambda r: (not r["fits"], -r["samples_per_s"]))
    for i, r in enumerate(order):
        c = r["comm_gb"]
        state = r["param_gb"] + r["grad_gb"] + r["optimizer_gb"]
        lines.append(
            f"| {i + 1 if r['fits'] else '-'} | {r['dp_shard']} | {r['cp']} | {r['tp']} | "
            f"{ac_name(r)} | {r['params_per_rank'] / 1e6:.2f}M | {state:.2f} | "
            f"{r['fsdp_buffer_gb']:.2f} | {r['activation_gb']:.1f} | {r['total_gb']:.1f} | "
            f"{'yes' if r['fits'] else 'no'} | {r['step_s']:.2f} | {r['samples_per_s']:.1f} | "
            f"{100 * r['mfu']:.0f}% | {c['fsdp']:.1f} | {c['tp']:.1f} | {c['cp']:.1f} | "
            f"{block_mb(c['cp_block_forward'])} | "
            f"{c['ring_attention']:.1f} | {c['ulysses']:.1f} |")
    return lines


def compare_table(rows, compare: list[str]) -> list[str]:
    """Named layouts (LABEL=TP,CP) side by side with the planner's pick, every AC mode."""
    picks = [("planner's pick", best(rows))] if best(rows) else []
    for item in compare:
        label, tp_cp = item.rsplit("=", 1)
        tp, cp = (int(x) for x in tp_cp.split(","))
        picks += [(label, r) for r in rows if (r["tp"], r["cp"]) == (tp, cp)]
    lines = ["| layout | tp | cp | dp_shard | AC | total GB | fits | step s | samples/s | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in picks:
        lines.append(f"| {label} | {r['tp']} | {r['cp']} | {r['dp_shard']} | {ac_name(r)} | "
                     f"{r['total_gb']:.1f} | {'yes' if r['fits'] else 'no'} | {r['step_s']:.2f} | "
                     f"{r['samples_per_s']:.1f} | {100 * r['mfu']:.0f}% |")
    return lines


def describe(r) -> str:
    return (f"tp {r['tp']} x cp {r['cp']} x dp_shard {r['dp_shard']}, AC {ac_name(r)}: "
            f"{r['total_gb']:.1f} GB per GPU, {r['step_s']:.2f} s per step, "
            f"{r['samples_per_s']:.1f} samples/s, MFU {100 * r['mfu']:.0f}%")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=["30b", "7b", "5b", "1b"])
    ap.add_argument("--world", type=int, required=True, help="GPUs")
    ap.add_argument("--seq_len", type=int, required=True, help="video tokens per sample")
    ap.add_argument("--text_len", type=int, default=768,
                    help="text tokens (default 768: UL2 + ByT5 + MetaCLIP, 256 each)")
    ap.add_argument("--gpu_mem_gb", type=float, default=80, help="80 (H100) or 141 (H200)")
    ap.add_argument("--headroom", type=float, default=0.9,
                    help="fraction of the GPU memory a layout may plan for")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--cp", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--ac", nargs="+", default=list(AC_CHOICES), choices=AC_CHOICES)
    ap.add_argument("--gpus_per_node", type=int, default=8)
    ap.add_argument("--attention_pattern", default="full", choices=["full", "window"],
                    help="window: W.A.L.T spatial / spatiotemporal windows on alternate blocks "
                         "(the grid: 48 x 48 patches per frame, 768px)")
    ap.add_argument("--spatial_window", type=int, nargs=2, default=[16, 16], metavar=("H", "W"))
    ap.add_argument("--spatiotemporal_window", type=int, nargs=3, default=[8, 8, 8],
                    metavar=("T", "H", "W"))
    ap.add_argument("--peak_tflops", type=float, default=989.0,
                    help="dense bf16 peak per GPU (H100 SXM: 989)")
    ap.add_argument("--compute_efficiency", type=float, default=0.5,
                    help="fraction of the peak the kernels reach")
    ap.add_argument("--nvlink_gbps", type=float, default=450.0,
                    help="GB/s per GPU inside a node, one direction (H100 NVLink4: 450)")
    ap.add_argument("--net_gbps", type=float, default=50.0,
                    help="GB/s per GPU between nodes (one 400 Gb/s NIC per GPU: 50)")
    ap.add_argument("--compare", nargs="*", default=[], metavar="LABEL=TP,CP",
                    help="layouts to show side by side with the pick, e.g. 'Movie Gen=8,4'")
    ap.add_argument("--output", default=None,
                    help="JSON file (a .md table is written beside it; default "
                         "runs/plan/plan_<model>_<world>_<seq_len>.json)")
    ap.add_argument("--update_results", dest="update_results", action="store_true",
                    help="write the committed benchmarks/results/plan_<model>_<world>.* instead")
    a = ap.parse_args(argv)
    for item in a.compare:
        label, _, tp_cp = item.rpartition("=")
        parts = tp_cp.split(",")
        if not label or len(parts) != 2 or not all(p.isdigit() for p in parts):
            ap.error(f"--compare {item!r}: expected LABEL=TP,CP, e.g. 'Movie Gen 768px=8,4'")
        if int(parts[0]) not in a.tp or int(parts[1]) not in a.cp:
            ap.error(f"--compare {item!r}: tp {parts[0]} / cp {parts[1]} must be among --tp / --cp")
    for key in ("world", "seq_len", "gpus_per_node"):
        if getattr(a, key) < 1:
            ap.error(f"--{key} must be >= 1")
    if a.update_results:
        a.output = os.path.join(ROOT, f"benchmarks/results/plan_{a.model}_{a.world}.json")
    elif a.output is None:
        a.output = os.path.join("runs", "plan", f"plan_{a.model}_{a.world}_{a.seq_len}.json")
    if not a.output.endswith(".json"):
        ap.error(f"--output {a.output}: give a .json file name")
    return a


def main(argv=None):
    a = parse(argv)
    warnings.filterwarnings("ignore")
    rows, skipped = plan(a)
    lines = table(rows, a.gpu_mem_gb)
    top = best(rows)
    title = (f"{a.model.upper()} at {a.seq_len:,} tokens (+{a.text_len} text) on {a.world} GPUs "
             f"of {a.gpu_mem_gb:g} GB")
    print(f"\n{title} (one sample per CP x TP group; GB = 1e9 bytes; comm = GB sent per rank "
          f"per step)")
    print("\n".join(lines))
    print("\nbest layout: " + (describe(top) if top else "none fits; add GPUs, cp or AC"))
    side = compare_table(rows, a.compare) if a.compare else []
    if side:
        print("\n" + "\n".join(side))
    command = "python benchmarks/plan.py " + " ".join(shlex.quote(x) for x in
                                                        (argv if argv is not None else sys.argv[1:]))
    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (no GPU used)",
            "torch": torch.__version__, "command": command,
            "assumptions": {k: getattr(a, k) for k in ("gpu_mem_gb", "headroom", "gpus_per_node",
                                                       "peak_tflops", "compute_efficiency",
                                                       "nvlink_gbps", "net_gbps")}}
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump({"model": a.model, "world": a.world, "tokens": a.seq_len,
                   "text_tokens": a.text_len, **meta, "skipped": skipped,
                   "best": top, "layouts": rows}, f, indent=1)
    with open(a.output[:-len(".json")] + ".md", "w") as f:
        f.write(f"# {title}\n\n`{command}` on {meta['machine']}, torch {meta['torch']}: "
                "sharded meta tensors on a fake process group plus the activation and step-time "
                "models of moviegen/parallel/memory_model.py; no GPU was used.\n\n")
        f.write("Best layout: " + (describe(top) if top else "none fits") + ".\n\n")
        if side:
            f.write("Side by side:\n\n" + "\n".join(side) + "\n\nAll layouts:\n\n")
        f.write("\n".join(lines) + "\n\n")
        f.write("How to read the table." + __doc__.split("How to read the table.")[1]
                .split("Writes ")[0])
        f.write("Step time." + __doc__.split("Step time")[1].split("How to read")[0])
    print(f"wrote {a.output} and its .md", file=sys.stderr)
    return rows, top


if __name__ == "__main__":
    main()

"""Training-step throughput and MFU of the transformer on one device, side by side.

    python benchmarks/throughput.py                         # CPU: tiny, torch kernels, AC modes
    python benchmarks/throughput.py --model 30b --n_layers 2 --seq_len 73728 \\
        --ac none,full --kernels torch,triton               # GPU: a 30B-width slice

One full training step (forward, backward, AdamW) per timing, after warm-up, for every
combination of --kernels x --ac x --compile in one run. Reports tokens/s, model TFLOP/s
(moviegen.models.flops: recomputation not credited), MFU against 989 TFLOP/s dense bf16 (H100
SXM; also used for H200, whose dense bf16 peak is the same) on CUDA, and peak memory
(CUDA: peak allocated; CPU: the process's peak RSS, which AC modes barely move).
Writes --output (JSON, and a Markdown table beside it; default
runs/benchmarks/throughput_<device>.json); --update_results writes the committed
benchmarks/results/throughput_<device>.* instead.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time

# the repository root first, so a checkout runs without being installed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from moviegen.models.flops import device_peak_tflops, flops_per_sample  # noqa: E402
from moviegen.training.metrics import max_memory_gb  # noqa: E402
from moviegen.models.transformer import MODEL_REGISTRY, ModelArgs, MovieGenTransformer  # noqa: E402
from moviegen.parallel.activation_checkpoint import apply_activation_checkpointing  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def grid_for(seq_len: int) -> tuple[int, int, int]:
    """A (t, h, w) patch grid with t*h*w == seq_len, as square as possible in h, w."""
    for t in (32, 16, 8, 4, 2, 1):
        if seq_len % t == 0:
            hw = seq_len // t
            h = int(math.isqrt(hw))
            while hw % h:
                h -= 1
            if h > 1 or t == 1:
                return t, h, hw // h
    return 1, 1, seq_len


def run_case(args, device, dtype, kernels: str, ac: str, compile_: bool) -> dict:
    base = dict(MODEL_REGISTRY[args.model])
    if args.n_layers:
        base["n_layers"] = args.n_layers
    t, h, w = grid_for(args.seq_len)
    margs = ModelArgs(**base, in_channels=16, patch_size=(1, 2, 2), max_t=t, max_h=h, max_w=w,
                      text_dims={"byt5": 64}, kernels=kernels)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = MovieGenTransformer(margs)
    if ac != "none":
        apply_activation_checkpointing(model, ac)
    model.to_empty(device=device)
    model.init_weights()
    model.set_kernel_backend(kernels, device)
    if compile_:
        for name, block in model.blocks.items():
            model.blocks[name] = torch.compile(block)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    B, L = args.batch, args.text_len
    x = torch.randn(B, 16, t, 2 * h, 2 * w, device=device)
    tt = torch.rand(B, device=device)
    emb = {"byt5": torch.randn(B, L, 64, device=device)}
    mask = {"byt5": torch.ones(B, L, dtype=torch.bool, device=device)}
    target = torch.randn_like(x)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type, enabled=False)

    def step():
        with autocast:
            out = model(x, tt, emb, mask)
        loss = (out.float() - target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    step_s = (time.perf_counter() - t0) / args.iters
    flops = flops_per_sample(margs, args.seq_len, L)["total"] * B
    tflops = flops / step_s / 1e12
    peak, peak_name = device_peak_tflops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    row = {"model": args.model, "n_layers": margs.n_layers, "dim": margs.dim, "seq_len": args.seq_len,
           "batch": B, "kernels": model.blocks["0"].attn_norm.backend, "ac": ac, "compile": compile_,
           "dtype": str(dtype).replace("torch.", ""), "step_s": step_s,
           "tokens_per_s": B * args.seq_len / step_s, "tflops": tflops,
           "mfu": tflops / peak if peak else None, "peak": peak_name, "peak_mem_gb": max_memory_gb(device)}
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=list(MODEL_REGISTRY))
    ap.add_argument("--n_layers", type=int, default=None, help="override depth (a slice of a big model)")
    ap.add_argument("--seq_len", type=int, default=None, help="video tokens (default: 96 on CPU, 8192 on GPU)")
    ap.add_argument("--text_len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--kernels", default="torch", help="comma list of torch,triton")
    ap.add_argument("--ac", default="none,selective,full", help="comma list of none,selective,full")
    ap.add_argument("--compile", default="off", help="comma list of off,on")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--output", default=None,
                    help="JSON file (markdown beside it); default runs/benchmarks/throughput_<device>.json")
    ap.add_argument("--update_results", dest="update_results", action="store_true",
                    help="write the committed benchmarks/results/throughput_<device>.* instead")
    a = ap.parse_args(argv)
    if a.output is not None and not a.output.endswith(".json"):
        ap.error(f"--output {a.output}: give a .json file name")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a.seq_len = a.seq_len or (8192 if device.type == "cuda" else 96)
    a.batch = a.batch or (1 if device.type == "cuda" else 8)
    rows = []
    for kernels, ac, comp in itertools.product(a.kernels.split(","), a.ac.split(","), a.compile.split(",")):
        try:
            rows.append(run_case(a, device, dtype, kernels, ac, comp == "on"))
        except Exception as e:  # a case that cannot run here (OOM, no triton) is reported
            rows.append({"kernels": kernels, "ac": ac, "compile": comp == "on",
                         "error": f"{type(e).__name__}: {e}"[:300]})
        r = rows[-1]
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{os.cpu_count()}cores"
    tag = "cuda" if device.type == "cuda" else "cpu"
    meta = {"device": name, "torch": torch.__version__, "platform": platform.platform(),
            "command": " ".join(["python benchmarks/throughput.py",
                                 *(argv if argv is not None else sys.argv[1:])])}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    if a.update_results:
        a.output = os.path.join(RESULTS, f"throughput_{tag}.json")
    elif a.output is None:
        a.output = os.path.join("runs", "benchmarks", f"throughput_{tag}.json")
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Training-step throughput ({name})", "",
             f"Command: `{meta['command']}`; torch {meta['torch']}, triton {meta['triton']}.", "",
             "| model | layers | seq | batch | kernels | AC | compile | step s | tokens/s | TFLOP/s | MFU | peak mem GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| | | | | {r['kernels']} | {r['ac']} | {r['compile']} | {r['error']} | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['model']} | {r['n_layers']} | {r['seq_len']} | {r['batch']} | {r['kernels']} | "
                     f"{r['ac']} | {r['compile']} | {r['step_s']:.4f} | {r['tokens_per_s']:.0f} | "
                     f"{r['tflops']:.4f} | {mfu} | {r['peak_mem_gb']:.2f} |")
    with open(a.output[:-len(".json")] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {a.output} and its .md", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()

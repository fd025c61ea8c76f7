"""Kernel benchmark: each Triton kernel vs eager torch and torch.compile of its reference,
flash attention vs every available SDPA backend; forward, backward, forward+backward.

    python benchmarks/kernel_bench.py                 # full run (GPU only), ~5-10 min on an H100
    python benchmarks/kernel_bench.py --quick         # smaller shapes, a smoke run
    python benchmarks/kernel_bench.py --check         # bf16/fp16 correctness of every kernel vs the
                                                 # float64 reference (bf16 cannot be checked on CPU)
    python benchmarks/kernel_bench.py --compile_only --arch sm_90a --output FILE.json
        # no GPU needed: every kernel x every autotune config built to a cubin for sm_90a;
        # registers, spill bytes and shared memory per config (moviegen/kernels/compile_report.py)

Units: GB/s for the memory-bound kernels (bytes = each input read once + each output
written once, user-visible tensors only), next to the device-to-device copy bandwidth
measured in the same run; TFLOP/s for attention (4*B*H*Sq*Sk*E forward, 2.5x that
backward, 3.5x forward+backward). Writes <--out_dir>/kernels_<device>.json and .md
(device, torch and triton versions, the command; default folder runs/benchmarks);
--update_results writes them to the committed benchmarks/results/ instead.

Targets on H100 (figures, not assertions): adaLN and position add >= 85% of the
copy bandwidth and faster than torch.compile; attention fwd+bwd at E=128, S 8k..73k at
least equal to the fastest SDPA backend.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compile_only", action="store_true",
                   help="build every kernel x autotune config for --arch without a GPU; write --output")
    p.add_argument("--arch", default="sm_90a", help="target of --compile_only (sm_90a: H100/H200)")
    p.add_argument("--output", default=None, help="JSON file of --compile_only (markdown beside it)")
    p.add_argument("--subset", action="store_true", help="--compile_only: one config per kernel (fast)")
    p.add_argument("--dry_run", action="store_true",
                   help="with --check: toy sizes on CPU under TRITON_INTERPRET=1")
    p.add_argument("--check", action="store_true",
                   help="verify every Triton kernel against the float64 reference in bf16 and fp16, then exit")
    p.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--dims", default="6144,3072", help="model widths D for the memory-bound kernels")
    p.add_argument("--tokens", type=int, default=73728, help="tokens per sample S for the memory-bound kernels")
    p.add_argument("--seqs", default="8192,16384,32768,73728", help="attention sequence lengths")
    p.add_argument("--heads", type=int, default=16, help="attention heads (head dim 128)")
    p.add_argument("--attn_tokens", type=int, default=131072,
                   help="batch = max(1, attn_tokens // seq): keeps work per row comparable")
    p.add_argument("--ops", default="modnorm,gated,posembed,attention,cross_attention",
                   help="comma list of ops to run")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--out_dir", default=os.path.join("runs", "benchmarks"),
                   help="folder for the JSON and markdown results")
    p.add_argument("--update_results", dest="update_results", action="store_true",
                   help="write to the committed benchmarks/results/ instead of --out_dir")
    args = p.parse_args(argv)
    if args.update_results:
        args.out_dir = os.path.join(ROOT, "benchmarks", "results")
    return args


# ----------------------------------------------------------------------------- timing

def bench_ms(fn, grad_to_none=None):
    import triton.testing
    fn()  # first call: autotuning / compilation outside the timed region
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth_gbs(numel: int, dtype) -> float:
    src = torch.empty(numel, device="cuda", dtype=dtype).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def time_passes(fwd, inputs):
    """ms for fwd, bwd (graph built once, retained), fwd+bwd. fwd returns a tensor or tuple."""
    def as_tuple(o):
        return o if isinstance(o, tuple) else (o,)

    outs = as_tuple(fwd())
    grads = [torch.randn_like(o) for o in outs]
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    with torch.no_grad():
        ms_f = bench_ms(fwd)
    ms_b = bench_ms(lambda: torch.autograd.backward(outs, grads, retain_graph=True), grad_to_none=leaves)
    ms_fb = bench_ms(lambda: torch.autograd.backward(as_tuple(fwd()), grads), grad_to_none=leaves)
    return {"fwd": ms_f, "bwd": ms_b, "fwd+bwd": ms_fb}


# ----------------------------------------------------------------------------- memory-bound ops

def memory_bound_cases(args, dtype):
    """Yields (op, shape_str, {impl: fn}, inputs, bytes_per_pass)."""
    from moviegen.kernels import reference
    from moviegen.kernels import modulation, pos_embed
    ops = set(args.ops.split(","))
    S = 4096 if args.quick else args.tokens
    for D in [int(d) for d in args.dims.split(",")]:
        B = 1
        mk = lambda *s: torch.randn(*s, device="cuda", dtype=dtype).requires_grad_()  # noqa: E731
        x, h = mk(B, S, D), mk(B, S, D)
        w, scale, shift, gate = mk(D), mk(B, D), mk(B, D), mk(B, D)
        shape = f"B{B} S{S} D{D}"
        if "modnorm" in ops:
            ref = lambda: reference.modulated_rms_norm_reference(x, w, scale, shift, 1e-6)  # noqa: E731
            io_f = nbytes(x, w, scale, shift) + nbytes(x)
            io_b = nbytes(x, x, w, scale) + nbytes(x, w, scale, shift)  # dy, x, w, scale -> dx, dw, dscale, dshift
            yield ("modulated_rms_norm", shape,
                   {"triton": lambda: modulation.modulated_rms_norm(x, w, scale, shift, 1e-6), "eager": ref},
                   [x, w, scale, shift], {"fwd": io_f, "bwd": io_b, "fwd+bwd": io_f + io_b})
        if "gated" in ops:
            io_f = nbytes(x, gate, h) + nbytes(x)
            io_b = nbytes(x, gate, h) + nbytes(h, gate)  # d_out, gate, h -> dh, dgate (dx = d_out)
            yield ("gated_residual", shape,
                   {"triton": lambda: modulation.gated_residual(x, gate, h),
                    "eager": lambda: reference.gated_residual_reference(x, gate, h)},
                   [x, gate, h], {"fwd": io_f, "bwd": io_b, "fwd+bwd": io_f + io_b})
        if "posembed" in ops:
            # the 768px grid: 32 x 48 x 48 = 73,728 tokens (a prefix of it with --quick/--tokens)
            T, Hh, W = 32, 48, 48
            pt, ph, pw = mk(T, D), mk(3 * Hh, D), mk(3 * W, D)
            grid = (T, Hh, W)
            tables_used = D * (T + Hh + W) * x.element_size()
            io_f = nbytes(x) + tables_used + nbytes(x)
            io_b = nbytes(x) + nbytes(pt, ph, pw)  # d_out -> table grads (dx = d_out)
            yield ("add_factorized_pos_embed", shape + f" grid{grid}",
                   {"triton": lambda: pos_embed.add_factorized_pos_embed(x, pt, ph, pw, grid, 0),
                    "eager": lambda: reference.add_factorized_pos_embed_reference(x, pt, ph, pw, grid, 0)},
                   [x, pt, ph, pw], {"fwd": io_f, "bwd": io_b, "fwd+bwd": io_f + io_b})


def run_memory_bound(args, dtype, copy_gbs, rows):
    for op, shape, impls, inputs, io in memory_bound_cases(args, dtype):
        if not args.no_compile:
            impls["compile"] = torch.compile(impls["eager"], dynamic=False)
        for impl, fn in impls.items():
            try:
                times = time_passes(fn, inputs)
            except Exception as e:  # a baseline that fails must not stop the run
                rows.append({"op": op, "shape": shape, "impl": impl, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            for pass_, ms in times.items():
                gbs = io[pass_] / ms / 1e6
                rows.append({"op": op, "shape": shape, "impl": impl, "pass": pass_, "ms": ms,
                             "GB/s": gbs, "pct_of_copy": 100 * gbs / copy_gbs})
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- attention

def sdpa_impls(mask_4d):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    impls = {}
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def fn(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask_4d)
        impls[name] = fn
    return impls


def _with_env(fn, name: str, value: str):
    """fn run with one environment switch set (restored afterwards)."""
    def wrapped(*a, **kw):
        saved = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(*a, **kw)
        finally:
            if saved is None:
                del os.environ[name]
            else:
                os.environ[name] = saved
    return wrapped


def _without_tma(fn):
    """The pointer-load forward (what non-Hopper GPUs run), for comparison with TMA."""
    return _with_env(fn, "MOVIEGEN_ATTN_TMA", "0")


def _deterministic(fn):
    """The backward with dQ from its own pass instead of atomic adds."""
    return _with_env(fn, "MOVIEGEN_ATTN_DETERMINISTIC", "1")


def run_attention(args, dtype, rows):
    from moviegen.kernels.flash_attention import flash_attention
    ops = set(args.ops.split(","))
    E, H = 128, args.heads
    cases = []
    if "attention" in ops:
        for S in ([2048, 4096] if args.quick else [int(s) for s in args.seqs.split(",")]):
            cases.append(("self_attention", max(1, args.attn_tokens // S), S, S, False))
    if "cross_attention" in ops:  # video queries to padded text keys (UL2 + ByT5 + MetaCLIP)
        S = 4096 if args.quick else 73728
        cases.append(("cross_attention_masked", 1, S, 512, True))
    for op, B, S, L, masked in cases:
        mk = lambda n: torch.randn(B, H, n, E, device="cuda", dtype=dtype).requires_grad_()  # noqa: E731
        q, k, v = mk(S), mk(L), mk(L)
        mask = None
        if masked:
            mask = torch.ones(B, L, device="cuda", dtype=torch.bool)
            mask[:, L * 3 // 4:] = False
        impls = {"triton": lambda q, k, v: flash_attention(q, k, v, mask),
                 "triton_no_tma": _without_tma(lambda q, k, v: flash_attention(q, k, v, mask)),
                 "triton_deterministic": _deterministic(lambda q, k, v: flash_attention(q, k, v, mask))}
        impls.update(sdpa_impls(mask[:, None, None, :] if mask is not None else None))
        flops_f = 4 * B * H * S * L * E
        flops = {"fwd": flops_f, "bwd": 2.5 * flops_f, "fwd+bwd": 3.5 * flops_f}
        shape = f"B{B} H{H} Sq{S} Sk{L} E{E}" + (" masked" if masked else "")
        for impl, fn in impls.items():
            try:
                times = time_passes(lambda fn=fn: fn(q, k, v), [q, k, v])
            except Exception as e:
                rows.append({"op": op, "shape": shape, "impl": impl, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            for pass_, ms in times.items():
                rows.append({"op": op, "shape": shape, "impl": impl, "pass": pass_, "ms": ms,
                             "TFLOP/s": flops[pass_] / ms / 1e9})
        del q, k, v
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- --check

def run_check(device: str = "cuda", dtypes=(torch.bfloat16, torch.float16), small: bool = False,
              out_dir: str | None = None) -> int:
    """bf16/fp16 outputs and gradients of every kernel vs the float64 reference on the GPU.

    (``small`` shrinks the shapes so tests can run this harness in the CPU interpreter.)"""
    from moviegen.kernels import modulation, pos_embed, reference
    from moviegen.kernels.flash_attention import flash_attention
    # max |error| relative to max(1, max |reference|): bf16 keeps 8 mantissa bits, fp16 11
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}
    failures, lines = 0, []

    def compare(name, dtype, fn, ref_fn, inputs):
        nonlocal failures
        torch.manual_seed(0)
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        cots = [torch.randn_like(o) for o in outs]
        leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        grads = torch.autograd.grad(outs, leaves, cots)
        ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor)
                      and t.is_floating_point() else t for t in inputs]
        ref_outs = ref_fn(*ref_inputs)
        ref_outs = ref_outs if isinstance(ref_outs, tuple) else (ref_outs,)
        ref_leaves = [t for t in ref_inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        ref_grads = torch.autograd.grad(ref_outs, ref_leaves, [c.double() for c in cots])
        for i, (a, b) in enumerate(list(zip(outs, ref_outs)) + list(zip(grads, ref_grads))):
            what = f"out{i}" if i < len(outs) else f"grad{i - len(outs)}"
            # gradients summed over many tokens grow with their count: tolerance relative to scale
            scale = max(1.0, b.abs().max().item())
            err = (a.double() - b).abs().max().item()
            ok = bool(torch.isfinite(a).all()) and err <= tol[dtype] * scale
            failures += not ok
            lines.append(f"{'ok  ' if ok else 'FAIL'} {name:<42} {str(dtype):<15} {what:<6} "
                         f"max|err| {err:.3e}  max|ref| {b.abs().max().item():.3e}")

    dev = device
    for dtype in dtypes:
        r = lambda *s: torch.randn(*s, device=dev, dtype=dtype).requires_grad_()  # noqa: E731
        B, S, D = (2, 40, 48) if small else (2, 1000, 3072)
        compare("modulated_rms_norm", dtype, lambda *a: modulation.modulated_rms_norm(*a, 1e-6),
                lambda *a: reference.modulated_rms_norm_reference(*a, 1e-6), [r(B, S, D), r(D), r(B, D), r(B, D)])
        compare("gated_residual", dtype, modulation.gated_residual, reference.gated_residual_reference,
                [r(B, S, D), r(B, D), r(B, S, D)])

        grid, offset = ((2, 4, 6), 5) if small else ((4, 16, 24), 333)
        compare(f"add_factorized_pos_embed (shard, offset {offset})", dtype,
                lambda x, a, b, c: pos_embed.add_factorized_pos_embed(x, a, b, c, grid, offset),
                lambda x, a, b, c: reference.add_factorized_pos_embed_reference(x, a, b, c, grid, offset),
                [r(B, S, D), r(8, D), r(32, D), r(48, D)])
        for E in ((32,) if small else (64, 128)):
            Bq, H, Sq, Sk = (3, 1, 20, 37) if small else (3, 4, 1000, 1537)
            Sfull = 32 if small else 2048
            mask = torch.rand(Bq, Sk, device=dev) > 0.3
            mask[1] = False  # a sample with no real key
            # forward kernels: the default choice (TMA on sm90+) and the pointer one
            for tma in ("auto", "0"):
                fa_fn = _without_tma(flash_attention) if tma == "0" else flash_attention
                tag = " (pointer fwd)" if tma == "0" else ""
                compare(f"flash_attention E{E} masked{tag}", dtype,
                        lambda q, k, v, fa_fn=fa_fn: fa_fn(q, k, v, mask),
                        lambda q, k, v: reference.attention_reference(q, k, v, mask),
                        [r(Bq, H, Sq, E), r(Bq, H, Sk, E), r(Bq, H, Sk, E)])
                compare(f"flash_attention E{E}{tag}", dtype, fa_fn, reference.attention_reference,
                        [r(1, H, Sfull, E), r(1, H, Sfull, E), r(1, H, Sfull, E)])

                keep = mask.clone()
                keep[1, 0] = True  # LSE gradients need a real key in every row

                def lse_ref(q, k, v):  # log-sum-exp over the real keys
                    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
                    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
                    return reference.attention_reference(q, k, v, keep), torch.logsumexp(scores, -1)
                compare(f"flash_attention E{E} masked +LSE{tag}", dtype,
                        lambda q, k, v, fa_fn=fa_fn: fa_fn(q, k, v, keep, return_lse=True),
                        lse_ref, [r(Bq, H, Sq, E), r(Bq, H, Sk, E), r(Bq, H, Sk, E)])
            # the backward's other dQ mode (its own pass, no atomics)
            compare(f"flash_attention E{E} masked (deterministic dQ)", dtype,
                    _deterministic(lambda q, k, v: flash_attention(q, k, v, mask)),
                    lambda q, k, v: reference.attention_reference(q, k, v, mask),
                    [r(Bq, H, Sq, E), r(Bq, H, Sk, E), r(Bq, H, Sk, E)])
    import moviegen.kernels.flash_attention as fa
    lines.append(f"TMA forward used where eligible: {fa._use_tma(torch.empty(16, 16, device=dev))} "
                 f"(classes that fell back after an error: {sorted(map(str, fa._TMA_FAILED))})")
    print("\n".join(lines))
    print(f"\n{failures} failure(s)" if failures else "\nall kernels match the float64 reference")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "check.json"), "w") as f:
            json.dump({"device": device, "failures": failures, "lines": lines}, f, indent=1)
        with open(os.path.join(out_dir, "check.md"), "w") as f:
            f.write(f"# Kernel correctness vs float64 ({device})\n\n```\n" + "\n".join(lines)
                    + f"\n```\n\n{failures} failure(s)\n")
    return 1 if failures else 0


# ----------------------------------------------------------------------------- report

def markdown(meta, rows) -> str:
    out = [f"# Kernel benchmark: {meta['device']}", "",
           f"- torch {meta['torch']}, triton {meta['triton']}, dtype {meta['dtype']}, {meta['date']}",
           f"- command: `{meta['command']}`",
           f"- device-to-device copy bandwidth (same run): {meta['copy_GB/s']:.0f} GB/s", "",
           "| op | shape | impl | pass | ms | GB/s | % copy BW | TFLOP/s |",
           "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['op']} | {r['shape']} | {r['impl']} | - | error: {r['error'][:80]} | | | |")
            continue
        fmt = lambda k, f: format(r[k], f) if k in r else ""  # noqa: E731
        out.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {r['pass']} | {r['ms']:.3f} | "
                   f"{fmt('GB/s', '.0f')} | {fmt('pct_of_copy', '.1f')} | {fmt('TFLOP/s', '.1f')} |")
    return "\n".join(out + summary(rows)) + "\n"


def summary(rows) -> list[str]:
    """Targets: % of copy bandwidth and speed-up over torch.compile for the
    memory-bound kernels; Triton vs the fastest SDPA backend for attention."""
    ok = [r for r in rows if "error" not in r]
    by = {(r["op"], r["shape"], r["impl"], r["pass"]): r for r in ok}
    out = ["", "## Targets", "", "| op | shape | pass | triton | reference point | ratio |", "|---|---|---|---:|---|---:|"]
    for r in ok:
        if r["impl"] != "triton":
            continue
        key = (r["op"], r["shape"])
        if "GB/s" in r:
            comp = by.get(key + ("compile", r["pass"]))
            ref = f"compile {comp['ms']:.3f} ms" if comp else "compile n/a"
            ratio = f"{comp['ms'] / r['ms']:.2f}x" if comp else ""
            out.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['pct_of_copy']:.1f}% of copy BW | "
                       f"{ref} | {ratio} |")
        else:
            sdpa = [by[k] for k in by if k[:2] == key and k[2].startswith("sdpa") and k[3] == r["pass"]]
            if sdpa:
                best = max(sdpa, key=lambda x: x["TFLOP/s"])
                out.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['TFLOP/s']:.0f} TFLOP/s | "
                           f"{best['impl']} {best['TFLOP/s']:.0f} TFLOP/s | {r['TFLOP/s'] / best['TFLOP/s']:.2f}x |")
            else:
                out.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['TFLOP/s']:.0f} TFLOP/s | no SDPA backend ran | |")
    return out


def run_compile_only(args) -> int:
    """Needs TRITON_INTERPRET unset/0 (set before the kernel modules import triton)."""
    import triton
    from moviegen.kernels import compile_report
    rows, bad = [], 0
    for case in compile_report.all_cases(subset=args.subset):
        row = compile_report.compile_case(case, args.arch)
        rows.append(row)
        issues = compile_report.problems(row)
        bad += bool(issues)
        print(f"{'ok  ' if not issues else 'FAIL'} {row['kernel']:<42} {row['config']:<58} "
              f"regs {row['registers']} spill {row['spill_bytes']} smem {row['shared_bytes']}"
              + (f"  {'; '.join(issues)}" if issues else ""), flush=True)
    meta = {"arch": args.arch, "triton": triton.__version__, "torch": torch.__version__,
            "command": args.command, "triton_path": os.path.dirname(triton.__file__),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "max_shared_bytes": compile_report.MAX_SHARED_BYTES, "failing_rows": bad}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        lines = [f"# Ahead-of-time build for {args.arch}: triton {meta['triton']}", "",
                 f"- command: `{meta['command']}` ({meta['date']})",
                 f"- {len(rows)} (kernel, config) rows, {bad} with a build error, spills or shared "
                 f"memory over {compile_report.MAX_SHARED_BYTES} B", "",
                 "| kernel | config | compiled | registers | spill bytes | shared bytes | mma | error |",
                 "|---|---|---|---:|---:|---:|---|---|"]
        lines += [f"| {r['kernel']} | {r['config']} | {r['compiled']} | {r['registers']} | "
                  f"{r['spill_bytes']} | {r['shared_bytes']} | {r.get('mma') or ''} | "
                  f"{(r['error'] or '')[:120]} |" for r in rows]
        with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.output}")
    print(f"{len(rows)} rows, {bad} failing")
    return 1 if bad else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    pythonpath = os.environ.get("PYTHONPATH")
    args.command = ((f"PYTHONPATH={pythonpath} " if pythonpath else "") + "python benchmarks/kernel_bench.py "
                    + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    if args.check and args.dry_run:  # toy sizes on CPU through the interpreter (fp16/fp32)
        return run_check(device="cpu", dtypes=(torch.float16, torch.float32), small=True,
                         out_dir=args.out_dir)
    if args.compile_only:
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            print("--compile_only builds real cubins: unset TRITON_INTERPRET", file=sys.stderr)
            return 2
        return run_compile_only(args)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_bench.py needs a CUDA GPU (the Triton kernels are only checked on CPU "
              "through TRITON_INTERPRET=1 by tests/test_kernels_*.py). Nothing to do here.", file=sys.stderr)
        return 2
    import triton
    if args.check:
        return run_check(out_dir=args.out_dir)
    dtype = DTYPES[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = True
    device_name = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth_gbs(1 << 29, dtype)  # 1 GiB in bf16
    print(f"{device_name}: device-to-device copy {copy_gbs:.0f} GB/s", flush=True)
    rows: list[dict] = []
    run_memory_bound(args, dtype, copy_gbs, rows)
    run_attention(args, dtype, rows)
    meta = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
            "dtype": args.dtype, "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "copy_GB/s": copy_gbs}
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, "kernels_" + re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_"))
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    table = markdown(meta, rows)
    with open(stem + ".md", "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

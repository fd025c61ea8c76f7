"""Ahead-of-time build of every kernel x every autotune config for a GPU we do not have.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` runs the whole Triton
pipeline down to a cubin without a driver; the cuobjdump that ships in the Triton wheel
reads registers and shared memory from the cubin, and ptxas -v (also shipped) the spill
bytes. One row per (kernel, config):

    kernel, config, compiled, registers, spill_bytes, shared_bytes, mma, error

(mma: the tensor-core instruction shapes in the PTX, e.g. wgmma m64n128k16.)

The cases are the ones the model launches: bf16 and fp16, attention head dims 64 and 128
with and without a key mask (every config each autotuner may try), the memory-bound kernels at widths D = 3072 and 6144.
Pointer and stride arguments are marked 16-divisible, as Triton specialises them at run
time for the model's tensors. Must be imported with TRITON_INTERPRET unset or 0.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

import triton

# Hopper's limit per block (227 KiB of the 228 KiB an SM has)
MAX_SHARED_BYTES = 227 * 1024
TORCH_TO_TRITON = {"bf16": "*bf16", "fp16": "*fp16"}


@dataclass
class Case:
    kernel: str
    fn: object  # the JITFunction
    types: dict  # argument name -> Triton type ("*bf16", "i32", "fp32")
    constexprs: dict  # argument name -> value (None for an absent optional pointer)
    num_warps: int
    num_stages: int = 1
    label: str = ""
    divisible: set = field(default_factory=set)


def _jit(fn):
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    return fn


def _config_label(constexprs: dict, num_warps: int, num_stages: int, keys) -> str:
    parts = [f"{k}={constexprs[k]}" for k in keys if k in constexprs]
    return " ".join(parts + [f"warps={num_warps}", f"stages={num_stages}"])


def memory_bound_cases(dtypes=("bf16", "fp16"), dims=(3072, 6144)):
    from . import modulation, pos_embed
    from ._utils import next_power_of_2, num_warps_for
    for dt in dtypes:
        p = TORCH_TO_TRITON[dt]
        for D in dims:
            bs, bd, w = modulation._row_tiling(D)
            wb = modulation._backward_warps(bs * bd, w)
            tile = {"BLOCK_S": bs, "BLOCK_D": bd}
            yield Case(f"modulated_rms_norm_fwd {dt} D{D}", modulation._modulated_rms_norm_fwd_kernel,
                       {"x_ptr": p, "w_ptr": p, "scale_ptr": p, "shift_ptr": p, "y_ptr": p,
                        "rstd_ptr": "*fp32", "S": "i32", "D": "i32", "eps": "fp32"},
                       {"HAS_WEIGHT": True, **tile}, w)
            yield Case(f"modulated_rms_norm_bwd {dt} D{D}", modulation._modulated_rms_norm_bwd_kernel,
                       {"dy_ptr": p, "x_ptr": p, "w_ptr": p, "scale_ptr": p, "rstd_ptr": "*fp32",
                        "dx_ptr": p, "dyn_part_ptr": "*fp32", "dy_part_ptr": "*fp32", "S": "i32",
                        "D": "i32", "rows_per_program": "i32"},
                       {"HAS_WEIGHT": True, **tile}, wb)
            yield Case(f"gated_residual_fwd {dt} D{D}", modulation._gated_residual_fwd_kernel,
                       {"x_ptr": p, "gate_ptr": p, "h_ptr": p, "out_ptr": p, "S": "i32", "D": "i32"},
                       tile, w)
            yield Case(f"gated_residual_bwd {dt} D{D}", modulation._gated_residual_bwd_kernel,
                       {"d_out_ptr": p, "gate_ptr": p, "h_ptr": p, "dh_ptr": p,
                        "d_gate_part_ptr": "*fp32", "S": "i32", "D": "i32", "rows_per_program": "i32"},
                       tile, wb)
            bd_f = min(next_power_of_2(D), 512)
            bs_f = max(1, min(64, 4096 // bd_f))
            yield Case(f"add_factorized_pos_embed_fwd {dt} D{D}", pos_embed._add_pos_embed_fwd_kernel,
                       {"x_ptr": p, "pos_t_ptr": p, "pos_h_ptr": p, "pos_w_ptr": p, "out_ptr": p,
                        **{n: "i32" for n in ("B", "S", "D", "H", "W", "token_offset")}},
                       {"BLOCK_S": bs_f, "BLOCK_D": bd_f}, num_warps_for(bs_f * bd_f))
            bw = next_power_of_2(48)  # the 768px grid's 48-token lines
            bd_b = max(16, min(next_power_of_2(D), 128, 8192 // bw))
            yield Case(f"add_factorized_pos_embed_bwd {dt} D{D}", pos_embed._add_pos_embed_bwd_kernel,
                       {"d_out_ptr": p, "d_pos_w_part_ptr": "*fp32", "d_line_ptr": "*fp32",
                        **{n: "i32" for n in ("B", "S", "D", "W", "token_offset", "first_line",
                                              "num_lines", "lines_per_program")}},
                       {"BLOCK_W": bw, "BLOCK_D": bd_b}, num_warps_for(bw * bd_b))


def attention_cases(dtypes=("bf16", "fp16"), head_dims=(64, 128), masks=(False, True),
                    kernels=("fwd", "fwd_tma", "preprocess", "dkdv_dq", "dkdv", "dq"),
                    max_configs=None):
    """dkdv_dq: the dK/dV kernel with dQ by atomic adds (the default backward); dkdv and dq:
    the deterministic backward's two kernels."""
    from . import flash_attention as fa
    tuned = {"fwd": fa._attn_fwd_kernel, "fwd_tma": fa._attn_fwd_tma_kernel,
             "dkdv_dq": fa._attn_bwd_dkdv_kernel, "dkdv": fa._attn_bwd_dkdv_kernel,
             "dq": fa._attn_bwd_dq_kernel}
    for dt in dtypes:
        p = TORCH_TO_TRITON[dt]
        for E in head_dims:
            for masked in masks:
                base = {"HEAD_DIM": E, "HAS_MASK": masked, "INPUT_PRECISION": "tf32"}
                absent = {} if masked else {"Mask": None, "KeyLen": None}
                tag = f"{dt} E{E}" + (" masked" if masked else "")
                for kind in kernels:
                    if kind == "preprocess":
                        types = {"Out": p, "DO": p, "DLse": "*fp32", "Delta": "*fp32",
                                 **{f"stride_{s}": "i32" for s in ("ob", "oh", "os", "db", "dh", "ds")},
                                 "H": "i32", "S_Q": "i32"}
                        yield Case(f"attn_bwd_preprocess {tag}", fa._attn_bwd_preprocess_kernel, types,
                                   {"HEAD_DIM": E, "HAS_DLSE": True, "BLOCK_M": 64}, 4)
                        continue
                    fn = _jit(tuned[kind])
                    extra = {"ATOMIC_DQ": kind == "dkdv_dq"} if kind.startswith("dkdv") else {}
                    for cfg in fa.tuned_configs(kind[:4] if kind.startswith("dkdv") else kind,
                                                E, masked)[:max_configs]:
                        types = {}
                        for name in fn.arg_names:
                            if name in base or name in cfg.kwargs or name in absent or name in extra:
                                continue
                            if name.startswith("stride_") or name in ("H", "B", "S_Q", "S_K", "TUNE_S_Q",
                                                                      "TUNE_S_K", "SPLIT"):
                                types[name] = "i32"
                            elif name in ("qk_scale", "sm_scale"):
                                types[name] = "fp32"
                            elif name in ("Lse", "Delta") or (name == "DQ" and kind == "dkdv_dq"):
                                types[name] = "*fp32"
                            elif name == "Mask":
                                types[name] = "*i8"
                            elif name == "KeyLen":
                                types[name] = "*i32"
                            else:
                                types[name] = p
                        consts = {**base, **absent, **extra, **cfg.kwargs}
                        yield Case(f"attn_{kind} {tag}", fn, types, consts, cfg.num_warps, cfg.num_stages,
                                   label=_config_label(cfg.kwargs, cfg.num_warps, cfg.num_stages,
                                                       list(cfg.kwargs)))


def _tool(name: str) -> str:
    from triton.backends.nvidia import compiler as nv
    if name == "ptxas":
        try:
            return nv.get_ptxas(90).path  # Triton >= 3.5 picks a ptxas per architecture
        except TypeError:
            return nv.get_ptxas().path
    return os.path.join(os.path.dirname(nv.__file__), "bin", name)


def compile_case(case: Case, arch: str = "sm_90a") -> dict:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = _jit(case.fn)
    capability = int(re.sub(r"\D", "", arch))
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in case.constexprs:
            signature[name] = "constexpr"
            constexprs[(i,)] = case.constexprs[name]
        elif name in case.types:
            signature[name] = case.types[name]
            if case.types[name].startswith("*") or name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise KeyError(f"{case.kernel}: no type for argument {name!r}")
    config = case.label or _config_label(case.constexprs, case.num_warps, case.num_stages,
                                         [k for k in case.constexprs if k.startswith("BLOCK")])
    row = {"kernel": case.kernel, "config": config, "compiled": False, "registers": None,
           "spill_bytes": None, "shared_bytes": None, "mma": None, "error": None}
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                                  target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    except Exception as e:  # noqa: BLE001: the row records it
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        return row
    row["compiled"] = True
    row["shared_bytes"] = int(compiled.metadata.shared)
    # the tensor-core instruction shapes (e.g. m64n128k16 per warpgroup): how wide each GEMM ran
    shapes = set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", compiled.asm["ptx"]))
    shapes |= {"mma." + m for m in re.findall(r"\bmma\.sync\.aligned\.(m\d+n\d+k\d+)", compiled.asm["ptx"])}
    row["mma"] = " ".join(sorted(shapes, key=lambda t: (len(t), t))) or None
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True,
                               text=True).stdout
        m = re.search(r"REG:(\d+).*?SHARED:(\d+)", usage)
        if m:
            row["registers"] = int(m.group(1))
            row["shared_bytes"] = max(row["shared_bytes"], int(m.group(2)))
        log = subprocess.run([_tool("ptxas"), "-v", f"--gpu-name={arch}", ptx, "-o",
                              os.path.join(tmp, "v.cubin")], capture_output=True, text=True)
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.stderr)
        if spills:
            row["spill_bytes"] = sum(int(a) + int(b) for a, b in spills)
        elif log.returncode:
            row["error"] = f"ptxas -v: {' '.join(log.stderr.split())[:200]}"
    return row


def problems(row: dict) -> list[str]:
    """What makes a row a failure: no build, spills, or too much shared memory."""
    out = []
    if not row["compiled"] or row["error"]:
        out.append(row["error"] or "not compiled")
    if row["spill_bytes"]:
        out.append(f"{row['spill_bytes']} spill bytes")
    if row["shared_bytes"] and row["shared_bytes"] > MAX_SHARED_BYTES:
        out.append(f"{row['shared_bytes']} B shared > {MAX_SHARED_BYTES}")
    return out


def all_cases(subset: bool = False):
    if subset:  # one dtype, the widest head dim and model width, the first configs
        yield from memory_bound_cases(dtypes=("bf16",), dims=(6144,))
        yield from attention_cases(dtypes=("bf16",), head_dims=(128,), masks=(True,), max_configs=1)
        return
    yield from memory_bound_cases()
    yield from attention_cases()

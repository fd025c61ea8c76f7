"""Parameters, FLOPs and tokens of a model size, as JSON (built on the meta device).

    python -m moviegen.info --model 30b --seq_len 73728
    python -m moviegen.info --model 30b --height 768 --width 768 --frames 256

    python -m moviegen.info --model 30b --world 6144 --tp 8 --cp 4 --ac selective

Parameters are counted from the module itself (no memory: meta device), with the real
text-encoder widths (UL2 4096, ByT5 1472, MetaCLIP 1024) for the large sizes. FLOPs per
training sample follow moviegen.models.flops (forward + backward, recomputation not credited).
``memory_per_gpu`` (GB = 1e9 bytes) for the layout given by --world/--dp_replicate/--cp/
--tp/--ac: parameter/gradient/AdamW bytes per rank (fp32 master, FSDP over dp_shard x cp,
TP-sharded projections split tp ways as in parallel/tensor_parallel.py's plan), the FSDP
working set, and activations from parallel/memory_model.py for one sample per CP x TP
group; benchmarks/plan.py reads the same figures from really sharded tensors.
"""
from __future__ import annotations

import argparse
import json

import torch

from moviegen.models.flops import flops_per_sample, tokens_for
from moviegen.models.transformer import (DEFAULT_TEXT_DIMS, MODEL_REGISTRY, ModelArgs, MovieGenTransformer,
                            count_parameters)

TEXT_TOKENS = {"ul2": 256, "byt5": 256, "metaclip": 256}


def model_info(name: str, seq_len: int | None = None, height: int = 768, width: int = 768,
               frames: int = 256, text_len: int | None = None) -> dict:
    if name not in MODEL_REGISTRY:
        raise SystemExit(f"--model: '{name}' is not registered ({', '.join(MODEL_REGISTRY)})")
    text_dims = {"byt5": 64} if name == "tiny" else DEFAULT_TEXT_DIMS
    args = ModelArgs(**MODEL_REGISTRY[name], text_dims=text_dims,
                     max_t=64, max_h=144, max_w=144)
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    params = count_parameters(model)
    tokens = tokens_for(height, width, frames, args)
    S = seq_len if seq_len is not None else tokens["tokens"]
    L = text_len if text_len is not None else sum(TEXT_TOKENS[k] for k in text_dims if k in TEXT_TOKENS)
    fl = flops_per_sample(args, S, L)
    return {
        "model": name,
        "layers": args.n_layers, "dim": args.dim, "ffn_dim": args.ffn_dim,
        "heads": args.n_heads, "head_dim": args.head_dim,
        "parameters": params,
        "seq_len": S, "text_len": L,
        "video": {"height": height, "width": width, "frames": frames, **tokens},
        "flops_per_sample": fl,
        "attention_fraction": fl["attention"] / fl["total"],
    }


def memory_per_gpu(model, args, seq_len: int, text_len: int, world: int, dp_replicate: int,
                   cp: int, tp: int, ac: str) -> dict:
    from parallel.memory_model import Shape, activation_peak_bytes
    from parallel.tensor_parallel import BLOCK_TP_PLAN

    if world % (dp_replicate * cp * tp):
        raise SystemExit(f"--world {world} is not divisible by dp_replicate x cp x tp")
    fsdp = world // (dp_replicate * cp * tp) * cp
    tp_sharded = {k for k, v in BLOCK_TP_PLAN.items() if v in ("colwise", "rowwise_to_sequence")}
    local, block = 0.0, 0.0
    for name, p in model.named_parameters():
        sharded_by_tp = name.startswith("blocks.") and \
            name.split(".", 2)[2].rsplit(".", 1)[0] in tp_sharded
        per_tp = p.numel() / (tp if sharded_by_tp else 1)
        local += per_tp / fsdp
        if name.startswith("blocks.0."):
            block += per_tp
    sh = Shape(S=seq_len, D=args.dim, F=args.ffn_dim, N=args.n_heads, L=text_len,
               layers=args.n_layers, tp=tp, cp=cp, b=2)
    act = activation_peak_bytes(sh, ac, table_bytes=2)
    out = {"layout": {"world": world, "dp_replicate": dp_replicate,
                      "dp_shard": fsdp // cp, "cp": cp, "tp": tp, "ac": ac},
           "params_per_rank": int(local), "param_gb": local * 4 / 1e9,
           "grad_gb": local * 4 / 1e9, "optimizer_gb": local * 8 / 1e9,
           "fsdp_buffer_gb": block * 8 / 1e9, "activation_gb": act / 1e9}
    out["total_gb"] = sum(out[k] for k in ("param_gb", "grad_gb", "optimizer_gb",
                                           "fsdp_buffer_gb", "activation_gb"))
    out["fits_h100_80gb"] = out["total_gb"] < 72.0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="30b", help=f"one of {', '.join(MODEL_REGISTRY)}")
    ap.add_argument("--seq_len", type=int, default=None,
                    help="video tokens per sample (default: from --height/--width/--frames)")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--text_len", type=int, default=None, help="text tokens (default 3 x 256)")
    ap.add_argument("--world", type=int, default=6144, help="GPUs for memory_per_gpu")
    ap.add_argument("--dp_replicate", type=int, default=1)
    ap.add_argument("--cp", type=int, default=4)
    ap.add_argument("--tp", type=int, default=8)
    ap.add_argument("--ac", default="selective", choices=["none", "full", "selective"])
    a = ap.parse_args(argv)
    info = model_info(a.model, a.seq_len, a.height, a.width, a.frames, a.text_len)
    args = ModelArgs(**MODEL_REGISTRY[a.model], text_dims=DEFAULT_TEXT_DIMS,
                     max_t=64, max_h=144, max_w=144)
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    info["memory_per_gpu"] = memory_per_gpu(model, args, info["seq_len"], info["text_len"],
                                            a.world, a.dp_replicate, a.cp, a.tp, a.ac)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()

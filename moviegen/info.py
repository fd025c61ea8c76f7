"""Parameters, FLOPs and tokens of a model size, as JSON (built on the meta device).

    python -m moviegen.info --model 30b --seq_len 73728
    python -m moviegen.info --model 30b --height 768 --width 768 --frames 256

    python -m moviegen.info --model 30b --world 6144 --tp 8 --cp 4 --ac selective

Parameters are counted from the module itself (no memory: meta device), with the real
text-encoder widths (UL2 4096, ByT5 1472, MetaCLIP 1024) for the large sizes. FLOPs per
training sample follow moviegen.flops (forward + backward, recomputation not credited).
``memory_per_gpu`` (GB = 1e9 bytes) for the layout given by --world/--dp_replicate/--cp/
--tp/--ac, from the same memory model as benchmarks/plan.py (parallel/memory_model.py):
the real ``parallelize`` on a fake process group of --world ranks, parameter/gradient/
AdamW bytes read from rank 0's shards (fp32 master), the FSDP working set, and the
activation peak for one sample per CP x TP group.
"""
from __future__ import annotations

import argparse
import json

import torch

from moviegen.flops import flops_per_sample, tokens_for
from moviegen.model import MODEL_REGISTRY, MovieGenTransformer, count_parameters

TEXT_TOKENS = {"ul2": 256, "byt5": 256, "metaclip": 256}


def model_info(name: str, seq_len: int | None = None, height: int = 768, width: int = 768,
               frames: int = 256, text_len: int | None = None) -> dict:
    from parallel.memory_model import model_args_for

    if name not in MODEL_REGISTRY:
        raise SystemExit(f"--model: '{name}' is not registered ({', '.join(MODEL_REGISTRY)})")
    args = model_args_for(name)
    text_dims = args.text_dims
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


def memory_per_gpu(name: str, seq_len: int, text_len: int, world: int, dp_replicate: int,
                   cp: int, tp: int, ac: str, gpu_mem_gb: float = 80.0,
                   headroom: float = 0.9) -> dict:
    """The same figures as benchmarks/plan.py for one layout: the real ``parallelize`` on a
    fake process group of ``world`` ranks, state from the sharded tensors, activations
    from parallel/memory_model.py (GB = 1e9 bytes)."""
    from parallel.memory_model import (fake_world, layout_dims, layout_memory, model_args_for,
                                       sharded_model, sharded_state_bytes)

    if world % (dp_replicate * cp * tp):
        raise SystemExit(f"--world {world} is not divisible by dp_replicate x cp x tp "
                         f"= {dp_replicate * cp * tp}")
    from moviegen.config import ConfigError

    args = model_args_for(name)
    with fake_world(world):
        try:
            dims = layout_dims(world, tp, cp, dp_replicate)
            dims.validate_model(args)
        except ConfigError as e:
            raise SystemExit(f"--tp/--cp/--world: {e}") from None
        static = sharded_state_bytes(sharded_model(args, dims, dims.build_mesh("cpu"), ac),
                                     args.n_layers)
    out = {"layout": {"world": world, "dp_replicate": dp_replicate,
                      "dp_shard": dims.dp_shard, "cp": cp, "tp": tp, "ac": ac},
           **layout_memory(static, args, dims, seq_len, text_len, ac)}
    out[f"fits_{gpu_mem_gb:g}gb"] = out["total_gb"] < headroom * gpu_mem_gb
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
    ap.add_argument("--gpu_mem_gb", type=float, default=80.0, help="80 (H100) or 141 (H200)")
    a = ap.parse_args(argv)
    info = model_info(a.model, a.seq_len, a.height, a.width, a.frames, a.text_len)
    info["memory_per_gpu"] = memory_per_gpu(a.model, info["seq_len"], info["text_len"],
                                            a.world, a.dp_replicate, a.cp, a.tp, a.ac,
                                            a.gpu_mem_gb)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()

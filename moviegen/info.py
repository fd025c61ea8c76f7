"""Parameters, FLOPs and tokens of a model size, as JSON (built on the meta device).

    python -m moviegen.info --model 30b --seq_len 73728
    python -m moviegen.info --model 30b --height 768 --width 768 --frames 256

Parameters are counted from the module itself (no memory: meta device), with the real
text-encoder widths (UL2 4096, ByT5 1472, MetaCLIP 1024) for the large sizes. FLOPs per
training sample follow moviegen.flops (forward + backward, recomputation not credited).
"""
from __future__ import annotations

import argparse
import json

import torch

from moviegen.flops import flops_per_sample, tokens_for
from moviegen.model import (DEFAULT_TEXT_DIMS, MODEL_REGISTRY, ModelArgs, MovieGenTransformer,
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="30b", help=f"one of {', '.join(MODEL_REGISTRY)}")
    ap.add_argument("--seq_len", type=int, default=None,
                    help="video tokens per sample (default: from --height/--width/--frames)")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--text_len", type=int, default=None, help="text tokens (default 3 x 256)")
    a = ap.parse_args(argv)
    info = model_info(a.model, a.seq_len, a.height, a.width, a.frames, a.text_len)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()

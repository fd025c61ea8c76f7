"""A model size on a layout, without a GPU: parameters, FLOPs, tokens and the per-GPU
memory of the one memory model (moviegen/parallel/memory_model.py), as ``python -m moviegen.info``
and ``benchmarks/plan.py`` report them.

The model is built on the meta device and the real ``parallel.parallelize`` is applied
under a fake process group of the planned world size; parameter, gradient and AdamW bytes
are read from rank 0's shards, activations come from the per-block model.
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import torch

from moviegen.models.flops import flops_per_sample, tokens_for
from moviegen.models.transformer import (DEFAULT_TEXT_DIMS, MODEL_REGISTRY, ModelArgs,
                                         MovieGenTransformer, count_parameters,
                                         effective_window)
from moviegen.parallel.context_parallel import window_exchange
from moviegen.parallel.memory_model import (GB, Shape, comm_bytes_per_rank, cp_block_bytes,
                                   fake_world, layout_dims, layout_memory,
                                   sharded_state_bytes)
from moviegen.parallel.parallel_dims import LayoutError
from moviegen.parallel.parallelize import parallelize


def model_args_for(name: str, attention_pattern: str = "full", spatial_window=(16, 16),
                   spatiotemporal_window=(8, 8, 8)):
    """A registered size with the real text-encoder widths and position tables for 768px
    (48 x 48 patches) and up to 64 latent frames: what plan.py and moviegen.info build."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"--model: '{name}' is not registered ({', '.join(MODEL_REGISTRY)})")
    text_dims = {"byt5": 64} if name == "tiny" else DEFAULT_TEXT_DIMS
    return ModelArgs(**MODEL_REGISTRY[name], text_dims=text_dims, max_t=64, max_h=144, max_w=144,
                     attention_pattern=attention_pattern, spatial_window=tuple(spatial_window),
                     spatiotemporal_window=tuple(spatiotemporal_window))


def grid_for(args, seq_len: int, height: int = 768, width: int = 768) -> tuple[int, int, int]:
    """The patch grid of ``seq_len`` tokens at ``height`` x ``width`` pixels (t = the rest);
    None for full attention when the tokens are not whole frames."""
    tok = tokens_for(height, width, 1, args)
    hw = tok["grid_h"] * tok["grid_w"]
    if seq_len % hw and args.attention_pattern == "full":
        return None  # full attention's figures do not depend on the grid
        raise SystemExit(f"--seq_len {seq_len} is not a whole number of {tok['grid_h']} x "
                         f"{tok['grid_w']}-patch frames ({height} x {width} px); give "
                         f"--height/--width that make it one")
    grid = (seq_len // hw, tok["grid_h"], tok["grid_w"])
    if args.attention_pattern == "window":
        for i in range(min(2, args.n_layers)):
            try:
                effective_window(args.block_window(i), grid)
            except ValueError as e:
                raise SystemExit(f"--spatial_window/--spatiotemporal_window: {e}") from None
    return grid


def cp_kv_ranks(args, grid_thw, cp: int) -> list:
    """Per block, what context parallel exchanges (moviegen/parallel/memory_model.cp_block_bytes)."""
    if args.attention_pattern == "full":
        return ["full"] * args.n_layers
    return [window_exchange(grid_thw, effective_window(args.block_window(i), grid_thw), cp)
            for i in range(args.n_layers)]


def cp_comm(args, grid_thw, seq_len: int, text_len: int, cp: int, tp: int, ac: str) -> dict:
    """Context-parallel bytes per rank per step (one sample per CP x TP group) and per
    block forward, for this model's attention pattern (GB = 1e9 bytes)."""
    S = math.prod(grid_thw) if grid_thw is not None else seq_len
    sh = Shape(S=S, D=args.dim, F=args.ffn_dim, N=args.n_heads, L=text_len,
               layers=args.n_layers, tp=tp, cp=cp, b=2)
    kinds = cp_kv_ranks(args, grid_thw, cp)
    comm = comm_bytes_per_rank(sh, 1, 1, 0, ac, cp_kv_ranks=kinds)
    if args.attention_pattern == "full":
        first = {"every block": (0, kinds[0])}
    else:
        first = {"spatial" if i % 2 == 0 else "spatiotemporal": (i, k)
                 for i, k in reversed(list(enumerate(kinds)))}
    return {"cp_gb_per_step": comm["cp"] / GB,
            "per_block_forward_gb": {name: {"exchange": _exchange_name(k, cp),
                                            "gb": cp_block_bytes(sh, k) / GB if cp > 1 else 0.0}
                                     for name, (i, k) in sorted(first.items())}}


def _exchange_name(kv_ranks, cp: int) -> str:
    if cp == 1 or kv_ranks == 1:
        return "none"
    if kv_ranks == "full":
        return f"all-gather K, V over cp {cp}"
    if kv_ranks is None:
        return f"fallback: all-gather Q, K, V over cp {cp}"
    return f"K, V to the {kv_ranks - 1} other rank(s) of the window"


SAMPLE_BLOCKS = 2


def sharded_model(args, dims, mesh, ac: str, full_blocks: int = 0):
    """The model on the meta device after the real ``parallelize`` (bf16 compute, fp32
    reduction, as on GPUs) under the current (fake) process group.

    Built with ``SAMPLE_BLOCKS`` of its identical blocks (sharding all 48 blocks of the
    30B over 6,144 FSDP ranks takes a minute per layout); pass ``n_layers=args.n_layers``
    to ``sharded_state_bytes``. With ``full_blocks`` (the budget mode) the sample keeps
    one fully recomputed block and one selective block when both kinds are planned."""
    n = min(SAMPLE_BLOCKS, args.n_layers)
    if full_blocks:
        full_blocks = n if full_blocks >= args.n_layers else max(1, min(full_blocks, n - 1))
    with torch.device("meta"):
        model = MovieGenTransformer(dataclasses.replace(args, n_layers=n))
    cfg = SimpleNamespace(ac=ac, ac_full_blocks=full_blocks, compile=False, param_dtype="bf16",
                          reduce_dtype="fp32", reshard_after_forward=True)
    parallelize(model, dims, mesh, cfg, device_type="cuda")
    return model


TEXT_TOKENS = {"ul2": 256, "byt5": 256, "metaclip": 256}


def model_info(name: str, seq_len: int | None = None, height: int = 768, width: int = 768,
               frames: int = 256, text_len: int | None = None,
               attention_pattern: str = "full", spatial_window=(16, 16),
               spatiotemporal_window=(8, 8, 8)) -> dict:
    if name not in MODEL_REGISTRY:
        raise SystemExit(f"--model: '{name}' is not registered ({', '.join(MODEL_REGISTRY)})")
    args = model_args_for(name, attention_pattern, spatial_window, spatiotemporal_window)
    text_dims = args.text_dims
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    params = count_parameters(model)
    tokens = tokens_for(height, width, frames, args)
    S = seq_len if seq_len is not None else tokens["tokens"]
    L = text_len if text_len is not None else sum(TEXT_TOKENS[k] for k in text_dims if k in TEXT_TOKENS)
    grid = grid_for(args, S, height, width)
    fl = flops_per_sample(args, S, L, grid)
    windows = {}
    if attention_pattern == "window":
        full = flops_per_sample(dataclasses.replace(args, attention_pattern="full"), S, L)
        windows = {"attention": {
            "pattern": "window", "grid_thw": list(grid),
            "spatial_window": list(effective_window(args.block_window(0), grid)),
            "spatiotemporal_window": list(effective_window(args.block_window(1), grid)),
            "full_attention_flops_per_sample": full,
            "attention_flops_vs_full": fl["attention"] / full["attention"]}}
    return {
        "model": name,
        "layers": args.n_layers, "dim": args.dim, "ffn_dim": args.ffn_dim,
        "heads": args.n_heads, "head_dim": args.head_dim,
        "parameters": params,
        "seq_len": S, "text_len": L,
        "video": {"height": height, "width": width, "frames": frames, **tokens},
        "flops_per_sample": fl,
        "attention_fraction": fl["attention"] / fl["total"],
        **windows,
    }


def memory_per_gpu(name: str, seq_len: int, text_len: int, world: int, dp_replicate: int,
                   cp: int, tp: int, ac: str, gpu_mem_gb: float = 80.0,
                   headroom: float = 0.9, window: dict | None = None) -> dict:
    """The same figures as benchmarks/plan.py for one layout: the real ``parallelize`` on a
    fake process group of ``world`` ranks, state from the sharded tensors, activations
    from moviegen/parallel/memory_model.py (GB = 1e9 bytes)."""
    if world % (dp_replicate * cp * tp):
        raise SystemExit(f"--world {world} is not divisible by dp_replicate x cp x tp "
                         f"= {dp_replicate * cp * tp}")
    args = model_args_for(name, **(window or {}))
    with fake_world(world):
        try:
            dims = layout_dims(world, tp, cp, dp_replicate)
            dims.validate_model(args.n_heads, args.ffn_dim)
        except LayoutError as e:
            raise SystemExit(f"--tp/--cp/--world: {e}") from None
        static = sharded_state_bytes(sharded_model(args, dims, dims.build_mesh("cpu"), ac),
                                     args.n_layers)
    out = {"layout": {"world": world, "dp_replicate": dp_replicate,
                      "dp_shard": dims.dp_shard, "cp": cp, "tp": tp, "ac": ac},
           **layout_memory(static, args, dims, seq_len, text_len, ac)}
    out[f"fits_{gpu_mem_gb:g}gb"] = out["total_gb"] < headroom * gpu_mem_gb
    out["context_parallel"] = cp_comm(args, grid_for(args, seq_len), seq_len, text_len, cp,
                                   tp, ac)
    return out

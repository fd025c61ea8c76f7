"""Model FLOPs for MFU: what the model must compute, recomputation not credited.

Per training sample (forward + backward = 3x forward, 2 FLOPs per multiply-add):
  dense      6 x (weights applied per video token) x S
           + 6 x (cross-attention K/V and text projection weights) x L_text
  attention  12 x layers x S^2 x D        (self-attention scores and values, fwd + bwd)
           + 12 x layers x S x L_text x D (cross-attention)
With windows (attention_pattern=window) each query attends to the keys of its window
only: 12 x S x (t_w h_w w_w) x D per block, its window clamped to the patch grid as the
model does; nothing is credited for the full attention it replaces.
Peaks: 989 TFLOP/s dense bf16 for H100 SXM (NVIDIA's datasheet, without sparsity).
"""
from __future__ import annotations

import math

from moviegen.models.transformer import ModelArgs, effective_window

PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}


def dense_weights_per_video_token(args: ModelArgs) -> int:
    d, f = args.dim, args.ffn_dim
    per_block = 4 * d * d + 2 * d * d + 3 * d * f  # self-attn qkvo, cross q/o, SwiGLU
    patch = args.in_channels * math.prod(args.patch_size) * d
    final = d * args.in_channels * math.prod(args.patch_size)
    return args.n_layers * per_block + patch + final


def dense_weights_per_text_token(args: ModelArgs) -> int:
    d = args.dim
    cross_kv = args.n_layers * 2 * d * d
    return cross_kv + max((k * d for k in args.text_dims.values()), default=0)


def keys_per_query(args: ModelArgs, seq_len: int, grid_thw=None) -> list[int]:
    """Self-attention keys each query reads, per block: S, or its window's size."""
    if args.attention_pattern == "full":
        return [seq_len] * args.n_layers
    if grid_thw is None or math.prod(grid_thw) != seq_len:
        raise ValueError(f"window attention FLOPs need the patch grid of the {seq_len} "
                         f"tokens (t, h, w), got {grid_thw}")
    return [math.prod(effective_window(args.block_window(i), grid_thw))
            for i in range(args.n_layers)]


def flops_per_sample(args: ModelArgs, seq_len: int, text_len: int = 0,
                     grid_thw=None) -> dict[str, float]:
    """Model FLOPs of one sample; ``grid_thw`` (t, h, w patches) is needed for windows."""
    dense = 6 * dense_weights_per_video_token(args) * seq_len \
        + 6 * dense_weights_per_text_token(args) * text_len
    self_attn = 12 * seq_len * sum(keys_per_query(args, seq_len, grid_thw)) * args.dim
    cross = 12 * args.n_layers * seq_len * text_len * args.dim
    attn = self_attn + cross
    return {"dense": float(dense), "attention": float(attn), "self_attention": float(self_attn),
            "total": float(dense + attn)}


def tokens_for(height: int, width: int, frames: int, args: ModelArgs,
               spatial_compression: int = 8, temporal_compression: int = 8) -> dict[str, int]:
    """Latent and token counts for a video; 768px x 256 frames -> 48 x 48 x 32 = 73,728."""
    T = max(1, math.ceil(frames / temporal_compression)) if frames > 1 else 1
    H, W = height // spatial_compression, width // spatial_compression
    pt, ph, pw = args.patch_size
    t, h, w = T // pt, H // ph, W // pw
    return {"latent_frames": T, "latent_height": H, "latent_width": W,
            "grid_t": t, "grid_h": h, "grid_w": w, "tokens": t * h * w}


def device_peak_tflops(device_name: str | None) -> tuple[float | None, str | None]:
    """(peak dense bf16 TFLOP/s, which peak) for a CUDA device name; None on CPU."""
    if not device_name:
        return None, None
    name = device_name.lower()
    for key, peak in PEAK_TFLOPS.items():
        if key in name:
            return peak, f"{key.upper()} dense bf16 {peak:g} TFLOP/s"
    return None, None

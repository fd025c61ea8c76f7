"""Model FLOPs for MFU: what the model must compute, recomputation not credited.

Per training sample (forward + backward = 3x forward, 2 FLOPs per multiply-add):
  dense      6 x (weights applied per video token) x S
           + 6 x (cross-attention K/V and text projection weights) x L_text
  attention  12 x layers x S^2 x D        (self-attention scores and values, fwd + bwd)
           + 12 x layers x S x L_text x D (cross-attention)
Peaks: 989 TFLOP/s dense bf16 for H100 SXM (NVIDIA's datasheet, without sparsity).
"""
from __future__ import annotations

import math

from moviegen.models.transformer import ModelArgs

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


def flops_per_sample(args: ModelArgs, seq_len: int, text_len: int = 0) -> dict[str, float]:
    dense = 6 * dense_weights_per_video_token(args) * seq_len \
        + 6 * dense_weights_per_text_token(args) * text_len
    attn = 12 * args.n_layers * seq_len * seq_len * args.dim \
        + 12 * args.n_layers * seq_len * text_len * args.dim
    return {"dense": float(dense), "attention": float(attn), "total": float(dense + attn)}


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

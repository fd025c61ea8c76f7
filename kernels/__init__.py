"""Triton kernels, each with a plain torch reference and an autograd Function.

Until the Triton kernels land, every entry point routes to the torch reference.
"""
from kernels import reference
from kernels.reference import (add_factorized_pos_embed_reference, attention_reference,
                               gated_residual_reference, modulated_rms_norm_reference)


def resolve_backend(setting: str, device) -> str:
    if setting not in ("auto", "triton", "torch"):
        raise ValueError(f"kernels setting must be auto, triton or torch, got {setting!r}")
    if setting == "triton":
        raise RuntimeError("kernels: triton requested but the Triton kernels are not built yet")
    return "torch"


def modulated_rms_norm(x, weight, scale, shift, eps, backend="torch"):
    return modulated_rms_norm_reference(x, weight, scale, shift, eps)


def gated_residual(x, gate, h, backend="torch"):
    return gated_residual_reference(x, gate, h)


def add_factorized_pos_embed(x, pos_t, pos_h, pos_w, grid_thw, token_offset=0, backend="torch"):
    return add_factorized_pos_embed_reference(x, pos_t, pos_h, pos_w, grid_thw, token_offset)


def attention(q, k, v, key_padding_mask=None, backend="torch"):
    return attention_reference(q, k, v, key_padding_mask)

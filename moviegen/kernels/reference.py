"""Plain torch references for every fused kernel.

These are the model's default path (``kernels: torch``) and the ground truth the Triton
kernels are tested against. Shapes: B batch, S tokens (possibly a shard of the full
sequence), D model width, H heads, E head dim, L text tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_reference(x_BSD: torch.Tensor, weight_D: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back to the input dtype."""
    x32 = x_BSD.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if weight_D is not None:
        y = y * weight_D.float()
    return y.to(x_BSD.dtype)


def modulated_rms_norm_reference(x_BSD, weight_D, scale_BD, shift_BD, eps: float):
    """adaLN: RMSNorm(x) * (1 + scale) + shift; scale/shift are per sample, broadcast over S."""
    y = rms_norm_reference(x_BSD, weight_D, eps)
    return y * (1 + scale_BD.unsqueeze(1)) + shift_BD.unsqueeze(1)


def gated_residual_reference(x_BSD, gate_BD, h_BSD):
    """x + gate * h with a per-sample gate broadcast over tokens."""
    return x_BSD + gate_BD.unsqueeze(1) * h_BSD


def factorized_pos_embed_reference(pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset: int = 0,
                                   num_tokens: int | None = None):
    """Rows [token_offset, token_offset + num_tokens) of pos_t[t] + pos_h[h] + pos_w[w].

    Tokens are ordered t-major then h then w (index = (t * H + h) * W + w), the order the
    patch embedding flattens in. ``grid_THW`` is the full (T, H, W) grid of the sample;
    a sequence/context-parallel shard passes its offset into the full sequence.
    """
    T, H, W = grid_THW
    full = (pos_t_TD[:T, None, None, :] + pos_h_HD[None, :H, None, :]
            + pos_w_WD[None, None, :W, :]).reshape(T * H * W, -1)
    if num_tokens is None:
        num_tokens = T * H * W - token_offset
    return full[token_offset: token_offset + num_tokens]


def add_factorized_pos_embed_reference(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW,
                                       token_offset: int = 0):
    pos_SD = factorized_pos_embed_reference(pos_t_TD, pos_h_HD, pos_w_WD, grid_THW,
                                            token_offset, x_BSD.shape[1])
    return x_BSD + pos_SD.to(x_BSD.dtype)


def attention_reference(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL: torch.Tensor | None = None):
    """Non-causal attention of S queries over L keys; mask True = real key.

    A query row whose keys are all masked returns zeros (not NaN).
    """
    if key_padding_mask_BL is None:
        return F.scaled_dot_product_attention(q_BHSE, k_BHLE, v_BHLE)
    # A sample with no real key would give softmax over nothing (NaN, also in backward):
    # let it attend everywhere, then zero its output, so its gradients are exactly zero.
    has_key_B = key_padding_mask_BL.any(-1)
    safe_mask_BL = key_padding_mask_BL | ~has_key_B[:, None]
    out = F.scaled_dot_product_attention(q_BHSE, k_BHLE, v_BHLE,
                                         attn_mask=safe_mask_BL[:, None, None, :])
    return out * has_key_B[:, None, None, None].to(out.dtype)

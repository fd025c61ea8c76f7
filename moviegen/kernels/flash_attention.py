"""Flash attention (non-causal) with an optional key padding mask, forward and backward.

(One file of ~700 lines on purpose: the forward, the TMA forward and the backward kernels
share their masking and online-softmax helpers, and the four layers - kernels, launchers,
torch.library ops, autograd Function - stay together as for every kernel here.)

Shapes (legend): B batch, H heads, S query tokens, L key tokens (S != L is allowed:
context parallel attends local queries to gathered K/V, cross-attention attends to text),
E head dim (a power of two, 16..128). q_BHSE, k_BHLE, v_BHLE; key_padding_mask_BL is
bool with True = real key. Inputs fp16/bf16 (fp32 also works, used by CPU interpreter
tests); the softmax, the accumulators and the log-sum-exp are fp32.

Kernels (one program = one block of rows of one (b, h)):
  forward    rows = queries; streams K/V blocks with the online softmax (base 2), writes
             O and LSE_BHS (natural log; -inf for a query with no real key).
  preprocess delta_BHS = rowsum(dO * O) - dLSE (dLSE: gradient flowing into the returned
             LSE, e.g. from a context-parallel merge; zero otherwise).
  dK/dV      rows = keys; streams Q/dO blocks, recomputes P = exp(QK^T * scale - LSE) from
             the saved LSE, dS = P * (dP - delta): 5 GEMMs a block with dQ += dS K added
             atomically in fp32 (FlashAttention-2, Dao 2023), 4 without.
  dQ         rows = queries; streams K/V blocks: only in the deterministic mode.
dQ by atomics is the default (two GEMMs a block fewer; FlashAttention-2 and -3 do the
same); ``MOVIEGEN_ATTN_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms(True)``
selects the separate dQ pass, where every gradient element is written by exactly one
program (bitwise reproducible). With few keys (cross-attention to 512 text tokens) the
dK/dV grid is split over query blocks into fp32 partials summed afterwards (a fixed
order), so the grid fills the GPU.

Padding: each sample's key length (1 + its last real key) bounds the key loops, so key
blocks of trailing padding are never loaded, in the forward and the backward.

A query whose keys are all masked gets O = 0 and LSE = -inf; its backward selects P = 0
through the key mask, so all its gradients are exactly zero (no NaN), like
``attention_reference``.

Block sizes are autotuned per (power-of-two bucket of S and L, E, mask) on the GPU; under TRITON_INTERPRET=1 one small
config is used. On sm90+ (Hopper) the forward loads Q/K/V through TMA tensor descriptors
(``_attn_fwd_tma_kernel``; MOVIEGEN_ATTN_TMA=0 turns it off, =1 forces it, e.g. in the
interpreter); a config that fails to build is dropped from the tuning on its own
(moviegen/kernels/autotune.py), and if the TMA kernel cannot run at all for one (dtype, head dim,
mask) class, that class uses the plain pointer kernel (which Triton software-pipelines,
num_stages), with one warning. The backward kernels use pointer loads.

Layering (as in Liger-Kernel): kernels -> launchers (registered as torch.library custom ops,
opaque to torch.compile) -> autograd.Function -> functional API and the ``FlashAttention``
module.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional

import torch
import triton
import triton.language as tl

from ._utils import check_device, check_same_device, interpreting, next_power_of_2
from .autotune import autotune

LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


def _configs(kind: str) -> list[triton.Config]:
    """Every config here, as pruned by ``tuned_configs`` for a (head dim, mask) class, builds
    for sm_90a without register spills and within 227 KiB of shared memory at head dims 64
    and 128 under Triton 3.6 and 3.9 (``benchmarks/kernel_bench.py --compile_only``; reports
    in benchmarks/results/). Warp-specialised loops are not offered: Triton 3.6 and 3.9 both
    fail to build them for this kernel on sm_90."""
    if interpreting():
        extra = {"WARP_SPECIALIZE": False} if kind == "fwd_tma" else {}
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, **extra}, num_warps=1, num_stages=1)]
    if kind == "fwd":  # BLOCK_M queries per program, BLOCK_N keys per step
        shapes = [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 4), (64, 64, 4, 4),
                  (128, 32, 4, 4)]
    elif kind == "dkdv":  # BLOCK_N keys per program, BLOCK_M queries per step
        shapes = DKDV_SHAPES
    elif kind == "fwd_tma":
        shapes = [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (64, 128, 4, 3)]
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "WARP_SPECIALIZE": False},
                              num_warps=w, num_stages=s) for m, n, w, s in shapes]
    else:  # dq: BLOCK_M queries per program, BLOCK_N keys per step
        shapes = [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in shapes]


# (BLOCK_M, BLOCK_N, warps, stages) of the dK/dV kernel. Its five GEMMs run per warpgroup
# as wgmma m64nX: S^T = K Q^T and dP^T = V dO^T with X = BLOCK_M / (warpgroups sharing
# it), dV, dK and dQ with X = head dim / warpgroups (the compile report's mma column).
DKDV_SHAPES = [(64, 128, 8, 2), (64, 128, 8, 3), (64, 64, 8, 2), (64, 64, 8, 3), (64, 64, 4, 2)]


def _fits(kind: str, config: triton.Config, head_dim: int, masked: bool) -> bool:
    """False for a config that spills registers for this class on sm_90a (compile report):
    - the pointer forward at 128 x 128 with a key mask at head dim 128 (Triton 3.6: 16-24 B);
    - dK/dV at head dim 128 with 128 keys a program (two 128 x 128 fp32 accumulators; with
      the atomic dQ 150+ B even at 8 warps) or with one warpgroup: 64 keys over 8 warps."""
    kw = config.kwargs
    if kind == "fwd" and head_dim == 128 and masked and kw["BLOCK_M"] * kw["BLOCK_N"] >= 128 * 128:
        return False
    if kind == "dkdv" and head_dim == 128 and (kw["BLOCK_N"] > 64 or config.num_warps < 8):
        return False
    return True


def tuned_configs(kind: str, head_dim: int, masked: bool) -> list[triton.Config]:
    """The configs the autotuner may try for one (head dim, mask) class."""
    return [c for c in _configs(kind) if _fits(kind, c, head_dim, masked)]


def _prune(kind: str):
    def prune(configs, named_args, **kwargs):
        meta = {**named_args, **kwargs}
        kept = [c for c in configs if _fits(kind, c, meta["HEAD_DIM"], meta["HAS_MASK"])]
        return kept or configs[:1]
    return {"early_config_prune": prune}


# Tune per power-of-two bucket of the lengths, not per exact length: text lengths and
# aspect-ratio buckets vary, and every new key would re-run the autotuning.
_TUNE_KEY = ["TUNE_S_Q", "TUNE_S_K", "HEAD_DIM", "HAS_MASK"]


# ----------------------------------------------------------------------------- forward

@triton.jit
def _mask_scores(qk, offs_n, mask_base, S_K,
                 HAS_MASK: tl.constexpr, CHECK_BOUNDS: tl.constexpr):
    """-inf where a key is padding (mask == 0) or past the end of the sequence."""
    if HAS_MASK:
        if CHECK_BOUNDS:
            valid = tl.load(mask_base + offs_n, mask=offs_n < S_K, other=0) != 0
        else:
            valid = tl.load(mask_base + offs_n) != 0
        qk = tl.where(valid[None, :], qk, float("-inf"))
    elif CHECK_BOUNDS:
        qk = tl.where((offs_n < S_K)[None, :], qk, float("-inf"))
    return qk


@triton.jit
def _online_softmax(qk, m_i, l_i):
    """One block of the streaming softmax: (p, alpha, new max, new row sum).

    m_i starts finite (-1e30), so a block with every key masked gives p = 0 and
    alpha = 1 instead of exp(-inf - -inf) = NaN."""
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _key_end(KeyLen, b, S_K, HAS_MASK: tl.constexpr):
    """End of the keys worth visiting for sample b: 1 + its last real key (0 if none), so
    key blocks of trailing padding (a short caption padded to 512 text tokens) are skipped."""
    if HAS_MASK:
        return tl.load(KeyLen + b)
    return S_K


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kn, stride_vn,
                    start, end, S_K, qk_scale, offs_e,
                    HAS_MASK: tl.constexpr, CHECK_BOUNDS: tl.constexpr,
                    BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_e[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_e[None, :]
        if CHECK_BOUNDS:
            in_bounds = offs_n < S_K
            k = tl.load(k_ptrs, mask=in_bounds[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=in_bounds[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # [M, N]
        qk = _mask_scores(qk, offs_n, mask_base, S_K, HAS_MASK, CHECK_BOUNDS)
        p, alpha, m_i, l_i = _online_softmax(qk, m_i, l_i)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return acc, l_i, m_i


@autotune(configs=_configs("fwd"), key=_TUNE_KEY, prune_configs_by=_prune("fwd"))
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Mask, KeyLen, Out, Lse, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_os,
    H, S_Q, S_K, TUNE_S_Q, TUNE_S_K,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < S_Q
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)

    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qs + offs_e[None, :],
                mask=mask_m[:, None], other=0.0)
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    mask_base = Mask
    if HAS_MASK:
        mask_base = Mask + b64 * S_K

    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) - 1.0e30
    kv_end = _key_end(KeyLen, b64, S_K, HAS_MASK)
    full_end = (kv_end // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base,
                                    stride_kn, stride_vn, 0, full_end, S_K, qk_scale, offs_e,
                                    HAS_MASK, False, BLOCK_N, INPUT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base,
                                    stride_kn, stride_vn, full_end, kv_end, S_K, qk_scale, offs_e,
                                    HAS_MASK, True, BLOCK_N, INPUT_PRECISION)

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(Out + b64 * stride_ob + h64 * stride_oh + offs_m[:, None] * stride_os + offs_e[None, :],
             out.to(Out.dtype.element_ty), mask=mask_m[:, None])
    tl.store(Lse + bh.to(tl.int64) * S_Q + offs_m, lse, mask=mask_m)


# Hopper variant of the forward: Q/K/V/O through 4-D tensor descriptors (TMA on sm90+;
# rows past S/L are zero-filled on load and clipped on store), optionally a
# warp-specialised main loop. Same math as _attn_fwd_kernel.

@triton.jit
def _attn_fwd_inner_tma(acc, l_i, m_i, q, desc_k, desc_v, b, h, mask_base,
                        start, end, S_K, qk_scale,
                        HAS_MASK: tl.constexpr, CHECK_BOUNDS: tl.constexpr,
                        BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    for start_n in tl.range(start, end, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        qk = _mask_scores(qk, offs_n, mask_base, S_K, HAS_MASK, CHECK_BOUNDS)
        p, alpha, m_i, l_i = _online_softmax(qk, m_i, l_i)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return acc, l_i, m_i


@autotune(configs=_configs("fwd_tma"), key=_TUNE_KEY)
@triton.jit
def _attn_fwd_tma_kernel(
    Q, K, V, Mask, KeyLen, Out, Lse, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_os,
    B, H, S_Q, S_K, TUNE_S_Q, TUNE_S_K,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    desc_q = tl.make_tensor_descriptor(Q, shape=[B, H, S_Q, HEAD_DIM],
                                       strides=[stride_qb, stride_qh, stride_qs, 1],
                                       block_shape=[1, 1, BLOCK_M, HEAD_DIM])
    desc_k = tl.make_tensor_descriptor(K, shape=[B, H, S_K, HEAD_DIM],
                                       strides=[stride_kb, stride_kh, stride_kn, 1],
                                       block_shape=[1, 1, BLOCK_N, HEAD_DIM])
    desc_v = tl.make_tensor_descriptor(V, shape=[B, H, S_K, HEAD_DIM],
                                       strides=[stride_vb, stride_vh, stride_vn, 1],
                                       block_shape=[1, 1, BLOCK_N, HEAD_DIM])
    desc_o = tl.make_tensor_descriptor(Out, shape=[B, H, S_Q, HEAD_DIM],
                                       strides=[stride_ob, stride_oh, stride_os, 1],
                                       block_shape=[1, 1, BLOCK_M, HEAD_DIM])
    q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
    mask_base = Mask
    if HAS_MASK:
        mask_base = Mask + b.to(tl.int64) * S_K

    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) - 1.0e30
    kv_end = _key_end(KeyLen, b.to(tl.int64), S_K, HAS_MASK)
    full_end = (kv_end // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner_tma(acc, l_i, m_i, q, desc_k, desc_v, b, h, mask_base,
                                        0, full_end, S_K, qk_scale, HAS_MASK, False, BLOCK_N,
                                        HEAD_DIM, INPUT_PRECISION, WARP_SPECIALIZE)
    acc, l_i, m_i = _attn_fwd_inner_tma(acc, l_i, m_i, q, desc_k, desc_v, b, h, mask_base,
                                        full_end, kv_end, S_K, qk_scale, HAS_MASK, True, BLOCK_N,
                                        HEAD_DIM, INPUT_PRECISION, False)

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    desc_o.store([b, h, start_m, 0], out.to(Out.dtype.element_ty).reshape(1, 1, BLOCK_M, HEAD_DIM))
    tl.store(Lse + bh.to(tl.int64) * S_Q + offs_m, lse, mask=offs_m < S_Q)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _attn_bwd_preprocess_kernel(Out, DO, DLse, Delta,
                                stride_ob, stride_oh, stride_os, stride_db, stride_dh, stride_ds,
                                H, S_Q, HEAD_DIM: tl.constexpr, HAS_DLSE: tl.constexpr,
                                BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < S_Q
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_e[None, :],
                mask=mask_m[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_ds + offs_e[None, :],
                 mask=mask_m[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    row = bh.to(tl.int64) * S_Q + offs_m
    if HAS_DLSE:
        # d lse / d s_j = p_j, so dS = P * (dP - delta + dLSE): fold dLSE into delta.
        delta -= tl.load(DLse + row, mask=mask_m, other=0.0)
    tl.store(Delta + row, delta, mask=mask_m)


@triton.jit
def _load_lse_log2(Lse, row, mask_m):
    """LSE in log2 units. A row with no real key has -inf, so exp2(qk - lse) = inf there,
    but such a row only exists when every key of its sample is masked, and the key mask
    then selects P = 0 for all of them (tl.where, never a multiply: no NaN)."""
    return tl.load(Lse + row, mask=mask_m, other=float("inf")) * 1.4426950408889634


# dQ comes out of the dK/dV kernel (ATOMIC_DQ: fp32 atomic adds into a zeroed buffer, 5
# GEMMs a block as in FlashAttention-2) or from its own pass over the keys (2 more GEMMs,
# every dQ element written once: bitwise reproducible). The tuner re-zeroes the buffer
# between its trial runs.
@autotune(configs=_configs("dkdv"), key=_TUNE_KEY + ["ATOMIC_DQ", "SPLIT"], reset_to_zero=["DQ"],
          prune_configs_by=_prune("dkdv"))
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, Mask, KeyLen, DO, Lse, Delta, DK, DV, DQ, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_ds,
    stride_dkz, stride_dkb, stride_dkh, stride_dkn, stride_dvz, stride_dvb, stride_dvh, stride_dvn,
    stride_dqb, stride_dqh, stride_dqs,
    H, S_Q, S_K, SPLIT, TUNE_S_Q, TUNE_S_K,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ATOMIC_DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_N keys of one (b, h) against the queries of split z (of SPLIT).

    Per query block (5 GEMMs): S^T = K Q^T, P^T = exp2(S^T - LSE), dV += P^T dO,
    dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q [, dQ += dS K]. With SPLIT > 1
    (few keys, e.g. 512 text tokens: too few programs to fill the GPU) each split writes
    fp32 partials of dK/dV at DK/DV + z * stride_*z, summed by the launcher."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    z = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, HEAD_DIM)
    mask_n = offs_n < S_K
    valid_n = mask_n
    if HAS_MASK:
        valid_n = valid_n & (tl.load(Mask + b * S_K + offs_n, mask=mask_n, other=0) != 0)

    # split z takes query blocks z, z + SPLIT, z + 2 SPLIT, ... (a loop from 0 with a
    # constant start offset; contiguous ranges per split spilled registers at head dim 128)
    end_m = S_Q
    if HAS_MASK:
        # a block past the sample's last real key (padding only) gets zero gradients:
        # skip its queries entirely
        end_m = tl.where(pid_n * BLOCK_N < _key_end(KeyLen, b, S_K, HAS_MASK), S_Q, 0)
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_e[None, :],
                mask=mask_n[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_e[None, :],
                mask=mask_n[:, None], other=0.0)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_db + h * stride_dh
    dq_base = DQ + b * stride_dqb + h * stride_dqh
    row_base = bh.to(tl.int64) * S_Q
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    for start_m in range(0, end_m, BLOCK_M * SPLIT):
        offs_m = start_m + z * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < S_Q
        q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_e[None, :], mask=mask_m[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_ds + offs_e[None, :], mask=mask_m[:, None], other=0.0)
        lse = _load_lse_log2(Lse, row_base + offs_m, mask_m)
        delta = tl.load(Delta + row_base + offs_m, mask=mask_m, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale  # [N, M]
        p_t = tl.math.exp2(qk_t - lse[None, :])
        p_t = tl.where(valid_n[:, None], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=INPUT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=INPUT_PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=INPUT_PRECISION) * sm_scale  # [M, E]
            # the fp32 buffer is dense [B, H, S, E]: a compile-time row stride lets the adds
            # vectorise (and saves a 64-bit address per element in registers)
            tl.atomic_add(dq_base + offs_m[:, None] * HEAD_DIM + offs_e[None, :], dq,
                          mask=mask_m[:, None], sem="relaxed")
    dk *= sm_scale
    zk = z.to(tl.int64)
    tl.store(DK + zk * stride_dkz + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_e[None, :], dk.to(DK.dtype.element_ty), mask=mask_n[:, None])
    tl.store(DV + zk * stride_dvz + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_e[None, :], dv.to(DV.dtype.element_ty), mask=mask_n[:, None])


@autotune(configs=_configs("dq"), key=_TUNE_KEY)
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, Mask, KeyLen, DO, Lse, Delta, DQ, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_ds,
    stride_dqb, stride_dqh, stride_dqs,
    H, S_Q, S_K, TUNE_S_Q, TUNE_S_K,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The deterministic dQ pass: rows = queries, streams the K/V blocks up to the last real key."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < S_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_e[None, :],
                mask=mask_m[:, None], other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_ds + offs_e[None, :],
                 mask=mask_m[:, None], other=0.0)
    row = bh.to(tl.int64) * S_Q + offs_m
    lse = _load_lse_log2(Lse, row, mask_m)
    delta = tl.load(Delta + row, mask=mask_m, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    for start_n in range(0, _key_end(KeyLen, b, S_K, HAS_MASK), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < S_K
        valid_n = mask_n
        if HAS_MASK:
            valid_n = valid_n & (tl.load(Mask + b * S_K + offs_n, mask=mask_n, other=0) != 0)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_e[None, :], mask=mask_n[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_e[None, :], mask=mask_n[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # [M, N]
        p = tl.math.exp2(qk - lse[:, None])
        p = tl.where(valid_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION)
    dq *= sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_e[None, :],
             dq.to(DQ.dtype.element_ty), mask=mask_m[:, None])


# ----------------------------------------------------------------------------- launchers

def _tune_lengths(S: int, L: int) -> tuple[int, int]:
    return next_power_of_2(S), next_power_of_2(L)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (tf32 would miss the fp32 tolerance); ignored for 16-bit.
    return "ieee" if dtype == torch.float32 else "tf32"


def check_attention_inputs(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL=None) -> None:
    """Raise a ValueError/TypeError naming the problem if the kernel cannot take these."""
    if q_BHSE.dim() != 4 or k_BHLE.dim() != 4 or v_BHLE.dim() != 4:
        raise ValueError("q, k, v must be [B, H, S, E], [B, H, L, E], [B, H, L, E]; got "
                         f"{tuple(q_BHSE.shape)}, {tuple(k_BHLE.shape)}, {tuple(v_BHLE.shape)}")
    B, H, S, E = q_BHSE.shape
    L = k_BHLE.shape[2]
    if tuple(k_BHLE.shape) != (B, H, L, E) or tuple(v_BHLE.shape) != (B, H, L, E):
        raise ValueError(f"k and v must be [B={B}, H={H}, L, E={E}] like q; got "
                         f"{tuple(k_BHLE.shape)}, {tuple(v_BHLE.shape)}")
    if E not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {E} not supported; flash_attention takes {SUPPORTED_HEAD_DIMS}")
    if not (q_BHSE.dtype == k_BHLE.dtype == v_BHLE.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q_BHSE.dtype}, {k_BHLE.dtype}, {v_BHLE.dtype}")
    if q_BHSE.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"flash_attention takes float16, bfloat16 or float32, got {q_BHSE.dtype}")
    if key_padding_mask_BL is not None:
        if key_padding_mask_BL.dtype != torch.bool or tuple(key_padding_mask_BL.shape) != (B, L):
            raise ValueError(f"key_padding_mask must be bool [B={B}, L={L}], got "
                             f"{key_padding_mask_BL.dtype} {tuple(key_padding_mask_BL.shape)}")
    check_same_device(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)
    check_device(q_BHSE)


_TMA_FAILED: set[tuple] = set()  # (dtype, head dim, masked) classes the TMA kernel failed on
_TMA_ALLOCATOR_SET = False


def _use_tma(*tensors: torch.Tensor) -> bool:
    """TMA forward: MOVIEGEN_ATTN_TMA=1 forces it (also in the interpreter, for tests), =0
    disables it; by default it runs on sm90+ when this Triton has device-side tensor
    descriptors. TMA needs 16-byte aligned base addresses and strides."""
    setting = os.environ.get("MOVIEGEN_ATTN_TMA", "auto")
    if setting == "0" or not hasattr(tl, "make_tensor_descriptor"):
        return False
    if setting != "1":
        if interpreting() or tensors[0].device.type != "cuda":
            return False
        if torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
            return False
    for t in tensors:
        size = t.element_size()
        # a broadcast (stride 0) dimension cannot be described to the TMA unit
        if t.data_ptr() % 16 or any(st == 0 or (st * size) % 16 for st in t.stride()[:-1]):
            return False
    return True


def _ensure_tma_allocator() -> None:
    """Device-side descriptors need a scratch allocator (a few bytes per program)."""
    global _TMA_ALLOCATOR_SET
    if not _TMA_ALLOCATOR_SET:
        def alloc(size: int, alignment: int, stream):
            device = "cpu" if interpreting() else "cuda"
            return torch.empty(size, device=device, dtype=torch.int8)
        triton.set_allocator(alloc)
        _TMA_ALLOCATOR_SET = True


def flash_attention_fwd(q, k, v, key_padding_mask=None, softmax_scale=None):
    """Returns (out_BHSE, lse_BHS fp32, natural log)."""
    check_attention_inputs(q, k, v, key_padding_mask)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, H, S, E = q.shape
    L = k.shape[2]
    sm_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(E)
    out = torch.empty((B, H, S, E), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    mask = key_padding_mask.to(torch.int8).contiguous() if key_padding_mask is not None else None
    grid = lambda meta: (triton.cdiv(S, meta["BLOCK_M"]), B * H)  # noqa: E731
    args = (q, k, v, mask, _key_lengths(mask), out, lse, sm_scale * LOG2E,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2))
    flags = dict(HEAD_DIM=E, HAS_MASK=mask is not None, INPUT_PRECISION=_precision(q.dtype))
    tma_class = (q.dtype, E, mask is not None)
    if tma_class not in _TMA_FAILED and _use_tma(q, k, v, out):
        try:
            _ensure_tma_allocator()
            _attn_fwd_tma_kernel[grid](*args, B, H, S, L, *_tune_lengths(S, L), **flags)
            return out, lse
        except Exception as e:  # noqa: BLE001: every TMA config failed for this class
            _TMA_FAILED.add(tma_class)
            warnings.warn(f"flash_attention: TMA forward failed for {tma_class} "
                          f"({type(e).__name__}: {e}); that class uses the pointer kernel")
    _attn_fwd_kernel[grid](*args, H, S, L, *_tune_lengths(S, L), **flags)
    return out, lse


def _key_lengths(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """int32 [B]: 1 + the index of each sample's last real key (0 when it has none)."""
    if mask is None:
        return None
    if mask.shape[1] == 0:
        return torch.zeros(mask.shape[0], device=mask.device, dtype=torch.int32)
    position = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.int32)
    return (mask.to(torch.int32) * position).amax(dim=1).to(torch.int32)


def deterministic_backward() -> bool:
    """dQ from its own pass (bitwise reproducible, 7 GEMMs a block) rather than fp32 atomic
    adds (5 GEMMs, the FlashAttention-2 default; the summation order, so the last bits of
    dQ, vary run to run). MOVIEGEN_ATTN_DETERMINISTIC=1/0 forces a choice; otherwise it
    follows ``torch.use_deterministic_algorithms``. Read when the forward runs."""
    setting = os.environ.get("MOVIEGEN_ATTN_DETERMINISTIC", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    return torch.are_deterministic_algorithms_enabled()


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: exercises the split on small shapes, stays fast


def _kv_split(S: int, L: int, BH: int, sms: int) -> int:
    """Query splits of the dK/dV grid: enough programs for every SM when the keys are few
    (cross-attention to 512 text tokens: 4 key blocks a head), at most one split per 128
    queries; 1 for self-attention at video lengths."""
    programs = triton.cdiv(L, 128) * BH
    return max(1, min(triton.cdiv(sms, programs), triton.cdiv(S, 128)))


def flash_attention_bwd(do, q, k, v, out, lse, key_padding_mask=None, softmax_scale=None,
                        dlse=None, deterministic: Optional[bool] = None,
                        kv_split: Optional[int] = None):
    """Returns (dq, dk, dv) in the input dtype.

    deterministic: dQ without atomics (default ``deterministic_backward()``). kv_split:
    query splits of the dK/dV kernel (default: enough programs to fill the GPU)."""
    q, k, v, do, out = (_last_dim_contiguous(t) for t in (q, k, v, do, out))
    B, H, S, E = q.shape
    L = k.shape[2]
    sm_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(E)
    if S == 0 or L == 0:
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    deterministic = deterministic_backward() if deterministic is None else deterministic
    split = _kv_split(S, L, B * H, _num_sms(q.device)) if kv_split is None else max(1, int(kv_split))
    delta = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    pre_block = 16 if interpreting() else 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(S, pre_block), B * H)](
        out, do, dlse.contiguous() if dlse is not None else None, delta,
        out.stride(0), out.stride(1), out.stride(2), do.stride(0), do.stride(1), do.stride(2),
        H, S, HEAD_DIM=E, HAS_DLSE=dlse is not None, BLOCK_M=pre_block)
    mask = key_padding_mask.to(torch.int8).contiguous() if key_padding_mask is not None else None
    key_lengths = _key_lengths(mask)
    common = dict(HEAD_DIM=E, HAS_MASK=mask is not None, INPUT_PRECISION=_precision(q.dtype))
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    if split > 1:  # fp32 partials per split, summed below
        dk = torch.empty((split, B, H, L, E), device=q.device, dtype=torch.float32)
        dv = torch.empty((split, B, H, L, E), device=q.device, dtype=torch.float32)
    else:
        dk = torch.empty((1, B, H, L, E), device=q.device, dtype=k.dtype)
        dv = torch.empty((1, B, H, L, E), device=q.device, dtype=v.dtype)
    # the atomic dQ accumulates in fp32; the deterministic pass writes dQ directly
    dq = (torch.empty((B, H, S, E), device=q.device, dtype=q.dtype) if deterministic
          else torch.zeros((B, H, S, E), device=q.device, dtype=torch.float32))
    _attn_bwd_dkdv_kernel[lambda meta: (triton.cdiv(L, meta["BLOCK_N"]), B * H, split)](
        q, k, v, mask, key_lengths, do, lse, delta, dk, dv, dq, sm_scale * LOG2E, sm_scale, *strides,
        *dk.stride()[:4], *dv.stride()[:4], *dq.stride()[:3],
        H, S, L, split, *_tune_lengths(S, L), ATOMIC_DQ=not deterministic, **common)
    if deterministic:
        _attn_bwd_dq_kernel[lambda meta: (triton.cdiv(S, meta["BLOCK_M"]), B * H)](
            q, k, v, mask, key_lengths, do, lse, delta, dq, sm_scale * LOG2E, sm_scale,
            *strides, *dq.stride()[:3], H, S, L, *_tune_lengths(S, L), **common)
    dk = dk[0] if split == 1 else dk.sum(0).to(k.dtype)
    dv = dv[0] if split == 1 else dv.sum(0).to(v.dtype)
    return dq.to(q.dtype), dk, dv


# ----------------------------------------------------------------------------- autograd

# torch.library custom ops (opaque nodes with fake implementations for torch.compile)

@torch.library.custom_op("moviegen_kernels::flash_attention_fwd", mutates_args=())
def _flash_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            key_padding_mask: Optional[torch.Tensor],
                            softmax_scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return flash_attention_fwd(q, k, v, key_padding_mask, softmax_scale)


@_flash_attention_fwd_op.register_fake
def _(q, k, v, key_padding_mask, softmax_scale):
    B, H, S, E = q.shape
    return q.new_empty((B, H, S, E)), q.new_empty((B, H, S), dtype=torch.float32)


@torch.library.custom_op("moviegen_kernels::flash_attention_bwd", mutates_args=())
def _flash_attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            out: torch.Tensor, lse: torch.Tensor,
                            key_padding_mask: Optional[torch.Tensor], softmax_scale: Optional[float],
                            dlse: Optional[torch.Tensor], deterministic: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return flash_attention_bwd(do, q, k, v, out, lse, key_padding_mask, softmax_scale, dlse,
                               deterministic=deterministic)


@_flash_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, key_padding_mask, softmax_scale, dlse, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, softmax_scale):
        out, lse = _flash_attention_fwd_op(q, k, v, key_padding_mask, softmax_scale)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.softmax_scale = softmax_scale
        # the dQ mode in force when the attention ran (its backward may run elsewhere)
        ctx.deterministic = deterministic_backward()
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(out)
        dq, dk, dv = _flash_attention_bwd_op(do, q, k, v, out, lse, mask, ctx.softmax_scale, dlse,
                                             ctx.deterministic)
        return dq, dk, dv, None, None


def flash_attention(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL=None, return_lse: bool = False,
                    softmax_scale: float | None = None):
    """softmax(q k^T * scale, keys masked by key_padding_mask_BL (True = real)) v.

    Returns out_BHSE, or (out_BHSE, lse_BHS) with ``return_lse`` (fp32, natural log, -inf
    for a row with no real key; differentiable). scale defaults to 1/sqrt(E).
    """
    out, lse = FlashAttentionFunction.apply(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL,
                                            softmax_scale)
    return (out, lse) if return_lse else out


class FlashAttention(torch.nn.Module):
    """Module form of ``flash_attention`` (no parameters): forward(q, k, v, mask=None)."""

    def forward(self, q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL=None):
        return flash_attention(q_BHSE, k_BHLE, v_BHLE, key_padding_mask_BL)

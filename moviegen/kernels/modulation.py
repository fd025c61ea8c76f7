"""Fused adaLN modulation: modulated RMSNorm and gated residual.

    modulated_rms_norm(x, w, scale, shift)  y = RMSNorm(x) * w * (1 + scale) + shift
    gated_residual(x, gate, h)              x + gate * h

(A residual fused into the next norm would save one pass, but a Movie Gen block adds the
position embedding between them, so the model could never call it.)

Shapes (legend): B batch, S tokens (a sequence shard is fine: these ops are per token),
D model width. x_BSD, h_BSD are [B, S, D]; gate_BD, scale_BD, shift_BD are one vector per
sample, broadcast over the S tokens; weight_D is the norm weight or None.

Layering (as in Liger-Kernel): ``@triton.jit`` kernels -> launchers (checks, grid, launch),
registered as ``torch.library`` custom ops so torch.compile treats them as opaque nodes
-> ``torch.autograd.Function`` -> functional API (the model's modules call it through
``kernels.dispatch``).

Layouts: operands may have any strides; the launchers make them dense (a no-op when they
already are) because the kernels index rows as ``row * D``.

Numerics: every kernel loads in the storage dtype and computes in fp32. Output dtypes
follow the torch reference's type promotion (e.g. bf16 x with fp32 scale gives fp32 y).
Backward reductions over tokens (d_scale, d_shift, d_gate, d_weight) are deterministic:
each program accumulates a fixed range of rows in registers and writes one partial per
program; the partials are summed with torch afterwards (no atomics).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._utils import (check_device, check_float, check_same_device, check_shape, next_power_of_2,
                     num_warps_for, target_programs)


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _modulated_rms_norm_fwd_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr, rstd_ptr,
    S, D, eps,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program: BLOCK_S tokens x all D of one sample. Rows of D live in one tile."""
    pid_s = tl.program_id(0)
    b = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask = (offs_s < S)[:, None] & mask_d[None, :]
    rows = b.to(tl.int64) * S + offs_s
    offs = rows[:, None] * D + offs_d[None, :]

    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)
    n = x * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        n = n * w[None, :]
    scale = tl.load(scale_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    y = n * (1.0 + scale[None, :]) + shift[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=offs_s < S)


@triton.jit
def _modulated_rms_norm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, scale_ptr, rstd_ptr, dx_ptr, dyn_part_ptr, dy_part_ptr,
    S, D, rows_per_program,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program: a fixed range of rows of one sample; per-program partial reductions.

    n = x * rstd (unweighted), y = n * w * (1 + scale) + shift:
      d_shift[b] = sum_s dy
      A[b] = sum_s dy * n   gives  d_scale[b] = A[b] * w  and  d_w = sum_b A[b] * (1 + scale[b])
      dn = dy * w * (1 + scale),  dx = rstd * (dn - n * mean(dn * n))
    so two row-long accumulators (A, d_shift) serve all three parameter gradients; the
    [B, D] epilogue runs in torch. Few live row vectors matter: a D = 6144 row is padded
    to 8192 lanes and every vector held across the loop costs registers.
    """
    pid = tl.program_id(0)
    b = tl.program_id(1)
    num_programs = tl.num_programs(0)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D

    acc_dyn = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_dy = tl.zeros((BLOCK_D,), dtype=tl.float32)

    s_start = pid * rows_per_program
    s_end = tl.minimum(s_start + rows_per_program, S)
    if BLOCK_S == 1:
        # one row a step as a 1-D vector: the same math on a [1, BLOCK_D] tile spilled
        # 120 B at D = 6144 (8192 lanes, 32 warps) under Triton 3.9 for sm_90a
        for s in range(s_start, s_end):
            row = b.to(tl.int64) * S + s
            dy = tl.load(dy_ptr + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            n = x * rstd
            acc_dy += dy
            acc_dyn += dy * n
            coef = 1.0 + tl.load(scale_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_WEIGHT:
                coef = coef * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            dn = dy * coef
            c = tl.sum(dn * n, axis=0) / D
            dx = (dn - n * c) * rstd
            tl.store(dx_ptr + row * D + offs_d, dx.to(dx_ptr.dtype.element_ty), mask=mask_d)
    else:
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            mask_s = offs_s < s_end
            mask = mask_s[:, None] & mask_d[None, :]
            rows = b.to(tl.int64) * S + offs_s
            offs = rows[:, None] * D + offs_d[None, :]
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=mask_s, other=0.0)
            n = x * rstd[:, None]
            acc_dy += tl.sum(dy, axis=0)
            acc_dyn += tl.sum(dy * n, axis=0)
            # (1 + scale) * w is reloaded each step (L1-resident) rather than held: one row
            # vector fewer live across the loop
            coef = 1.0 + tl.load(scale_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_WEIGHT:
                coef = coef * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            dn = dy * coef[None, :]
            c = tl.sum(dn * n, axis=1) / D
            dx = (dn - n * c[:, None]) * rstd[:, None]
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    part = (b * num_programs + pid) * D + offs_d
    tl.store(dyn_part_ptr + part, acc_dyn, mask=mask_d)
    tl.store(dy_part_ptr + part, acc_dy, mask=mask_d)


@triton.jit
def _gated_residual_fwd_kernel(x_ptr, gate_ptr, h_ptr, out_ptr, S, D,
                               BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_s = tl.program_id(0)
    b = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask = (offs_s < S)[:, None] & mask_d[None, :]
    offs = (b.to(tl.int64) * S + offs_s)[:, None] * D + offs_d[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (x + gate[None, :] * h).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_bwd_kernel(d_out_ptr, gate_ptr, h_ptr, dh_ptr, d_gate_part_ptr,
                               S, D, rows_per_program,
                               BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """dh = d_out * gate; d_gate = sum_s d_out * h (per-program partials). dx = d_out."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    num_programs = tl.num_programs(0)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    gate = tl.load(gate_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    acc_gate = tl.zeros((BLOCK_D,), dtype=tl.float32)
    s_start = pid * rows_per_program
    s_end = tl.minimum(s_start + rows_per_program, S)
    for s0 in range(s_start, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < s_end)[:, None] & mask_d[None, :]
        offs = (b.to(tl.int64) * S + offs_s)[:, None] * D + offs_d[None, :]
        d_out = tl.load(d_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc_gate += tl.sum(d_out * h, axis=0)
        tl.store(dh_ptr + offs, (d_out * gate[None, :]).to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(d_gate_part_ptr + (b * num_programs + pid) * D + offs_d, acc_gate, mask=mask_d)


# ----------------------------------------------------------------------------- launchers

def _row_tiling(D: int) -> tuple[int, int, int]:
    """(BLOCK_S, BLOCK_D, num_warps): a whole row of D per tile, ~4k elements a tile."""
    block_d = next_power_of_2(D)
    block_s = max(1, min(16, 4096 // block_d))
    return block_s, block_d, num_warps_for(block_s * block_d)


def _backward_warps(tile_elements: int, forward_warps: int) -> int:
    """The backward holds ~6 row vectors live across its loop: give a long row more threads
    (8192 lanes over 32 warps = 8 fp32 registers per vector per thread; 16 warps spill)."""
    return max(forward_warps, min(32, tile_elements // 256))


def _reduction_split(S: int, B: int, block_s: int, device: torch.device) -> tuple[int, int]:
    """(programs per sample, rows per program) for the backward partial reductions."""
    per_sample = max(1, min(triton.cdiv(S, block_s), triton.cdiv(target_programs(device), B)))
    rows = triton.cdiv(triton.cdiv(S, per_sample), block_s) * block_s
    return triton.cdiv(S, rows), rows


def _check_inputs(x_BSD: torch.Tensor, per_sample: dict, weight_D, h_BSD=None) -> None:
    if x_BSD.dim() != 3:
        raise ValueError(f"x must be [B, S, D], got shape {tuple(x_BSD.shape)}")
    B, S, D = x_BSD.shape
    check_float("x", x_BSD)
    for name, t in per_sample.items():
        check_float(name, t)
        check_shape(name, t, (B, D))
    if weight_D is not None:
        check_float("weight", weight_D)
        check_shape("weight", weight_D, (D,))
    if h_BSD is not None:
        check_float("h", h_BSD)
        check_shape("h", h_BSD, (B, S, D))
    check_same_device(x_BSD, weight_D, h_BSD, *per_sample.values())
    check_device(x_BSD)


def modulated_rms_norm_fwd(x_BSD, weight_D, scale_BD, shift_BD, eps):
    """Launch the forward. Returns (y, rstd_BS)."""
    _check_inputs(x_BSD, {"scale": scale_BD, "shift": shift_BD}, weight_D)
    B, S, D = x_BSD.shape
    y_dtype = torch.promote_types(torch.promote_types(x_BSD.dtype, scale_BD.dtype), shift_BD.dtype)
    y = torch.empty(x_BSD.shape, device=x_BSD.device, dtype=y_dtype)
    rstd = torch.empty((B, S), device=x_BSD.device, dtype=torch.float32)
    if y.numel() == 0:
        return y, rstd
    block_s, block_d, num_warps = _row_tiling(D)
    _modulated_rms_norm_fwd_kernel[(triton.cdiv(S, block_s), B)](
        x_BSD.contiguous(), weight_D.contiguous() if weight_D is not None else None,
        scale_BD.contiguous(), shift_BD.contiguous(), y, rstd, S, D, float(eps),
        HAS_WEIGHT=weight_D is not None, BLOCK_S=block_s, BLOCK_D=block_d, num_warps=num_warps)
    return y, rstd


def modulated_rms_norm_bwd(dy, x_BSD, weight_D, scale_BD, rstd_BS):
    """Launch the backward. Returns (dx, d_weight or None, d_scale, d_shift), fp32 reductions."""
    B, S, D = x_BSD.shape
    # the kernel indexes every operand as dense rows (a weight sliced from a larger
    # parameter or a gradient of any layout arrives here): make them so, no-op when already
    dy, x_BSD, scale_BD, rstd_BS = (t.contiguous() for t in (dy, x_BSD, scale_BD, rstd_BS))
    weight_D = weight_D.contiguous() if weight_D is not None else None
    dx = torch.empty(x_BSD.shape, device=x_BSD.device, dtype=x_BSD.dtype)
    block_s, block_d, num_warps = _row_tiling(D)
    num_warps = _backward_warps(block_s * block_d, num_warps)
    per_sample, rows = _reduction_split(S, B, block_s, x_BSD.device)
    dyn_p = torch.zeros((B, per_sample, D), device=x_BSD.device, dtype=torch.float32)
    dy_p = torch.zeros_like(dyn_p)
    if S > 0:
        _modulated_rms_norm_bwd_kernel[(per_sample, B)](
            dy, x_BSD, weight_D, scale_BD, rstd_BS, dx, dyn_p, dy_p, S, D, rows,
            HAS_WEIGHT=weight_D is not None, BLOCK_S=block_s, BLOCK_D=block_d,
            num_warps=num_warps)
    dyn_BD = dyn_p.sum(1)  # sum_s dy * rstd * x
    d_scale = dyn_BD * weight_D.float() if weight_D is not None else dyn_BD
    d_w = (dyn_BD * (1.0 + scale_BD.float())).sum(0) if weight_D is not None else None
    return dx, d_w, d_scale, dy_p.sum(1)


def gated_residual_fwd(x_BSD, gate_BD, h_BSD):
    _check_inputs(x_BSD, {"gate": gate_BD}, None, h_BSD)
    B, S, D = x_BSD.shape
    out_dtype = torch.promote_types(torch.promote_types(x_BSD.dtype, gate_BD.dtype), h_BSD.dtype)
    out = torch.empty(x_BSD.shape, device=x_BSD.device, dtype=out_dtype)
    if out.numel():
        block_s, block_d, num_warps = _row_tiling(D)
        _gated_residual_fwd_kernel[(triton.cdiv(S, block_s), B)](
            x_BSD.contiguous(), gate_BD.contiguous(), h_BSD.contiguous(), out, S, D,
            BLOCK_S=block_s, BLOCK_D=block_d, num_warps=num_warps)
    return out


def gated_residual_bwd(d_out, gate_BD, h_BSD):
    """Returns (dh, d_gate fp32). dx is d_out itself."""
    B, S, D = h_BSD.shape
    d_out, gate_BD, h_BSD = d_out.contiguous(), gate_BD.contiguous(), h_BSD.contiguous()
    dh = torch.empty(h_BSD.shape, device=h_BSD.device, dtype=h_BSD.dtype)
    block_s, block_d, num_warps = _row_tiling(D)
    num_warps = _backward_warps(block_s * block_d, num_warps)
    per_sample, rows = _reduction_split(S, B, block_s, h_BSD.device)
    d_gate_p = torch.zeros((B, per_sample, D), device=h_BSD.device, dtype=torch.float32)
    if S > 0:
        _gated_residual_bwd_kernel[(per_sample, B)](
            d_out, gate_BD, h_BSD, dh, d_gate_p, S, D, rows,
            BLOCK_S=block_s, BLOCK_D=block_d, num_warps=num_warps)
    return dh, d_gate_p.sum(1)


# ----------------------------------------------------------------------------- torch ops
# The launchers registered as torch.library custom ops: torch.compile (Dynamo/AOTAutograd)
# sees each launch as one opaque node with a fake (shape/dtype) implementation, so a
# compiled block keeps a full graph around the kernels instead of breaking at them.
# Custom ops cannot return None: absent outputs are empty placeholders.

def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


@torch.library.custom_op("moviegen_kernels::modulated_rms_norm_fwd", mutates_args=())
def _modulated_rms_norm_fwd_op(x: torch.Tensor, weight: Optional[torch.Tensor], scale: torch.Tensor,
                               shift: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return modulated_rms_norm_fwd(x, weight, scale, shift, eps)


@_modulated_rms_norm_fwd_op.register_fake
def _(x, weight, scale, shift, eps):
    y_dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)
    return x.new_empty(x.shape, dtype=y_dtype), x.new_empty(x.shape[:2], dtype=torch.float32)


@torch.library.custom_op("moviegen_kernels::modulated_rms_norm_bwd", mutates_args=())
def _modulated_rms_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                               scale: torch.Tensor, rstd: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, d_w, d_scale, d_shift = modulated_rms_norm_bwd(dy, x, weight, scale, rstd)
    return dx, d_w if d_w is not None else _empty(x), d_scale, d_shift


@_modulated_rms_norm_bwd_op.register_fake
def _(dy, x, weight, scale, rstd):
    B, S, D = x.shape
    f32 = lambda *shape: x.new_empty(shape, dtype=torch.float32)  # noqa: E731
    return (x.new_empty(x.shape), f32(D) if weight is not None else _empty(x), f32(B, D), f32(B, D))


@torch.library.custom_op("moviegen_kernels::gated_residual_fwd", mutates_args=())
def _gated_residual_fwd_op(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return gated_residual_fwd(x, gate, h)


@_gated_residual_fwd_op.register_fake
def _(x, gate, h):
    return x.new_empty(x.shape, dtype=torch.promote_types(torch.promote_types(x.dtype, gate.dtype), h.dtype))


@torch.library.custom_op("moviegen_kernels::gated_residual_bwd", mutates_args=())
def _gated_residual_bwd_op(d_out: torch.Tensor, gate: torch.Tensor,
                           h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gated_residual_bwd(d_out, gate, h)


@_gated_residual_bwd_op.register_fake
def _(d_out, gate, h):
    return h.new_empty(h.shape), h.new_empty((h.shape[0], h.shape[2]), dtype=torch.float32)


# ----------------------------------------------------------------------------- autograd

class ModulatedRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BSD, weight_D, scale_BD, shift_BD, eps):
        y, rstd = _modulated_rms_norm_fwd_op(x_BSD, weight_D, scale_BD, shift_BD, eps)
        ctx.save_for_backward(x_BSD, weight_D, scale_BD, rstd)
        ctx.shift_dtype = shift_BD.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, scale, rstd = ctx.saved_tensors
        dx, d_w, d_scale, d_shift = _modulated_rms_norm_bwd_op(dy, x, weight, scale, rstd)
        return (dx, d_w.to(weight.dtype) if weight is not None else None,
                d_scale.to(scale.dtype), d_shift.to(ctx.shift_dtype), None)


class GatedResidualFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BSD, gate_BD, h_BSD):
        out = _gated_residual_fwd_op(x_BSD, gate_BD, h_BSD)
        ctx.save_for_backward(gate_BD, h_BSD)
        ctx.x_dtype = x_BSD.dtype
        return out

    @staticmethod
    def backward(ctx, d_out):
        gate, h = ctx.saved_tensors
        dh, d_gate = _gated_residual_bwd_op(d_out, gate, h)
        return d_out.to(ctx.x_dtype), d_gate.to(gate.dtype), dh


# ----------------------------------------------------------------------------- public API

def modulated_rms_norm(x_BSD, weight_D, scale_BD, shift_BD, eps: float = 1e-6):
    """RMSNorm(x) * weight * (1 + scale) + shift; scale/shift [B, D] broadcast over S."""
    return ModulatedRMSNormFunction.apply(x_BSD, weight_D, scale_BD, shift_BD, eps)


def gated_residual(x_BSD, gate_BD, h_BSD):
    """x + gate * h; gate [B, D] broadcast over S."""
    return GatedResidualFunction.apply(x_BSD, gate_BD, h_BSD)

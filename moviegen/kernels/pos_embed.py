"""Fused factorized position-embedding add: out = x + pos_t[t] + pos_h[h] + pos_w[w].

Shapes (legend): B batch, S tokens of this shard, D width; pos_t_TD / pos_h_HD / pos_w_WD
are the learnable tables (they may hold more rows than the grid uses: tables grow between
stages). grid_THW = (T, H, W) is the sample's full latent grid; tokens are ordered t-major,
token index = (t * H + h) * W + w, and this shard holds tokens
[token_offset, token_offset + S) of the full T*H*W sequence (sequence/context parallel).

The [T*H*W, D] embedding is never materialised: the forward derives (t, h, w) from the
token index inside the kernel and gathers three table rows (tiny, L2-resident), reusing
them for every sample of the batch.

Backward: dx = d_out (identity, no copy). The table gradients are sums of d_out over the
tokens that use each row. One pass over d_out does all three without atomics: a program
owns a D-block and a range of "lines" (the W tokens sharing one (t, h)); per line it sums
d_out over the batch into a [W, BLOCK_D] tile, adds that tile to its private d_pos_w
accumulator, and writes the line's sum over w (the line's share of d_pos_t[t] and
d_pos_h[h]). The per-program d_pos_w partials and the per-line sums (W times smaller than
d_out) are reduced with torch, so the result is deterministic.

Layering (as in Liger-Kernel): kernels -> launchers (registered as torch.library custom ops,
opaque to torch.compile) -> autograd.Function -> functional API.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (check_device, check_float, check_same_device, next_power_of_2,
                     num_warps_for, target_programs)


@triton.jit
def _add_pos_embed_fwd_kernel(
    x_ptr, pos_t_ptr, pos_h_ptr, pos_w_ptr, out_ptr,
    B, S, D, H, W, token_offset,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_s = offs_s < S
    mask_d = offs_d < D
    mask = mask_s[:, None] & mask_d[None, :]

    token = token_offset + offs_s
    w = token % W
    line = token // W  # = t * H + h
    h = line % H
    t = line // H
    pos = tl.load(pos_t_ptr + t[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    pos += tl.load(pos_h_ptr + h[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    pos += tl.load(pos_w_ptr + w[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)

    for b in range(B):
        offs = (b * S + offs_s).to(tl.int64)[:, None] * D + offs_d[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x + pos).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_pos_embed_bwd_kernel(
    d_out_ptr, d_pos_w_part_ptr, d_line_ptr,
    B, S, D, W, token_offset, first_line, num_lines, lines_per_program,
    BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_l = tl.program_id(1)
    offs_w = tl.arange(0, BLOCK_W)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc_w = tl.zeros((BLOCK_W, BLOCK_D), dtype=tl.float32)

    l_start = pid_l * lines_per_program
    l_end = tl.minimum(l_start + lines_per_program, num_lines)
    for l in range(l_start, l_end):
        # tokens of this line that belong to the shard (the shard may cut lines at its ends)
        s = (first_line + l) * W + offs_w - token_offset
        mask = ((offs_w < W) & (s >= 0) & (s < S))[:, None] & mask_d[None, :]
        g = tl.zeros((BLOCK_W, BLOCK_D), dtype=tl.float32)
        for b in range(B):
            offs = (b * S + s).to(tl.int64)[:, None] * D + offs_d[None, :]
            g += tl.load(d_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc_w += g
        tl.store(d_line_ptr + l * D + offs_d, tl.sum(g, axis=0), mask=mask_d)

    part = (pid_l * W + offs_w)[:, None] * D + offs_d[None, :]
    tl.store(d_pos_w_part_ptr + part, acc_w, mask=(offs_w < W)[:, None] & mask_d[None, :])


def _check(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset):
    if x_BSD.dim() != 3:
        raise ValueError(f"x must be [B, S, D], got shape {tuple(x_BSD.shape)}")
    B, S, D = x_BSD.shape
    T, H, W = (int(v) for v in grid_THW)
    check_float("x", x_BSD)
    for name, table, n in (("pos_t", pos_t_TD, T), ("pos_h", pos_h_HD, H), ("pos_w", pos_w_WD, W)):
        check_float(name, table)
        if table.dim() != 2 or table.shape[1] != D or table.shape[0] < n:
            raise ValueError(f"{name} must be [>= {n}, {D}] for grid {(T, H, W)}, "
                             f"got {tuple(table.shape)}")
    if min(T, H, W) < 1:
        raise ValueError(f"grid_THW must be positive, got {(T, H, W)}")
    if token_offset < 0 or token_offset + S > T * H * W:
        raise ValueError(f"tokens [{token_offset}, {token_offset + S}) are outside the grid's "
                         f"{T * H * W} tokens")
    check_same_device(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD)
    check_device(x_BSD)
    return B, S, D, T, H, W


def add_factorized_pos_embed_fwd(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset=0):
    B, S, D, T, H, W = _check(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset)
    out = torch.empty(x_BSD.shape, device=x_BSD.device, dtype=x_BSD.dtype)
    if out.numel() == 0:
        return out
    block_d = min(next_power_of_2(D), 512)
    block_s = max(1, min(64, 4096 // block_d))
    _add_pos_embed_fwd_kernel[(triton.cdiv(S, block_s), triton.cdiv(D, block_d))](
        x_BSD.contiguous(), pos_t_TD.contiguous(), pos_h_HD.contiguous(), pos_w_WD.contiguous(),
        out, B, S, D, H, W, int(token_offset),
        BLOCK_S=block_s, BLOCK_D=block_d, num_warps=num_warps_for(block_s * block_d))
    return out


def add_factorized_pos_embed_bwd(d_out, grid_THW, token_offset, table_rows, table_dtypes):
    """Gradients of the three tables (shapes [rows, D] as given), fp32 sums cast to dtype."""
    B, S, D = d_out.shape
    T, H, W = (int(v) for v in grid_THW)
    d_out = d_out.contiguous()
    first_line = token_offset // W
    num_lines = (token_offset + S - 1) // W - first_line + 1 if S > 0 else 0
    block_w = next_power_of_2(W)
    block_d = max(16, min(next_power_of_2(D), 128, 8192 // block_w))
    num_d_blocks = triton.cdiv(D, block_d)
    num_l_programs = max(1, min(num_lines, triton.cdiv(target_programs(d_out.device), num_d_blocks)))
    lines_per_program = max(1, triton.cdiv(num_lines, num_l_programs))
    num_l_programs = max(1, triton.cdiv(num_lines, lines_per_program))
    dev = d_out.device
    d_pos_w_part = torch.zeros((num_l_programs, W, D), device=dev, dtype=torch.float32)
    d_line = torch.zeros((T * H, D), device=dev, dtype=torch.float32)
    if num_lines > 0:
        _add_pos_embed_bwd_kernel[(num_d_blocks, num_l_programs)](
            d_out, d_pos_w_part, d_line[first_line:first_line + num_lines],
            B, S, D, W, int(token_offset), first_line, num_lines, lines_per_program,
            BLOCK_W=block_w, BLOCK_D=block_d, num_warps=num_warps_for(block_w * block_d))
    d_line_THD = d_line.view(T, H, D)
    grads = []
    for rows, dtype, g in zip(table_rows, table_dtypes,
                              (d_line_THD.sum(1), d_line_THD.sum(0), d_pos_w_part.sum(0))):
        full = torch.zeros((rows, D), device=dev, dtype=dtype)
        full[: g.shape[0]] = g.to(dtype)
        grads.append(full)
    return grads


# torch.library custom ops (opaque nodes with fake implementations for torch.compile)

@torch.library.custom_op("moviegen_kernels::add_factorized_pos_embed_fwd", mutates_args=())
def _add_pos_embed_fwd_op(x: torch.Tensor, pos_t: torch.Tensor, pos_h: torch.Tensor,
                          pos_w: torch.Tensor, grid_THW: list[int], token_offset: int) -> torch.Tensor:
    return add_factorized_pos_embed_fwd(x, pos_t, pos_h, pos_w, grid_THW, token_offset)


@_add_pos_embed_fwd_op.register_fake
def _(x, pos_t, pos_h, pos_w, grid_THW, token_offset):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("moviegen_kernels::add_factorized_pos_embed_bwd", mutates_args=())
def _add_pos_embed_bwd_op(d_out: torch.Tensor, pos_t: torch.Tensor, pos_h: torch.Tensor,
                          pos_w: torch.Tensor, grid_THW: list[int], token_offset: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tables are passed only for their shapes and dtypes (the gradients' layout)."""
    tables = (pos_t, pos_h, pos_w)
    return tuple(add_factorized_pos_embed_bwd(d_out, grid_THW, token_offset,
                                              [t.shape[0] for t in tables], [t.dtype for t in tables]))


@_add_pos_embed_bwd_op.register_fake
def _(d_out, pos_t, pos_h, pos_w, grid_THW, token_offset):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (pos_t, pos_h, pos_w))


class AddFactorizedPosEmbedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset):
        out = _add_pos_embed_fwd_op(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, list(grid_THW), token_offset)
        ctx.grid_THW = list(grid_THW)
        ctx.token_offset = token_offset
        ctx.save_for_backward(pos_t_TD, pos_h_HD, pos_w_WD)  # parameters: no extra memory
        return out

    @staticmethod
    def backward(ctx, d_out):
        d_t, d_h, d_w = (None, None, None)
        if any(ctx.needs_input_grad[1:4]):
            d_t, d_h, d_w = _add_pos_embed_bwd_op(d_out, *ctx.saved_tensors, ctx.grid_THW,
                                                  ctx.token_offset)
        return d_out, d_t, d_h, d_w, None, None


def add_factorized_pos_embed(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD, grid_THW, token_offset: int = 0):
    """x + pos_t[t] + pos_h[h] + pos_w[w] for the shard's tokens (see the module docstring)."""
    return AddFactorizedPosEmbedFunction.apply(x_BSD, pos_t_TD, pos_h_HD, pos_w_WD,
                                               tuple(int(v) for v in grid_THW), int(token_offset))

"""Activation checkpointing per transformer block: none, full, selective, or a mix.

  full       a block keeps only its inputs; everything inside is recomputed in backward
  selective  op-level, sequence-parallel aware: keeps the column-parallel matmul outputs
             (Q, K, V, cross Q / text K, V, W1, W3: [S/cp, D/tp] or [S/cp, F/tp] per rank),
             the attention outputs and logsumexps, and the reduce-scatter outputs of the
             row-parallel matmuls (O, cross O, W2: sequence-sharded [S/(cp*tp), D]);
             recomputes norms, modulation, SiLU, residuals and every all-gather (the TP
             sequence gather [S/cp, D], the CP K/V gather [S, D/tp]). The row-parallel
             matmul outputs themselves are NOT kept under TP: before their reduce-scatter
             they are full width [S/cp, D] per rank, tp times the sequence-sharded result
             (their matmul is recomputed instead; without TP they are the sequence shard
             and are kept). This is the per-layer footprint of Megatron-LM's selective
             recompute with sequence parallelism (Korthikanti et al., 2022, "Reducing
             Activation Recomputation in Large Transformer Models").
  selective with ``full_blocks=k``: the first k blocks full, the rest selective; the
             memory-budget mode (moviegen/parallel/memory_model.py picks the smallest k that fits).

Applied by class swap (a subclass whose forward runs the original under
``torch.utils.checkpoint``), so parameter names do not change (no
``_checkpoint_wrapped_module`` prefixes in state dicts).
"""
from __future__ import annotations

import threading
from functools import partial

import torch
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                    create_selective_checkpoint_contexts)

from moviegen.parallel.parallel_dims import AC_MODES

_MATMUL_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
_SAVE_OPS = {
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}
# Row-parallel projections whose matmul output is a full-width partial sum under TP.
ROW_PARALLEL = ("attn.wo", "cross_attn.wo", "ffn.w2")

_state = threading.local()


def _in_row_parallel() -> bool:
    return getattr(_state, "row_parallel", 0) > 0


def _selective_policy(ctx, op, *args, **kwargs):
    if op in _MATMUL_OPS:
        return (CheckpointPolicy.PREFER_RECOMPUTE if _in_row_parallel()
                else CheckpointPolicy.MUST_SAVE)
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _enter(module, args):
    _state.row_parallel = getattr(_state, "row_parallel", 0) + 1


def _leave(module, args, output):
    _state.row_parallel -= 1


def _mark_row_parallel(block) -> None:
    """Flags the TP-sharded row-parallel linears so the policy recomputes their matmul."""
    for name in ROW_PARALLEL:
        lin = block.get_submodule(name)
        if isinstance(lin.weight, DTensor) and not getattr(lin, "_ac_row_parallel", False):
            lin.register_forward_pre_hook(_enter)
            lin.register_forward_hook(_leave, always_call=True)
            lin._ac_row_parallel = True


class _Checkpointed:
    """Mixin placed in front of a block's class."""

    ac_mode: str = "full"

    def forward(self, *args, **kwargs):
        fwd = super().forward
        if self.ac_mode == "selective":
            return checkpoint(fwd, *args, use_reentrant=False,
                              context_fn=partial(create_selective_checkpoint_contexts,
                                                 _selective_policy), **kwargs)
        return checkpoint(fwd, *args, use_reentrant=False, **kwargs)


_CLASSES: dict[type, type] = {}


def apply_activation_checkpointing(model, mode: str, full_blocks: int = 0) -> None:
    """``full_blocks`` (selective only): how many blocks, from the first, recompute fully."""
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing mode must be one of {AC_MODES}, got {mode!r}")
    n = len(model.blocks)
    if full_blocks and mode != "selective":
        raise ValueError(f"full_blocks={full_blocks} needs ac mode 'selective', got {mode!r}")
    if not 0 <= full_blocks <= n:
        raise ValueError(f"full_blocks must be in [0, {n}] (the model's blocks), got {full_blocks}")
    if mode == "none":
        return
    for i, block in enumerate(model.blocks.values()):
        cls = type(block)
        if cls not in _CLASSES:
            _CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
        block.__class__ = _CLASSES[cls]
        block.ac_mode = "full" if i < full_blocks else mode
        if block.ac_mode == "selective":
            _mark_row_parallel(block)

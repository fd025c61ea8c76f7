"""Activation checkpointing per transformer block: none, full or selective.

  full       a block keeps only its input; everything inside is recomputed in backward
  selective  op-level: matmul and attention outputs and reduce-scatter results are
             saved, the cheap memory-bound ops (norms, modulation, SiLU, residuals) and
             all-gathers (TP sequence gather, CP K/V gather) are recomputed

Applied by class swap (a subclass whose forward runs the original under
``torch.utils.checkpoint``), so parameter names do not change (no
``_checkpoint_wrapped_module`` prefixes in state dicts).
"""
from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                    create_selective_checkpoint_contexts)

AC_MODES = ("none", "full", "selective")

_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}


def _selective_policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


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


def apply_activation_checkpointing(model, mode: str) -> None:
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing mode must be one of {AC_MODES}, got {mode!r}")
    if mode == "none":
        return
    for block in model.blocks.values():
        cls = type(block)
        if cls not in _CLASSES:
            _CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
        block.__class__ = _CLASSES[cls]
        block.ac_mode = mode

"""Tensor + sequence parallel for the Movie Gen block, with the plan kept as data.

Between sublayers the residual stream is a plain local tensor holding this rank's
sequence shard [B, S/(cp*tp), D]: norms, adaLN modulation, position adds and gated
residuals run on S/(cp*tp) tokens (sequence parallel). Entering a sublayer, the shard is
all-gathered over TP (S/cp tokens, DTensor Replicate); Q/K/V and W1/W3 are column
parallel (each rank owns n_heads/tp heads and ffn_dim/tp columns); O and W2 are row
parallel and reduce-scatter back to sequence shards. Cross-attention K/V come from the
text, which is replicated on every TP rank (never sequence-sharded).

Gradients: DTensor reduces what flows through the TP collectives (the text's gradient,
the sequence shard's). Parameters used only in the sequence-parallel region (norm
weights, the adaLN tables and shared time MLP, positions, patch embedding, final layer)
see only this rank's tokens, so their gradients are partial sums over TP:
``reduce_sequence_parallel_grads`` all-reduces them (one flat buffer) after backward.
``apply_tensor_parallel`` records each model it shards with its TP group, so
``finish_sequence_parallel_grads(model)`` (which the training loop calls after every
backward) finds them without the trainer knowing the layout: a model TP never touched,
or a one-process run, needs and gets nothing.
"""
from __future__ import annotations

import fnmatch
import weakref

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                               RowwiseParallel, parallelize_module)

from moviegen.parallel.state import canonical_name

# --------------------------------------------------------------------------- the plan
# Module name inside a TransformerBlock -> style name. Read by apply_tensor_parallel and
# by benchmarks/plan.py (communication volume).
BLOCK_TP_PLAN: dict[str, str] = {
    "attn": "gather_sequence",               # x: Shard(1) -> Replicate (all-gather)
    "attn.wq": "colwise",
    "attn.wk": "colwise",
    "attn.wv": "colwise",
    "attn.wo": "rowwise_to_sequence",        # Partial -> Shard(1) (reduce-scatter)
    "cross_attn": "gather_sequence_with_text",  # x gathered, text already replicated
    "cross_attn.wq": "colwise",
    "cross_attn.wk": "colwise",
    "cross_attn.wv": "colwise",
    "cross_attn.wo": "rowwise_to_sequence",
    "ffn": "gather_sequence",
    "ffn.w1": "colwise",
    "ffn.w3": "colwise",
    "ffn.w2": "rowwise_to_sequence",
}

# Parameters whose gradient is computed from this rank's sequence shard only (patterns on
# canonical parameter names); their gradients are summed over TP after backward.
SEQUENCE_PARALLEL_PARAMS: tuple[str, ...] = (
    "patch_embed.*", "pos_embed.*", "time_embed.*",
    "blocks.*.modulation", "blocks.*.attn_norm.*", "blocks.*.cross_norm.*",
    "blocks.*.ffn_norm.*", "final_layer.*",
)


def _style(name: str):
    if name == "colwise":
        return ColwiseParallel()  # input Replicate, output local Shard(-1) (local heads)
    if name == "rowwise_to_sequence":
        return RowwiseParallel(output_layouts=Shard(1))
    if name == "gather_sequence":
        # use_local_output=False: Q/K/V (or W1/W3) share one DTensor input, so their
        # Partial input-gradients add up first and leave as ONE reduce-scatter.
        return PrepareModuleInput(input_layouts=(Shard(1),),
                                  desired_input_layouts=(Replicate(),),
                                  use_local_output=False)
    if name == "gather_sequence_with_text":
        return PrepareModuleInput(input_layouts=(Shard(1), Replicate(), None),
                                  desired_input_layouts=(Replicate(), Replicate(), None),
                                  use_local_output=False)
    raise KeyError(f"unknown tensor-parallel style '{name}'")


# Model -> the TP group whose ranks each hold partial sums of its sequence-parallel
# gradients (weak: a model that is dropped takes its entry with it).
_SEQUENCE_PARALLEL_GROUPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def apply_tensor_parallel(model, tp_mesh) -> None:
    """Shards every block's projections over ``tp_mesh`` per BLOCK_TP_PLAN (in place)."""
    for block in model.blocks.values():
        parallelize_module(block, tp_mesh, {k: _style(v) for k, v in BLOCK_TP_PLAN.items()})
    _SEQUENCE_PARALLEL_GROUPS[model] = tp_mesh.get_group()


# --------------------------------------------------------------------------- gradients
def is_sequence_parallel_param(name: str) -> bool:
    name = canonical_name(name)
    return any(fnmatch.fnmatchcase(name, pat) for pat in SEQUENCE_PARALLEL_PARAMS)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def finish_sequence_parallel_grads(model) -> None:
    """After backward: sums the partial gradients of every tensor-parallel model inside
    ``model`` (itself or a submodule) over its TP group; nothing when TP was not applied."""
    for module in model.modules():
        group = _SEQUENCE_PARALLEL_GROUPS.get(module)
        if group is not None:
            reduce_sequence_parallel_grads(module, group)


@torch.no_grad()
def reduce_sequence_parallel_grads(model, tp_group) -> None:
    """Sums the sequence-parallel parameters' gradients over the TP group, in one buffer."""
    grads = [_local(p.grad) for n, p in model.named_parameters()
             if p.grad is not None and is_sequence_parallel_param(n)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=tp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()

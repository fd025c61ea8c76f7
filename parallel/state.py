"""Whole tensors in and out of a parallelized model: names, gathers, scatters.

    canonical_name("blocks.0._checkpoint_wrapped_module.attn.wq.weight")  # wrappers removed
    full = gather_full_state_dict(model.named_parameters(), is_main)     # rank 0's CPU
    load_full_state_dict(model, full)                                    # every rank's shard

The one place that turns sharded tensors (FSDP2 and tensor-parallel DTensors, or plain
tensors on one process) into whole ones and back. Gathers go one tensor at a time into the
main rank's CPU memory: a full copy of a 30B model on every GPU would not fit.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch.distributed.tensor import DTensor

_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    """A parameter's name without activation-checkpoint, compile or FSDP wrapper parts,
    so it matches the plain model's ``state_dict()`` keys."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def reshard_fsdp(model: torch.nn.Module) -> None:
    """Frees parameters FSDP2 left gathered. A no-grad forward (validation) leaves the
    modules with reshard_after_forward=False (typically the last block) unsharded, and
    their parameters are then not the registered sharded ones."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def model_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(canonical name, tensor) of every parameter and buffer, FSDP resharded first."""
    reshard_fsdp(model)
    return [(canonical_name(n), t) for n, t in [*model.named_parameters(),
                                                 *model.named_buffers()]]


@torch.no_grad()
def gather_full_state_dict(named_tensors: Iterable[tuple[str, torch.Tensor]], is_main: bool,
                           dtypes: dict[str, torch.dtype] | None = None) -> dict | None:
    """Whole CPU tensors on the main rank (None elsewhere); a collective on every rank
    when any tensor is a DTensor. ``dtypes`` casts named entries (e.g. fp32 EMA shadows
    back to the parameters' dtype)."""
    out = {}
    for name, t in named_tensors:
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if is_main:
            full = full.detach()
            if dtypes and name in dtypes:
                full = full.to(dtypes[name])
            out[name] = full.cpu()
    return out if is_main else None


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, state: dict) -> None:
    """Copies whole tensors (every rank holds ``state``) into the model's local shards."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    own = {canonical_name(k): v for k, v in [*model.named_parameters(),
                                             *model.named_buffers()]}
    missing = set(own) - set(state)
    if missing:
        raise KeyError(f"state dict lacks {sorted(missing)[:5]}")
    for name, p in own.items():
        full = state[name].to(p.dtype)
        if isinstance(p, DTensor):
            shape, offset = compute_local_shape_and_global_offset(full.shape, p.device_mesh,
                                                                  p.placements)
            piece = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
            p.to_local().copy_(piece)
        else:
            p.copy_(full)

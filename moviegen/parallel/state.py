"""Whole tensors in and out of a parallelized model: names, gathers, scatters.

    canonical_name("blocks.0._checkpoint_wrapped_module.attn.wq.weight")  # wrappers removed
    full = gather_full_state_dict(model.named_parameters(), is_main)     # rank 0's CPU
    load_full_state_dict(model, full)                                    # every rank's shard
    init_shards(model, plain_units, init_unit)   # whole tensors built one unit at a time

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


def _own_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {canonical_name(k): v for k, v in [*model.named_parameters(),
                                              *model.named_buffers()]}


@torch.no_grad()
def copy_shard(p: torch.Tensor, full: torch.Tensor) -> None:
    """Copies this rank's piece of the whole tensor ``full`` into ``p`` (a DTensor of any
    placements, FSDP's strided shards over TP included, or a plain tensor)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    full = full.to(p.dtype)
    if isinstance(p, DTensor):
        shape, offset = compute_local_shape_and_global_offset(full.shape, p.device_mesh,
                                                              p.placements)
        piece = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
        p.to_local().copy_(piece)
    else:
        p.copy_(full)


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, state: dict) -> None:
    """Copies whole tensors (every rank holds ``state``) into the model's local shards."""
    own = _own_tensors(model)
    missing = set(own) - set(state)
    if missing:
        raise KeyError(f"state dict lacks {sorted(missing)[:5]}")
    for name, p in own.items():
        copy_shard(p, state[name])


@torch.no_grad()
def init_shards(model: torch.nn.Module, plain_units, init_unit) -> None:
    """Initialises a parallelized model exactly as one process would, whatever the layout.

    ``plain_units``: (prefix, module) pieces of an unparallelized copy of the model on the
    meta device that together hold every parameter and buffer. Each piece in turn is
    materialised on the CPU, initialised by ``init_unit(prefix, module)`` (the model's own
    rule, from a generator of its own), its whole tensors copied into this rank's shards,
    and freed: no rank holds more than one piece (a transformer block) at full size, and
    the numbers come from the CPU generator on every device, so every layout, CPU or CUDA,
    starts from the same bits.
    """
    own = _own_tensors(model)
    seen = set()
    for prefix, unit in plain_units:
        unit.to_empty(device="cpu")
        init_unit(prefix, unit)
        for name, t in [*unit.named_parameters(), *unit.named_buffers()]:
            key = f"{prefix}.{name}" if prefix else name
            copy_shard(own[key], t)
            seen.add(key)
        unit.to_empty(device="meta")
    missing = set(own) - seen
    if missing:
        raise KeyError(f"no init unit holds {sorted(missing)[:5]}")

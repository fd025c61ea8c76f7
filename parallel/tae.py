"""FSDP2 for the TAE, applied from outside the model (moviegen/tae.py knows nothing of this).

    mesh = init_device_mesh(device_type, (world_size,), mesh_dim_names=("dp_shard",))
    apply_tae_fsdp(tae, mesh)                     # every ResBlock / Attention, then the root
    state = full_state_dict(tae)                  # gathered to rank 0, on the CPU

``encode``/``decode`` (and the tiled versions) are registered as FSDP forward methods, so they
unshard parameters like ``forward`` does; call them on every rank together.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from moviegen.tae import TAE, Attention, ResBlock

_FORWARD_METHODS = ("encode", "encode_moments", "decode")


def apply_tae_fsdp(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None = None,
                   reshard_after_forward: bool = True) -> nn.Module:
    """Shards every residual/attention block, then the root (which keeps the in/out convs and
    the norms outside blocks). ``model`` may be a TAE or any module holding TAE blocks (a
    discriminator built of them); works on materialised or meta parameters."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, (ResBlock, Attention)):
            fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    if isinstance(model, TAE):
        for name in _FORWARD_METHODS:
            register_fsdp_forward_method(model, name)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0's CPU, {} elsewhere (a collective: call it on every
    rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))

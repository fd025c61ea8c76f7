"""Apply the parallel layout to a plain MovieGenTransformer, in torchtitan's order.

    dims = validate_layout(cfg, world_size)            # before init_process_group
    mesh = dims.build_mesh("cuda")
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    par = parallelize(model, dims, mesh, cfg.parallel, device_type="cuda")
    model.to_empty(device=device); model.init_weights()
    ...
    loss.backward(); finish_sequence_parallel_grads(model); clip_grad_norm_(...)

Order: tensor parallel -> context parallel -> activation checkpointing -> per-block
torch.compile -> FSDP (blocks first, root last). TP/CP install hooks and class swaps on
the submodules; AC wraps each block's forward (recomputing its TP/CP collectives); the
compiled block contains all of that; FSDP shards whatever parameters (plain or TP
DTensors) result, over the "dp_shard_cp" mesh (HSDP: ("dp_replicate", "dp_shard_cp")).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from moviegen.parallel.activation_checkpoint import apply_activation_checkpointing
from moviegen.parallel.context_parallel import apply_context_parallel
from moviegen.parallel.parallel_dims import ParallelDims
from moviegen.parallel.tensor_parallel import apply_tensor_parallel

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_param_dtype(setting: str, device_type: str) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return _DTYPES[setting]


def apply_compile(model) -> None:
    """Per-block torch.compile (in place: names and hooks unchanged)."""
    for block in model.blocks.values():
        block.compile()


def apply_fsdp(model, dp_mesh, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
               reshard_after_forward: bool, gradient_divide_factor: float,
               device_type: str = "cuda") -> None:
    """FSDP2 per block, then the root (embeddings, time MLP, text projections, final layer).

    The mesh includes CP ranks; their gradients must be summed, not averaged, so the
    divide factor is the data-parallel degree only (dp_replicate x dp_shard).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = list(model.blocks.values())
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again right away by backward
        fully_shard(block, mesh=dp_mesh, mp_policy=mp,
                    reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for module in [*blocks, model]:
        module.set_gradient_divide_factor(gradient_divide_factor)
        if device_type != "cuda":  # gloo has no PREMUL_SUM: sum, then divide
            module.set_force_sum_reduction_for_comms(True)


def apply_fsdp_units(model, mesh, units, forward_methods=(), param_dtype=None,
                     reshard_after_forward: bool = True) -> None:
    """FSDP2 for any model: each module in ``units`` becomes one FSDP unit, then the root
    (what is left). ``forward_methods`` (e.g. a TAE's encode/decode) unshard parameters
    like ``forward`` does; call them on every rank together. Gradients reduce in fp32."""
    from torch.distributed.fsdp import (MixedPrecisionPolicy, fully_shard,
                                        register_fsdp_forward_method)

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)


@dataclass
class Parallelized:
    """What the trainer needs after parallelize: the layout and its mesh."""

    model: torch.nn.Module
    dims: ParallelDims
    mesh: object



def parallelize(model, dims: ParallelDims, mesh, parallel_cfg, device_type: str) -> Parallelized:
    """Applies the layout in place; ``mesh`` may be None for a one-process run (then only
    activation checkpointing and compile apply)."""
    if mesh is None and dims.world_size > 1:
        raise ValueError("a multi-rank layout needs a device mesh")
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    if dims.seq_shards > 1:
        apply_context_parallel(model, mesh["cp_tp"], mesh["cp"] if dims.cp > 1 else None)
    apply_activation_checkpointing(model, parallel_cfg.ac,
                                   parallel_cfg.ac_full_blocks)
    if parallel_cfg.compile:
        apply_compile(model)
    if dims.fsdp_enabled:
        dp_mesh = (mesh["dp_replicate", "dp_shard_cp"] if dims.dp_replicate > 1
                   else mesh["dp_shard_cp"])
        apply_fsdp(model, dp_mesh,
                   param_dtype=resolve_param_dtype(parallel_cfg.param_dtype, device_type),
                   reduce_dtype=_DTYPES[parallel_cfg.reduce_dtype],
                   reshard_after_forward=parallel_cfg.reshard_after_forward,
                   gradient_divide_factor=float(dims.dp), device_type=device_type)
    return Parallelized(model, dims, mesh)


# --------------------------------------------------------------------------- gradients
@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Global L2 norm over plain tensors and DTensors on any mix of meshes, then clip.

    A gradient shard is held identically by world_size / n_shards ranks (replicas over
    HSDP, TP for non-TP parameters, ...), so each rank adds |local|^2 * n_shards / world
    and one all-reduce over the world gives the true norm, with no double counting.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return torch.nn.utils.clip_grad_norm_(
            [p for p in parameters if p.grad is not None],
            max_norm if max_norm > 0 else float("inf"))
    world = dist.get_world_size()
    device = grads[0].to_local().device if isinstance(grads[0], DTensor) else grads[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
        if isinstance(g, DTensor):
            # every non-Replicate placement splits the tensor (Shard, and FSDP-over-TP's
            # _StridedShard, which does not report is_shard())
            shards = math.prod(g.device_mesh.size(i) for i, pl in enumerate(g.placements)
                               if not pl.is_replicate())
            local = g.to_local()
        else:
            shards, local = 1, g
        total += local.float().pow(2).sum() * (shards / world)
    dist.all_reduce(total)
    norm = total.sqrt()
    if max_norm > 0:
        coef = torch.clamp(max_norm / (norm + eps), max=1.0)
        for g in grads:
            (g.to_local() if isinstance(g, DTensor) else g).mul_(coef)
    return norm

"""Device, precision and process group of a run; the layout checked before any of it.

    device = pick_device(cfg.train.device)          # cuda:LOCAL_RANK when there is a GPU
    dims = check_layout(cfg.parallel, world_size(), n_heads=..., ffn_dim=..., grids=...)
    meshes = init_distributed(dims, device)          # None on one process
    mean_over_dp(loss, meshes)                       # a per-rank value averaged over DP
"""
from __future__ import annotations

import contextlib
import os

import torch

from moviegen.config import ConfigError
from moviegen.parallel.parallel_dims import LayoutError, ParallelDims


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is visible",
                              key="train.device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_context(mode: str, device: torch.device):
    """bf16 autocast for ``bf16`` (and ``auto`` on CUDA); nothing for fp32."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_layout(parallel_cfg, world: int, n_heads: int | None = None,
                 ffn_dim: int | None = None, grids=(), patch_size=(1, 1, 1)) -> ParallelDims:
    """Every layout rule at once (world size, heads/FFN vs tp, tokens vs cp x tp), as a
    ConfigError; a pure function of its arguments, so every rank raises the same one
    before any process group exists."""
    try:
        dims = ParallelDims.from_config(parallel_cfg, world)
        if n_heads is not None:
            dims.validate_model(n_heads, ffn_dim)
        dims.validate_buckets(list(grids), patch_size)
    except LayoutError as e:
        raise ConfigError(str(e), key=str(e).split(":")[0]) from None
    return dims


def mean_over_dp(value: torch.Tensor, mesh) -> torch.Tensor:
    """Average over the data-parallel ranks of a per-DP-rank value (the same on its CP and
    TP peers); ``mesh`` None is one process."""
    if mesh is None or mesh["dp"].size() == 1:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value, group=mesh["dp"].get_group())
    return value / mesh["dp"].size()


def start_process_group(device: torch.device) -> None:
    """This rank's process group on the backend for ``device`` (what pick_device chose):
    NCCL on a GPU (this rank's, set as the current device first), gloo on the CPU."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def init_distributed(dims: ParallelDims, device: torch.device):
    """Starts the process group (start_process_group) and builds the named meshes; None
    for a one-process run."""
    if dims.world_size == 1:
        return None
    start_process_group(device)
    return dims.build_mesh(device.type)

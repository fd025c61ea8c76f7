"""Small helpers shared by the kernel launchers (no triton import here)."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def num_warps_for(num_elements: int) -> int:
    """Warps for a one-tile-per-program elementwise/row kernel: ~8-16 elements a thread."""
    if num_elements >= 16384:
        return 16
    if num_elements >= 4096:
        return 8
    if num_elements >= 1024:
        return 4
    return 2


def target_programs(device: torch.device) -> int:
    """How many persistent programs a reduction kernel should launch (a few per SM)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: few programs keep tests fast, still more than one


def check_same_device(*tensors: torch.Tensor | None) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES[:3]:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")


def check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"triton kernels need CUDA tensors (got {t.device}); on CPU set "
                           "TRITON_INTERPRET=1 before importing triton, or use backend='torch'")

"""Which backend ``kernels=auto`` uses for one op and shape class on one device.

The rule: a kernel is used only where it was measured faster than the torch path on that
device; anything unmeasured uses torch (for attention that is SDPA, which picks flash /
cuDNN / efficient itself), so ``auto`` is never slower than a plain PyTorch model.

Measurements come from, in order:
  1. ``moviegen/kernels/choices.json``, committed, one entry per device name (torch.cuda
     get_device_name), op and shape class: {"NVIDIA H100 80GB HBM3": {"attention":
     {"bf16 E128 mask0 S65536 L65536": "triton"}}}. Empty until a GPU run fills it
     (``bash benchmarks/gpu_check.sh`` prints the measured winners).
  2. With MOVIEGEN_KERNELS_TIME=1, a timing of both paths at the first use of a shape
     class, cached on disk (MOVIEGEN_KERNELS_CACHE, default ~/.cache/moviegen). Under
     torch.distributed rank 0 times and broadcasts, so every rank makes the same choice
     (all ranks reach the first call of a class together in SPMD training).
Without either, the choice is a pure function of the committed table: the same on every
rank. A kernel that fails to build or launch under ``auto`` falls back to torch for that
op and class, with one warning, and stays there for the process.
"""
from __future__ import annotations

import functools
import json
import os
import warnings

import torch

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "choices.json")
_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_failed: set[tuple] = set()
_timed: dict[tuple, str] = {}


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(op: str, *tensors, **extra) -> str:
    """A short key: dtype, and per op the sizes that change which path is faster."""
    x = tensors[0]
    dtype = _DTYPE.get(x.dtype, str(x.dtype))
    if op == "attention":
        q, k = tensors[0], tensors[1]
        return (f"{dtype} E{q.shape[-1]} mask{int(extra.get('masked', False))} "
                f"S{_bucket(q.shape[-2])} L{_bucket(k.shape[-2])}")
    return f"{dtype} D{x.shape[-1]}"


def load_table() -> dict:
    return _load_table(TABLE)


@functools.lru_cache(maxsize=None)
def _load_table(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            table = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); fix or delete the file") from e
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected {{device: {{op: {{shape class: backend}}}}}}")
    return table


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def choose(op: str, klass: str, device: torch.device, time_fn=None) -> str:
    """'triton' or 'torch' for ``op`` / ``klass`` on ``device`` under ``auto``."""
    if (op, klass) in _failed:
        return "torch"
    entry = load_table().get(_device_name(device), {}).get(op, {}).get(klass)
    if entry in ("triton", "torch"):
        return entry
    if time_fn is not None and os.environ.get("MOVIEGEN_KERNELS_TIME", "0") == "1":
        return _timed_choice(op, klass, device, time_fn)
    return "torch"


def _cache_path(device: torch.device) -> str:
    root = os.environ.get("MOVIEGEN_KERNELS_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "moviegen"))
    name = "".join(c if c.isalnum() else "_" for c in _device_name(device))
    return os.path.join(root, f"kernel_choices_{name}.json")


def _timed_choice(op: str, klass: str, device: torch.device, time_fn) -> str:
    key = (op, klass)
    if key in _timed:
        return _timed[key]
    path = _cache_path(device)
    cached = {}
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
    choice = cached.get(op, {}).get(klass)
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    if choice is None:
        if not distributed or dist.get_rank() == 0:
            times = time_fn()  # {"triton": seconds, "torch": seconds}
            choice = "triton" if times["triton"] < times["torch"] else "torch"
            cached.setdefault(op, {})[klass] = choice
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(cached, f, indent=1)
            os.replace(path + ".tmp", path)
    if distributed:
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    _timed[key] = choice
    return choice


def run_with_fallback(op: str, klass: str, kernel_fn, reference_fn):
    """Run the kernel; on any failure warn once, remember, and use the reference."""
    try:
        return kernel_fn()
    except Exception as e:  # noqa: BLE001: a build/launch failure must not end a run
        _failed.add((op, klass))
        warnings.warn(f"kernels: the Triton {op} kernel failed for {klass} "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      f"using the torch reference for it from now on")
        return reference_fn()

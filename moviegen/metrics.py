"""Run metrics: ``<output_dir>/metrics.jsonl`` (one JSON object per logged step).

Fields (design.md): step, loss, lr, grad_norm, step_time_s, tokens_per_s,
tflops_per_device, mfu (null on CPU), max_mem_gb, data_wait_s; validation rows carry
``val_loss``. Only rank 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys

import torch


def max_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kb / 2**20


def _clean(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    def __init__(self, output_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)

    def write(self, row: dict) -> None:
        if self.enabled:
            self._f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self._f.close()


def read_metrics(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ProgressBar:
    """tqdm on rank 0 when stderr is a terminal or when asked; silent otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

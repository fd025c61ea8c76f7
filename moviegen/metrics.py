"""Run metrics: ``<output_dir>/metrics.jsonl`` (one JSON object per logged step).

Fields (design.md): step, loss, lr, grad_norm, step_time_s, tokens_per_s,
tflops_per_device, mfu (null on CPU), max_mem_gb, data_wait_s; also fwd_bwd_s,
optimizer_s (the step time split), skipped_steps (non-finite updates skipped so far),
skipped_files (unreadable inputs the loader skipped). Validation rows carry ``val_loss``.
Only rank 0 writes. TensorBoard scalars and wandb (optional) get the same numbers.
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
    """metrics.jsonl, plus TensorBoard scalars and wandb when asked (rank 0 only).

    ``resume_step``: a resumed run first drops rows past the checkpoint it resumed from
    (they were written by the interrupted attempt and are about to be recomputed), so the
    file reads like one uninterrupted run; TensorBoard purges them the same way.
    """

    def __init__(self, output_dir: str, enabled: bool = True, tensorboard: bool = False,
                 wandb_project: str | None = None, run_config: dict | None = None,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tb = self._wandb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            rows = read_metrics(output_dir)
            kept = [r for r in rows if r.get("step", 0) <= resume_step]
            if len(kept) != len(rows):
                tmp = self.path + ".tmp"
                with open(tmp, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in kept)
                os.replace(tmp, self.path)
        self._f = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)
        if wandb_project:
            try:
                import wandb
            except ImportError:
                wandb = None
                import logging

                logging.getLogger("moviegen.metrics").warning(
                    "metrics.wandb is on but the wandb package is not installed: skipped")
            if wandb is not None:
                self._wandb = wandb.init(project=wandb_project, dir=output_dir,
                                         config=run_config, resume="allow",
                                         id=_wandb_run_id(output_dir))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _clean(v) for k, v in row.items()}
        self._f.write(json.dumps(clean) + "\n")
        step = clean.get("step")
        scalars = {k: v for k, v in clean.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None and step is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"train/{k}" if k != "val_loss" else "val/loss", v, step)
        if self._wandb is not None and step is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_run_id(output_dir: str) -> str:
    """One wandb run per output_dir, kept across resumes."""
    path = os.path.join(output_dir, "wandb_run_id")
    if not os.path.exists(path):
        import uuid

        with open(path, "w") as f:
            f.write(uuid.uuid4().hex[:12])
    with open(path) as f:
        return f.read().strip()


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


class StepProfiler:
    """torch.profiler around chosen steps: ``<output_dir>/profile/step<N>_rank<R>.json``
    (chrome trace; open in chrome://tracing or Perfetto)."""

    def __init__(self, steps: list[int], output_dir: str, rank: int, device: torch.device):
        self.steps = set(steps)
        self.dir = os.path.join(output_dir, "profile")
        self.rank = rank
        self.activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            self.activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = None

    def start(self, step: int) -> None:
        """``step``: the 1-based number of the step about to run."""
        if step in self.steps:
            self._prof = torch.profiler.profile(activities=self.activities, record_shapes=True,
                                                profile_memory=True, with_stack=False)
            self._prof.__enter__()

    def stop(self, step: int) -> str | None:
        if self._prof is None:
            return None
        self._prof.__exit__(None, None, None)
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, f"step{step}_rank{self.rank}.json")
        self._prof.export_chrome_trace(path)
        self._prof = None
        return path

"""Run metrics: ``<output_dir>/metrics.jsonl`` (one JSON object per logged step).

``RunLog`` is what the training loop talks to: it accumulates a window of steps, writes one
row every ``train.log_every`` steps (one host read of the losses per row), a row per
validation, TensorBoard/wandb, one console line per logged row (step/total, loss, lr,
tokens/s, MFU or TFLOP/s, memory, data wait, ETA), the progress bar and profiler traces.

Fields: step, loss, lr, grad_norm, step_time_s, tokens_per_s,
tflops_per_device, mfu (null on CPU), max_mem_gb, data_wait_s; also fwd_bwd_s,
optimizer_s (the step time split), skipped_steps (non-finite updates skipped so far),
skipped_files (unreadable inputs the loader skipped). Validation rows carry ``val_loss``.
Only rank 0 writes. TensorBoard scalars and wandb (optional) get the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import resource
import sys
import time

import torch

from moviegen.training.distributed import mean_over_dp

_log = logging.getLogger("moviegen.training")

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

                logging.getLogger("moviegen.training.metrics").warning(
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
                self._tb.add_scalar(_tensorboard_tag(k), v, step)
        if self._wandb is not None and step is not None:
            self._wandb.log(scalars, step=step)

    def add_video(self, tag: str, video_CTHW: torch.Tensor, step: int, fps: int) -> None:
        """A [3, T, H, W] video in [-1, 1] to TensorBoard: a video where moviepy is
        installed (SummaryWriter.add_video needs it), else the frames side by side."""
        if not self.enabled or self._tb is None:
            return
        frames = ((video_CTHW.float().clamp(-1, 1) + 1) / 2).cpu()
        try:
            import moviepy  # noqa: F401
        except ImportError:
            self._tb.add_image(tag, torch.cat(frames.unbind(1), dim=-1), step)  # [3, H, T*W]
        else:
            self._tb.add_video(tag, frames.permute(1, 0, 2, 3)[None], step, fps=fps)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _tensorboard_tag(key: str) -> str:
    if key == "val_loss":
        return "val/loss"
    if key == "psnr":
        return "val/psnr"
    return f"train/{key}"


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
    """tqdm on rank 0 when asked and stderr is a terminal; nothing otherwise (a log file
    gets the per-step lines only, no carriage-return updates).

    While the bar is open, log records of the console handlers go through ``tqdm.write``
    (tqdm.contrib.logging), so a line never lands on top of the bar."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str = "train"):
        self.bar = self._redirect = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self._redirect.__exit__(None, None, None)
            self.bar.close()
            self.bar = None


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def console_line(row: dict, total: int, eta_s: float | None) -> str:
    """One line per logged step: what an operator watches, from the metrics row."""
    parts = [f"step {row['step']}/{total}"]
    for key, fmt in (("loss", "loss {:.4f}"), ("lr", "lr {:.2e}")):
        if row.get(key) is not None and math.isfinite(row[key]):
            parts.append(fmt.format(row[key]))
    if row.get("tokens_per_s"):
        parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    elif row.get("tflops_per_device"):
        parts.append(f"{row['tflops_per_device']:.3g} TFLOP/s")
    parts.append(f"{row['step_time_s']:.2f} s/step")
    parts.append(f"mem {row['max_mem_gb']:.1f} GB")
    parts.append(f"data wait {1000 * row['data_wait_s']:.0f} ms")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


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


class RunLog:
    """The training loop's bookkeeping for one ``fit()`` (a context manager)."""

    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        self.log_every, self.steps = cfg.train.log_every, cfg.train.steps
        self._marker = os.path.join(cfg.output_dir, "preempted")
        self.writer = MetricsWriter(
            cfg.output_dir, enabled=trainer.is_main, tensorboard=cfg.metrics.tensorboard,
            wandb_project=cfg.metrics.wandb_project if cfg.metrics.wandb else None,
            run_config=dataclasses.asdict(cfg),
            resume_step=trainer.step if trainer.resumed_from else None)
        self.profiler = StepProfiler(cfg.metrics.profile_steps, cfg.output_dir, trainer.rank,
                                     trainer.device)
        from moviegen.models.flops import device_peak_tflops

        self.peak, peak_name = device_peak_tflops(
            torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda"
            else None)
        if trainer.is_main:
            n = sum(p.numel() for p in trainer.model.parameters())
            logging.getLogger("moviegen.training").info(
                "%s: %.3fM parameters%s", trainer.label, n / 1e6,
                f", MFU against {peak_name}" if peak_name else "")
        self.bar = ProgressBar(self.steps, trainer.step, trainer.is_main
                               and cfg.train.progress_bar, desc=trainer.label)
        self._t0, self._step0 = time.perf_counter(), trainer.step  # for the ETA
        self._reset()

    def __enter__(self) -> "RunLog":
        if self.t.is_main and os.path.exists(self._marker):
            os.remove(self._marker)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self.writer.close()

    def _reset(self) -> None:
        self.w = {"loss": [], "grad_norm": [], "metrics": {}, "time": 0.0, "wait": 0.0,
                  "fwd_bwd": 0.0, "optim": 0.0, "n": 0, "tokens": 0.0, "flops": 0.0,
                  "last": {}}

    def record(self, step: int, out: dict, wait_s: float, step_s: float) -> None:
        w = self.w
        if not out["skipped"]:  # a skipped step's NaN would poison the window mean
            w["loss"].append(out["loss"])
            w["grad_norm"].append(out["grad_norm"])
            for k, v in out["metrics"].items():
                if isinstance(v, torch.Tensor):
                    w["metrics"].setdefault(k, []).append(v.detach().float())
        for k, v in out["metrics"].items():
            if k in ("tokens", "flops"):
                w[k] += float(v)
            elif not isinstance(v, torch.Tensor):
                w["last"][k] = v
        w["wait"] += wait_s
        w["fwd_bwd"] += out["fwd_bwd_s"]
        w["optim"] += out["optim_s"]
        w["time"] += step_s
        w["n"] += 1
        if step % self.log_every == 0 or step == self.steps or out["stop"]:
            self._flush(step)

    def _mean(self, values: list) -> float:
        if not values:
            return float("nan")
        return mean_over_dp(torch.stack(values).mean(), self.t.mesh).item()

    def _flush(self, step: int) -> None:
        t, w = self.t, self.w
        n = w["n"]
        loss = self._mean(w["loss"])
        # every DP rank runs a batch like this one; per device = / world size
        scale = t.dp_size / w["time"] / t.world_size
        tflops = w["flops"] * scale / 1e12 if w["flops"] else None
        row = {"step": step, "loss": loss, "lr": t.scheduler.get_last_lr()[0],
               "grad_norm": (torch.stack(w["grad_norm"]).mean().item() if w["grad_norm"]
                             else float("nan")),
               "step_time_s": w["time"] / n,
               "tokens_per_s": w["tokens"] * scale if w["tokens"] else None,
               "tflops_per_device": tflops,
               "mfu": tflops / self.peak if (tflops and self.peak) else None,
               "max_mem_gb": max_memory_gb(t.device),
               "data_wait_s": w["wait"] / n, "fwd_bwd_s": w["fwd_bwd"] / n,
               "optimizer_s": w["optim"] / n,
               "skipped_steps": t.nonfinite.skipped_total,
               "skipped_files": t.skipped_files()}
        row.update({k: self._mean(v) for k, v in w["metrics"].items()})
        row.update(w["last"])
        self.writer.write(row)
        self.bar.update(n, loss=f"{loss:.4f}")
        if t.is_main:
            done = step - self._step0
            eta = ((time.perf_counter() - self._t0) / done * (self.steps - step)
                   if done > 0 else None)
            _log.info("%s %s", t.label, console_line(row, self.steps, eta))
        self._reset()

    def validation(self, step: int, result: dict) -> None:
        self.writer.write({"step": step, **result})
        if self.t.is_main:
            _log.info(
                "%s step %d/%d: %s", self.t.label, step, self.steps, ", ".join(f"{k} {v:.4f}" for k, v in result.items()))

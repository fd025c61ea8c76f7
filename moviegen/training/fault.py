"""Preemption signals and non-finite steps.

Preemption: SLURM sends SIGUSR1 (``--signal=USR1@120``) or SIGTERM before it kills a job;
torchrun forwards the signals listed in ``--signals-to-handle`` to its workers.
``StopRequest`` records the signal; the trainer finishes the current step, saves a
checkpoint, writes ``<output_dir>/preempted`` and exits 0 so the job can be requeued.

Ranks must agree on stopping (one rank saving alone would hang the collective save), so
the flag travels with the step's non-finite flag in one small all-reduce:
``agree_on_flags``. That and the host read of its result are the one per-step sync.

Non-finite steps: a NaN/inf loss or gradient norm skips the optimizer update (the batch
is consumed, the lr schedule advances) and is counted; ``NonFiniteGuard`` stops the run
when K steps in a row were skipped, naming them.
"""
from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

logger = logging.getLogger("moviegen.training.fault")

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteError(RuntimeError):
    """K consecutive steps had a non-finite loss or gradient norm."""


class StopRequest:
    """Installs handlers for SIGTERM/SIGUSR1 that only set a flag (restored by close())."""

    def __init__(self, signals=PREEMPT_SIGNALS):
        self.signum: int | None = None
        self._previous = {}
        for s in signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            logger.warning("received %s: finishing the current step, then saving and exiting",
                           signal.Signals(signum).name)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def close(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def agree_on_flags(flags: torch.Tensor, group=None) -> list[bool]:
    """Any-rank OR of a small bool/int vector (all-reduce MAX), read on the host."""
    flags = flags.to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    return [bool(v) for v in flags.tolist()]


class NonFiniteGuard:
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped_total = 0
        self.run: list[int] = []

    def record(self, step: int, skipped: bool) -> None:
        """``step`` is the 1-based step just run; raises after K skips in a row."""
        if not skipped:
            self.run = []
            return
        self.skipped_total += 1
        self.run.append(step)
        logger.warning("step %d: non-finite loss or gradient norm, update skipped "
                       "(%d in a row, %d in total)", step, len(self.run), self.skipped_total)
        if self.max_consecutive > 0 and len(self.run) >= self.max_consecutive:
            raise NonFiniteError(
                f"stopping at step {step}: the loss or gradient norm was non-finite for "
                f"{len(self.run)} consecutive steps ({self.run[0]}..{step}); the last "
                f"checkpoint is unaffected. Lower train.lr, check the data, or raise "
                f"checkpoint.max_consecutive_nonfinite")

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "run": list(self.run)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state["skipped_total"])
        self.run = [int(s) for s in state["run"]]

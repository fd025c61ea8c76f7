"""Elastic resume through the trainer: a run stopped by SIGTERM continues on another layout
with the uninterrupted one-process run's losses (same global batch, fp32 on CPU).

    dp_shard 2 --SIGTERM after step 2--> tp 2 --SIGTERM after step 4--> 1 process (to 6)
    1 process --SIGTERM after step 3--> tp 2 x cp 2 (to 6)

Every rank sends SIGTERM to itself before a chosen step (a real signal through the
trainer's handler, at a reproducible step); the ranks agree, finish the step, save and
return. The next run is a new trainer on the same output_dir, as a restarted job is.
"""
from __future__ import annotations

import os
import signal

import pytest

from dist_helpers import spawn

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")
STEPS = 6


def _cfg(output_dir, *layout):
    from moviegen.config import load_config
    return load_config(TINY, [f"--output_dir={output_dir}", "--data.global_batch_size=8",
                              f"--train.steps={STEPS}", "--train.warmup_steps=2",
                              "--train.log_every=1", "--train.val_every=1000",
                              "--train.progress_bar=false", "--metrics.tensorboard=false",
                              "--checkpoint.ema_decay=0.9", *layout])


class _SigtermBefore:
    """The trainer's data, sending SIGTERM to this process when step ``stop`` is fetched
    (every rank does, so they stop after the same step)."""

    def __init__(self, trainer, stop: int):
        self.trainer, self.loader, self.stop = trainer, trainer.train_data, stop

    def __next__(self):
        if self.trainer.step + 1 == self.stop:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def run(rank, world, output_dir, stop, *layout) -> dict:
    """Spawn target (and the 1-process run): a trainer that resumes when output_dir holds
    a checkpoint, trains, and stops by SIGTERM after step ``stop`` (None: runs to the end)."""
    from moviegen.training.diffusion import DiffusionTrainer

    trainer = DiffusionTrainer(_cfg(output_dir, *layout))
    start = trainer.step
    if stop is not None:
        trainer.train_data = _SigtermBefore(trainer, stop)
    history = trainer.fit()
    trainer.close()
    return {"start": start, "end": trainer.step, "preempted": history["preempted"]}


def _losses(output_dir) -> dict[int, float]:
    from moviegen.training.metrics import read_metrics
    return {r["step"]: r["loss"] for r in read_metrics(str(output_dir)) if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run(0, 1, str(out), None)
    losses = _losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _assert_continues(uninterrupted, output_dir):
    got = _losses(output_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(uninterrupted[step], rel=1e-5), f"step {step}"


@pytest.mark.timeout(200)
def test_fsdp2_to_tp2_to_one_process(uninterrupted, tmp_path):
    out = str(tmp_path)
    a = spawn(run, 2, 90, out, 2, "--parallel.dp_shard=2")
    assert a[0] == {"start": 0, "end": 2, "preempted": True}
    b = spawn(run, 2, 90, out, 4, "--parallel.tp=2")
    assert b[0] == {"start": 2, "end": 4, "preempted": True}
    c = run(0, 1, out, None)
    assert c == {"start": 4, "end": STEPS, "preempted": False}
    _assert_continues(uninterrupted, out)


@pytest.mark.timeout(200)
def test_one_process_to_tp2_cp2(uninterrupted, tmp_path):
    out = str(tmp_path)
    assert run(0, 1, out, 3)["end"] == 3
    d = spawn(run, 4, 150, out, None, "--parallel.tp=2", "--parallel.cp=2")
    assert d[0] == {"start": 3, "end": STEPS, "preempted": False}
    _assert_continues(uninterrupted, out)

"""Failures of multi-rank runs, on CPU with gloo:

* kill one rank (SIGKILL) under ``launch/torchrun.sh`` (torchrun --max-restarts=1):
  torchrun restarts the workers, they resume from the latest checkpoint, and the run ends
  with exactly the losses and weights of an uninterrupted run;
* SIGTERM to every rank (at different moments, as signals arrive): all ranks agree to
  stop after the same step, save one checkpoint, exit cleanly; the rerun resumes and
  reproduces the uninterrupted run.
"""
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from test_checkpoint_dist import ROOT, TINY, run_ranks

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

WORLD = 2
STEPS = 16
COMMON = [f"--train.steps={STEPS}", "--train.log_every=1", "--train.val_every=1000",
          "--data.num_val=16", "--train.progress_bar=false", "--checkpoint.every_steps=4",
          "--checkpoint.ema_decay=0.9", "--metrics.tensorboard=false",
          f"--parallel.dp_shard={WORLD}"]


def train_job(rank, world, output_dir):
    from moviegen.config import load_config
    from moviegen.training.diffusion import DiffusionTrainer

    trainer = DiffusionTrainer(load_config(TINY, [f"--output_dir={output_dir}", *COMMON]))
    history = trainer.fit()
    return {"step": trainer.step, "preempted": history["preempted"],
            "resumed_from": history["resumed_from"]}


def train_rows(output_dir):
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [r for r in (json.loads(x) for x in open(path) if x.strip()) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-rank run."""
    d = str(tmp_path_factory.mktemp("reference"))
    run_ranks(train_job, WORLD, d)
    return {"rows": [(r["step"], r["loss"], r["grad_norm"]) for r in train_rows(d)],
            "final": load_file(os.path.join(d, "final", "model.safetensors")),
            "ema": load_file(os.path.join(d, "final", "ema.safetensors"))}


def assert_matches(reference, d):
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in train_rows(d)] == reference["rows"]
    for name in ("final", "ema"):
        got = load_file(os.path.join(d, "final", f"{'model' if name == 'final' else 'ema'}"
                                                 ".safetensors"))
        for k, v in reference[name].items():
            assert torch.equal(v, got[k]), f"{name}: {k} differs"


def _workers(agent_pid):
    """{rank: pid} of torchrun's worker processes (its children carrying RANK)."""
    out = {}
    children = []
    for task in os.listdir(f"/proc/{agent_pid}/task"):
        with open(f"/proc/{agent_pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    for pid in children:
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[5:])] = pid
    return out


@pytest.mark.timeout(240)
def test_kill_a_rank_torchrun_restarts_and_matches(reference, tmp_path):
    d = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update(NPROC=str(WORLD), MAX_RESTARTS="1")
    cmd = [os.path.join(ROOT, "launch", "torchrun.sh"), TINY, f"--output_dir={d}", *COMMON]
    log = open(tmp_path / "torchrun.log", "w")
    agent = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    killed_at = None
    try:
        deadline = time.time() + 150
        while killed_at is None:
            assert agent.poll() is None, open(tmp_path / "torchrun.log").read()[-3000:]
            assert time.time() < deadline, "no checkpoint written in time"
            steps = [r["step"] for r in train_rows(d)]
            if steps and steps[-1] >= 6:  # past the checkpoint of step 4
                victim = _workers(agent.pid)[1]
                os.kill(victim, signal.SIGKILL)
                killed_at = steps[-1]
            time.sleep(0.1)
        assert agent.wait(timeout=180) == 0, open(tmp_path / "torchrun.log").read()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
        log.close()
    text = open(tmp_path / "torchrun.log").read()
    assert "exitcode: -9" in text and "resumed from" in text, text[-3000:]  # killed, restarted
    resumed = int(text.split("resumed from ")[1].split("step_")[1][:8])
    assert 4 <= resumed <= killed_at + 1 < STEPS, (resumed, killed_at)
    assert_matches(reference, d)


@pytest.mark.timeout(240)
def test_sigterm_every_rank_saves_once_and_resumes(reference, tmp_path):
    d = str(tmp_path / "run")

    def signal_ranks(procs):
        deadline = time.time() + 120
        while not any(r["step"] >= 3 for r in train_rows(d)):
            assert time.time() < deadline and all(p.is_alive() for p in procs)
            time.sleep(0.05)
        for p in procs:  # one after the other, as separate deliveries arrive
            os.kill(p.pid, signal.SIGTERM)
            time.sleep(0.05)

    first = run_ranks(train_job, WORLD, d, monitor=signal_ranks)
    assert all(r["preempted"] for r in first)
    stopped = {r["step"] for r in first}
    assert len(stopped) == 1, f"ranks stopped at different steps: {first}"
    (step,) = stopped
    assert 3 <= step < STEPS
    ckpt = os.path.join(d, "checkpoints", f"step_{step:08d}")
    assert open(os.path.join(d, "checkpoints", "latest")).read().strip() == os.path.basename(ckpt)
    assert sorted(os.listdir(os.path.join(ckpt, "train_state"))) == \
        [f"rank_{r:05d}.pt" for r in range(WORLD)]
    assert open(os.path.join(d, "preempted")).read().strip() == str(step)
    second = run_ranks(train_job, WORLD, d)
    assert all(r["resumed_from"] == ckpt and not r["preempted"] for r in second)
    assert_matches(reference, d)

"""Preemption (SIGTERM/SIGUSR1) and non-finite steps, in one process.

Multi-rank versions (kill a rank under torchrun --max-restarts, SIGTERM to every rank)
are in test_fault_dist.py.
"""
import json
import math
import os
import signal

import pytest
import torch

from moviegen import train
from moviegen.training.fault import NonFiniteError, NonFiniteGuard
from moviegen.data.latents import SyntheticLatentLoader
from moviegen.training.diffusion import DiffusionTrainer

from test_checkpoint import losses, make_cfg, run


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("straight"))
    run(d, 12)
    return losses(d)


@pytest.mark.parametrize("sig", [signal.SIGUSR1])  # SIGTERM: test_main_exits_zero...
def test_signal_finishes_step_saves_and_resumes(straight, tmp_path, sig):
    d = str(tmp_path / "run")

    def send(n_batches):  # arrives while step 7 is running
        if n_batches == 7:
            os.kill(os.getpid(), sig)
    trainer, history = run(d, 12, seen=[], on_batch=send)
    assert history["preempted"] and trainer.step == 7
    assert open(os.path.join(d, "preempted")).read().strip() == "7"
    assert open(os.path.join(d, "checkpoints", "latest")).read().strip() == "step_00000007"
    assert not os.path.exists(os.path.join(d, "final"))
    # the handler is gone once fit() returns: the default action would apply again
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)
    # The requeued job: same command, resumes at 7, finishes, identical losses.
    trainer, history = run(d, 12)
    assert history["resumed_from"].endswith("step_00000007") and not history["preempted"]
    assert losses(d) == straight
    assert not os.path.exists(os.path.join(d, "preempted"))


def test_main_exits_zero_on_preemption(tmp_path, monkeypatch, capsys):
    d = str(tmp_path / "run")
    orig_next = SyntheticLatentLoader.__next__
    calls = {"n": 0}

    def next_then_signal(self):
        calls["n"] += self.shuffle  # the training loader, not validation's
        if calls["n"] == 3 and self.shuffle:
            os.kill(os.getpid(), signal.SIGTERM)
        return orig_next(self)
    monkeypatch.setattr(SyntheticLatentLoader, "__next__", next_then_signal)
    args = ["--config", os.path.join(os.path.dirname(__file__), "..", "launch", "configs",
                                     "tiny.yaml"),
            f"--output_dir={d}", "--train.steps=10", "--train.progress_bar=false",
            "--train.val_every=1000", "--data.num_val=8"]
    history = train.main(args)  # returns normally: `python -m moviegen.train` exits 0
    assert history["preempted"]
    assert "preempted at step 3" in capsys.readouterr().out


def _nan_at(trainer, steps):
    orig = trainer.forward_sums  # the training step's (sum of squares, count)

    def forward_sums(*a):
        sum_sq, count = orig(*a)
        return (sum_sq * float("nan") if trainer.step + 1 in steps else sum_sq), count
    trainer.forward_sums = forward_sums


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    d = str(tmp_path / "run")
    trainer = DiffusionTrainer(make_cfg(d, 8, "--checkpoint.max_consecutive_nonfinite=2"))
    _nan_at(trainer, {3, 6})
    trainer.fit()
    rows = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
    by_step = {r["step"]: r for r in rows if "loss" in r}
    assert by_step[3]["loss"] is None and by_step[3]["skipped_steps"] == 1
    assert by_step[8]["skipped_steps"] == 2
    assert all(math.isfinite(by_step[s]["loss"]) for s in (1, 2, 4, 5, 7, 8))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # skipped updates leave no trace in the optimizer: 8 steps, 6 updates
    steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {6}
    assert trainer.nonfinite.skipped_total == 2


def test_k_nonfinite_steps_in_a_row_stop_naming_the_step(tmp_path, monkeypatch, capsys):
    d = str(tmp_path / "run")
    trainer = DiffusionTrainer(make_cfg(d, 20, "--checkpoint.max_consecutive_nonfinite=3",
                               "--checkpoint.every_steps=2"))
    _nan_at(trainer, set(range(5, 21)))
    with pytest.raises(NonFiniteError, match=r"stopping at step 7: .* 3 consecutive steps "
                                             r"\(5\.\.7\)"):
        trainer.fit()
    # skipped steps changed nothing: the checkpoint of step 6 holds step 4's weights
    assert open(os.path.join(d, "checkpoints", "latest")).read().strip() == "step_00000006"
    resumed = DiffusionTrainer(make_cfg(d, 20))
    assert resumed.step == 6 and resumed.nonfinite.run == [5, 6]
    step4 = DiffusionTrainer(make_cfg(d, 20, "--checkpoint.resume_from="
                             + os.path.join(d, "checkpoints", "step_00000004")))
    for a, b in zip(resumed.model.parameters(), step4.model.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    # main() reports it on stderr and exits 1
    monkeypatch.setattr(DiffusionTrainer, "forward_sums",
                        lambda self, *a: (torch.tensor(float("nan"), requires_grad=True),
                                          torch.tensor(1.0)))
    args = ["--config", os.path.join(os.path.dirname(__file__), "..", "launch", "configs",
                                     "tiny.yaml"),
            f"--output_dir={tmp_path / 'main'}", "--train.steps=10",
            "--train.progress_bar=false", "--checkpoint.max_consecutive_nonfinite=2",
            "--data.num_val=8"]
    with pytest.raises(SystemExit) as info:
        train.main(args)
    assert info.value.code == 1
    assert "stopping at step 2" in capsys.readouterr().err


def test_guard_counts_runs_not_totals():
    g = NonFiniteGuard(3)
    for step, bad in enumerate([1, 1, 0, 1, 1, 0, 1], start=1):
        g.record(step, bool(bad))
    assert g.skipped_total == 5 and g.run == [7]
    with pytest.raises(NonFiniteError, match="step 9"):
        g.record(8, True)
        g.record(9, True)


def test_bad_output_dir_and_tae_channels_are_config_errors(tmp_path, capsys):
    from moviegen.train import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out, needle in ((blocker, "is a file, not a directory"),
                        (blocker / "sub", "is a file, not a directory")):
        with pytest.raises(SystemExit) as info:
            main(["--config", os.path.join(os.path.dirname(__file__), "..", "launch",
                                           "configs", "tiny.yaml"), f"--output_dir={out}"])
        assert info.value.code == 2
        assert needle in capsys.readouterr().err
    readonly = tmp_path / "ro"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    try:
        if not os.access(readonly, os.W_OK):  # root can write anywhere: nothing to test
            with pytest.raises(SystemExit):
                main(["--config", os.path.join(os.path.dirname(__file__), "..", "launch",
                                               "configs", "tiny.yaml"),
                      f"--output_dir={readonly / 'run'}"])
            assert "is not writable" in capsys.readouterr().err
    finally:
        os.chmod(readonly, 0o700)


def test_steps_zero_writes_nothing_and_stale_temporaries_are_cleaned(tmp_path):
    d = tmp_path / "run"
    DiffusionTrainer(make_cfg(str(d), 0)).fit()
    assert not d.exists() or not any(d.rglob("*.safetensors")), list(d.rglob("*"))
    assert not (d / "final").exists()
    # a save killed between its temporary pointer and the rename leaves these behind
    root = d / "checkpoints"
    (root / ".tmp-step_00000004").mkdir(parents=True)
    (root / "latest.tmp.12345").write_text("step_00000004\n")
    DiffusionTrainer(make_cfg(str(d), 2))
    assert sorted(os.listdir(root)) == []


def test_truncated_rank_state_names_the_file(tmp_path):
    from moviegen.training.checkpoint import IncompleteCheckpointError

    d = str(tmp_path / "run")
    DiffusionTrainer(make_cfg(d, 2)).fit()
    state = os.path.join(d, "checkpoints", "step_00000002", "train_state", "rank_00000.pt")
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 2)
    with pytest.raises(IncompleteCheckpointError, match=r"rank_00000.pt cannot be read.*"
                                                        r"checkpoint.resume_from"):
        DiffusionTrainer(make_cfg(d, 4))


def test_tae_channels_checked_against_the_model_before_start(tmp_path):
    import json as _json

    from moviegen.config import ConfigError, load_config
    from data_helpers import synthetic_dataset

    tae = tmp_path / "tae"
    tae.mkdir()
    (tae / "tae_config.json").write_text(_json.dumps({"preset": "tiny"}))  # 8 channels
    with pytest.raises(ConfigError, match=r"model.in_channels: 16, but the TAE .* makes "
                                          r"8-channel latents"):
        load_config(os.path.join(os.path.dirname(__file__), "..", "launch", "configs",
                                 "tiny.yaml"),
                    [f"--output_dir={tmp_path / 'run'}", "--data.kind=video",
                     f"--data.video.manifest={synthetic_dataset()}", "--data.encoder=tae",
                     f"--data.tae_checkpoint={tae}"])

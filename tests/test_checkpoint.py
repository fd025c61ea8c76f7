"""Checkpoints in one process: exact resume, atomic commits (kill during save), clear
errors for damaged checkpoints, weights-only loading, keep-last, async save, EMA export.

Multi-rank resharding is in test_checkpoint_dist.py; signals and non-finite steps in
test_fault.py.
"""
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from moviegen.training import checkpoint as ck
from moviegen.config import load_config
from moviegen.training.diffusion import DiffusionTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")


def make_cfg(output_dir, steps, *extra):
    return load_config(TINY, [f"--output_dir={output_dir}", f"--train.steps={steps}",
                              "--train.val_every=1000", "--train.log_every=1",
                              "--train.progress_bar=false", "--data.num_val=8",
                              "--checkpoint.ema_decay=0.9", "--metrics.tensorboard=false",
                              *extra])


class RecordingLoader:
    """Wraps the trainer's loader and records a digest of every batch it hands out."""

    def __init__(self, inner, seen: list, on_batch=None):
        self.inner, self.seen, self.on_batch = inner, seen, on_batch

    def __next__(self):
        batch = next(self.inner)
        h = hashlib.sha256(batch["latents"].numpy().tobytes())
        h.update("|".join(batch["captions"]).encode())
        self.seen.append(h.hexdigest())
        if self.on_batch is not None:
            self.on_batch(len(self.seen))
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def run(output_dir, steps, *extra, seen=None, on_batch=None):
    trainer = DiffusionTrainer(make_cfg(output_dir, steps, *extra))
    if seen is not None:
        trainer.train_data = RecordingLoader(trainer.train_data, seen, on_batch)
    history = trainer.fit()
    return trainer, history


def losses(output_dir):
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl"))]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """20 uninterrupted steps: the reference every resumed run must reproduce."""
    d = str(tmp_path_factory.mktemp("straight"))
    seen = []
    run(d, 20, "--checkpoint.every_steps=5", "--checkpoint.keep_last=0", seen=seen)
    return {"dir": d, "losses": losses(d), "batches": seen,
            "final": load_file(os.path.join(d, "final", "model.safetensors")),
            "ema": load_file(os.path.join(d, "final", "ema.safetensors"))}


def assert_same_final(straight, d):
    for name in ("model", "ema"):
        ref = straight["final" if name == "model" else "ema"]
        got = load_file(os.path.join(d, "final", f"{name}.safetensors"))
        for k in ref:
            assert torch.equal(ref[k], got[k]), f"{name}.safetensors differs at {k}"


def test_exact_resume_same_losses_and_batches(straight, tmp_path):
    d = str(tmp_path / "run")
    seen = []
    _, h1 = run(d, 10, seen=seen)
    assert not os.path.exists(os.path.join(d, "final", "x"))
    trainer = DiffusionTrainer(make_cfg(d, 20))
    assert trainer.step == 10 and trainer.resumed_from.endswith("step_00000010")
    trainer.train_data = RecordingLoader(trainer.train_data, seen)
    trainer.fit()
    assert seen == straight["batches"], "the resumed run saw different batches"
    assert losses(d) == straight["losses"]  # bit-identical loss, grad norm and lr per step
    assert_same_final(straight, d)
    # Starting again at train.steps trains nothing and keeps the final checkpoint.
    again = DiffusionTrainer(make_cfg(d, 20))
    assert again.step == 20
    history = again.fit()
    assert history["val_loss"] == [] and losses(d) == straight["losses"]


def test_every_checkpoint_of_a_run_resumes_exactly(straight, tmp_path):
    """Resume from the 15-step checkpoint of the straight run (a copy): same tail."""
    d = str(tmp_path / "copy")
    shutil.copytree(straight["dir"], d)
    shutil.rmtree(os.path.join(d, "final"))
    trainer = DiffusionTrainer(make_cfg(d, 20, "--checkpoint.resume_from="
                               + os.path.join(d, "checkpoints", "step_00000015")))
    assert trainer.step == 15
    trainer.fit()
    assert losses(d) == straight["losses"]
    assert_same_final(straight, d)


def _hang_then_die(output_dir, point, conn):
    """Child process: trains with checkpoints every 5 steps and blocks inside the save of
    step 10 at ``point``; the parent kills it there with SIGKILL."""
    import torch.distributed.checkpoint.filesystem as fs

    def block(*a, **k):
        conn.send("blocked")
        time.sleep(600)

    def patch(obj, name, when):
        orig = getattr(obj, name)

        def wrapper(*a, **k):
            if when():
                block()
            return orig(*a, **k)
        setattr(obj, name, wrapper)

    state = {"saves": 0}
    if point == "shards_written":  # data files written, DCP metadata not yet
        patch(fs.FileSystemWriter, "finish", lambda: state["saves"] == 2)
        orig_save = ck.CheckpointManager.save

        def counting_save(self, *a, **k):
            state["saves"] += 1
            return orig_save(self, *a, **k)
        ck.CheckpointManager.save = counting_save
    elif point == "before_rename":  # everything written, directory not renamed
        orig_commit = ck.CheckpointManager._commit

        def commit(self, tmp, step):
            if step == 10:
                block()
            return orig_commit(self, tmp, step)
        ck.CheckpointManager._commit = commit
    elif point == "before_pointer":  # directory renamed, `latest` not yet replaced
        orig_write = ck._atomic_write_text

        def write(path, text):
            if "step_00000010" in text:
                block()
            return orig_write(path, text)
        ck._atomic_write_text = write
    run(output_dir, 20, "--checkpoint.every_steps=5")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["shards_written", "before_rename", "before_pointer"])
def test_latest_never_names_a_partial_checkpoint(straight, tmp_path, point):
    d = str(tmp_path / "run")
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_hang_then_die, args=(d, point, child))
    proc.start()
    try:
        assert parent.poll(90), "the child never reached the save of step 10"
        assert parent.recv() == "blocked"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    root = os.path.join(d, "checkpoints")
    assert open(os.path.join(root, "latest")).read().strip() == "step_00000005"
    latest = ck.latest_checkpoint(root)
    ck.verify_checkpoint(latest)
    leftovers = sorted(os.listdir(root))
    if point == "before_pointer":
        assert "step_00000010" in leftovers  # complete, but not yet named by latest
    else:
        assert ".tmp-step_00000010" in leftovers and "step_00000010" not in leftovers
    # Starting again resumes from step 5 and reproduces the uninterrupted run.
    trainer = DiffusionTrainer(make_cfg(d, 20, "--checkpoint.every_steps=5"))
    assert trainer.step == 5
    trainer.fit()
    assert losses(d) == straight["losses"]
    assert not [n for n in os.listdir(root) if n.startswith(ck.TMP_PREFIX)]


@pytest.fixture()
def two_checkpoints(straight, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(straight["dir"], d)
    return os.path.join(d, "checkpoints")


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_shard_is_named_and_previous_checkpoint_loads(two_checkpoints, damage):
    root = two_checkpoints
    shard = os.path.join(root, "step_00000020", "__0_0.distcp")
    if damage == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    else:
        os.remove(shard)
    run_dir = os.path.dirname(root)
    with pytest.raises(ck.IncompleteCheckpointError, match=damage) as info:
        DiffusionTrainer(make_cfg(run_dir, 20))
    assert shard in str(info.value)
    # The user picks the previous checkpoint explicitly; it loads and continues.
    previous = os.path.join(root, "step_00000015")
    trainer = DiffusionTrainer(make_cfg(run_dir, 20, f"--checkpoint.resume_from={previous}"))
    assert trainer.step == 15


def test_missing_metadata_and_train_state_are_named(two_checkpoints):
    step20 = os.path.join(two_checkpoints, "step_00000020")
    state = os.path.join(step20, "train_state", "rank_00000.pt")
    os.remove(state)
    with pytest.raises(ck.IncompleteCheckpointError, match="rank_00000.pt"):
        ck.verify_checkpoint(step20)
    os.remove(os.path.join(step20, ".metadata"))
    with pytest.raises(ck.IncompleteCheckpointError, match=r"\.metadata is missing"):
        ck.verify_checkpoint(step20)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_loading_never_executes_code(two_checkpoints, tmp_path):
    step20 = os.path.join(two_checkpoints, "step_00000020")
    flag = tmp_path / "pwned"
    _Exploit.flag = str(flag)
    # 1) a pickled payload in DCP's metadata file
    meta = os.path.join(step20, ".metadata")
    original = open(meta, "rb").read()
    with open(meta, "wb") as f:
        pickle.dump({"x": _Exploit()}, f)
    with pytest.raises(ck.UnsafeCheckpointError, match="os|posix"):
        ck.verify_checkpoint(step20)
    assert not flag.exists()
    # 2) a pickled payload in a per-rank train state file
    with open(meta, "wb") as f:
        f.write(original)
    state = os.path.join(step20, "train_state", "rank_00000.pt")
    torch.save({"step": 20, "evil": _Exploit()}, state)
    with pytest.raises(pickle.UnpicklingError):
        DiffusionTrainer(make_cfg(os.path.dirname(two_checkpoints), 20))
    assert not flag.exists()


def test_keep_last_and_async_save(straight, tmp_path):
    d = str(tmp_path / "async")
    run(d, 20, "--checkpoint.every_steps=4", "--checkpoint.keep_last=2",
        "--checkpoint.async_save=true")
    root = os.path.join(d, "checkpoints")
    assert [s for s, _ in ck.list_checkpoints(root)] == [16, 20]
    assert ck.latest_checkpoint(root).endswith("step_00000020")
    assert losses(d) == straight["losses"]  # background saves do not disturb training
    trainer = DiffusionTrainer(make_cfg(
        d, 20, "--checkpoint.resume_from=" + os.path.join(root, "step_00000016")))
    assert trainer.step == 16
    trainer.fit()
    assert losses(d) == straight["losses"]
    assert_same_final(straight, d)


def test_ema_is_an_average_and_exported(straight):
    ema, model = straight["ema"], straight["final"]
    assert ema.keys() == model.keys()
    assert any(not torch.equal(ema[k], model[k]) for k in model)
    from moviegen.training.export import load_inference

    m, _, _ = load_inference(os.path.join(straight["dir"], "final"), use_ema=True)
    got = m.state_dict()
    assert all(torch.equal(got[k], ema[k]) for k in ema)

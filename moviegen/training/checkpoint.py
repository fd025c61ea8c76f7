"""Distributed checkpoints with torch.distributed.checkpoint (DCP): atomic, resumable,
reshardable, and loaded without executing anything stored in them.

Layout under ``<output_dir>/checkpoints``::

    latest                      one line: the name of the newest complete checkpoint
    step_00000100/              a complete checkpoint (a directory is complete once renamed)
        .metadata               DCP's index of every tensor shard (file, offset, length)
        __<rank>_0.distcp       tensor data written by each rank
        train_state/rank_<r>.pt step, lr scheduler, data-loader state, RNG states, counters
        meta.json               human-readable summary (step, world size, layout, time)
    .tmp-step_00000200/         a save in progress (or one killed mid-write): ignored

What is saved: every ``Stateful`` object registered once with the manager. Sharded state
(the model and optimizer through ``get_model_state_dict`` / ``get_optimizer_state_dict``,
the optimizer flattened to parameter names, so plain, FSDP2 and tensor-parallel models
all work and a checkpoint written with one layout loads into another: TP on or off, DP
up or down, CP changed, HSDP or FSDP; the EMA weights with the parameters' sharding)
goes through DCP; per-rank state (step, scheduler step, loader position in global
samples, RNG, counters) goes to ``train_state/rank_<r>.pt``: none of it differs between
ranks except RNG streams, which only a same-layout resume restores. When to save is the manager's decision (``save_if_due``).

Atomicity: every rank writes into ``.tmp-step_N``; after DCP has written its metadata
(which it does only once all ranks' shards are written) rank 0 renames the directory to
``step_N`` and only then replaces ``latest`` (write to a temporary file, fsync, rename).
A kill at any point leaves ``latest`` naming the previous complete checkpoint.

Safety: DCP reads its ``.metadata`` with ``pickle.load``; ``SafeFileSystemReader`` reads it
with an unpickler that admits only DCP's own metadata classes, and
``WeightsOnlyLoadPlanner`` reads non-tensor items with ``torch.load(weights_only=True)``
(tensors already are). The per-rank state files are loaded with ``weights_only=True``.

A checkpoint with a missing or truncated shard raises ``IncompleteCheckpointError`` naming
the file before anything is loaded; older checkpoints stay loadable and the error says how
to pick one (``--checkpoint.resume_from=DIR``): falling back silently could hide data loss.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from concurrent.futures import Future

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter

from moviegen.training.checkpoint_files import (  # noqa: F401 - re-exported
    LATEST, METADATA, STEP_DIR, TMP_PREFIX, CheckpointError, IncompleteCheckpointError,
    SafeFileSystemReader, UnsafeCheckpointError, WeightsOnlyLoadPlanner, _atomic_write_text,
    _fsync_dir, _rank_state_name, capture_rng_state, latest_checkpoint, list_checkpoints,
    read_metadata, replace_dir, restore_rng_state, step_dir_name, verify_checkpoint)

from moviegen.parallel.state import reshard_fsdp

logger = logging.getLogger("moviegen.training.checkpoint")

# --------------------------------------------------------------------------- stateful
class ModelState:
    """Stateful view of a (possibly sharded) model for DCP."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        reshard_fsdp(self.model)
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state)


class OptimizerState:
    """Stateful view of an optimizer over a (possibly sharded) model for DCP.

    Saved flattened (torchtitan's choice): every entry, hyperparameters included, is
    keyed by the parameter's name (``state.<fqn>.exp_avg``, ``param_groups.<fqn>.lr``),
    never by the index of a param group, so the file does not depend on how this layout
    groups its parameters (one group per device mesh) and loads into any other."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.flatten = True

    def _options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(flatten_optimizer_state_dict=self.flatten)

    def match_checkpoint(self, name: str, keys: set) -> None:
        """Reads checkpoints written before the flattened format too (same layout only)."""
        self.flatten = not any(k.startswith(f"{name}.param_groups.0.") for k in keys)

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        reshard_fsdp(self.model)
        return get_optimizer_state_dict(self.model, self.optimizer, options=self._options())

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=self._options())
        self.flatten = True


class SchedulerState:
    """A learning-rate scheduler's position only: its step. The per-group base rates come
    from the config, so the state loads whatever param groups this layout has (a saved
    ``base_lrs`` list is as long as the saving layout's group count)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def state_dict(self) -> dict:
        return {"last_epoch": self.scheduler.last_epoch,
                "_step_count": self.scheduler._step_count}

    def load_state_dict(self, state: dict) -> None:
        s = self.scheduler
        s.last_epoch = int(state["last_epoch"])
        s._step_count = int(state.get("_step_count", s.last_epoch + 1))
        lrs = [base * fn(s.last_epoch) for base, fn in zip(s.base_lrs, s.lr_lambdas)]
        for group, lr in zip(s.optimizer.param_groups, lrs):
            group["lr"] = lr
        s._last_lr = lrs


class RNGState:
    """Global torch/Python/NumPy RNG states plus named generators (per rank)."""

    def __init__(self, generators: dict[str, torch.Generator] | None = None):
        self.generators = generators or {}

    def state_dict(self) -> dict:
        return capture_rng_state(self.generators)

    def load_state_dict(self, state: dict) -> None:
        restore_rng_state(state, self.generators)


# --------------------------------------------------------------------------- manager
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _quiet_single_process():
    """DCP warns on every single-process call that it assumes no process group; we pass
    no_dist explicitly, so the warning says nothing."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled",
                            category=UserWarning)
    return ctx


def _barrier() -> None:
    if _distributed():
        dist.barrier()


class CheckpointManager:
    """Saves and loads the registered ``Stateful`` objects under ``root`` (collective).

        ckpt = CheckpointManager(root, every_steps=100)
        ckpt.register("model", ModelState(model)); ckpt.register("optim", ...)
        ckpt.register("ema", ema, on_missing=lambda: ema.reset(model))  # optional in a file
        ckpt.register_rank("train", train_state); ckpt.register_rank("rng", rng,
                                                                     same_layout_only=True)
        path = ckpt.resume(resume_from=None)      # the latest checkpoint, if any
        ckpt.save_if_due(step, last_step)         # every ``every_steps`` steps
        ckpt.save(step)                           # now (preemption, the end)
    """

    def __init__(self, root: str, keep_last: int = 3, async_save: bool = False,
                 every_steps: int = 0):
        self.root = root
        self.keep_last = keep_last
        self.async_save = async_save
        self.every_steps = every_steps
        self.rank = dist.get_rank() if _distributed() else 0
        self.world_size = dist.get_world_size() if _distributed() else 1
        self._sharded: dict[str, object] = {}
        self._on_missing: dict[str, object] = {}
        self._per_rank: dict[str, object] = {}
        self._same_layout_only: set[str] = set()
        self._pending: tuple[Future, str, int] | None = None
        self._async_group = None
        self.last_saved: int | None = None
        self.meta: dict = {}
        if self.rank == 0 and os.path.isdir(root):
            self._clean_stale()

    def _clean_stale(self) -> None:
        """Removes what a killed save left behind: ``.tmp-step_N`` directories and
        ``latest.tmp.<pid>`` files (none of them is ever read)."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name.startswith(TMP_PREFIX) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(LATEST + ".tmp."):
                os.remove(path)

    def register(self, name: str, obj, on_missing=None) -> None:
        """Sharded state saved through DCP. ``on_missing``: called instead of loading when a
        checkpoint has no entry for ``name`` (e.g. EMA switched on after the checkpoint)."""
        self._sharded[name] = obj
        if on_missing is not None:
            self._on_missing[name] = on_missing

    def register_rank(self, name: str, obj, same_layout_only: bool = False) -> None:
        """Per-rank state (torch.save, loaded with weights_only=True). When the checkpoint
        came from another layout, rank 0's entry is loaded on every rank, except those
        marked ``same_layout_only`` (RNG streams), which keep their fresh state."""
        self._per_rank[name] = obj
        if same_layout_only:
            self._same_layout_only.add(name)

    # -- when ----------------------------------------------------------------
    def save_if_due(self, step: int, last_step: int) -> bool:
        """Saves every ``every_steps`` steps before the last one (which ``save`` covers)."""
        if self.every_steps > 0 and step % self.every_steps == 0 and step < last_step:
            self.save(step)
            return True
        return False

    def save_final(self, step: int) -> None:
        """Saves ``step`` unless it is already saved, and waits for the write to commit."""
        if self.last_saved != step:
            self.save(step)
        self.wait()

    # -- save ---------------------------------------------------------------
    def save(self, step: int) -> str:
        """Writes checkpoint ``step``; returns its final directory (committed once this
        returns, or once ``wait()`` returns for an async save)."""
        self.wait()
        name = step_dir_name(step)
        tmp = os.path.join(self.root, TMP_PREFIX + name)
        if self.rank == 0:
            os.makedirs(self.root, exist_ok=True)
            for other in os.listdir(self.root):  # leftovers of killed saves
                if other.startswith(TMP_PREFIX):
                    shutil.rmtree(os.path.join(self.root, other), ignore_errors=True)
            os.makedirs(os.path.join(tmp, "train_state"))
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({"step": step, "world_size": self.world_size, "time": time.time(),
                           **self.meta}, f, indent=1)
        _barrier()
        torch.save({k: obj.state_dict() for k, obj in self._per_rank.items()},
                   os.path.join(tmp, "train_state", _rank_state_name(self.rank)))
        state = {k: obj.state_dict() for k, obj in self._sharded.items()}
        writer = FileSystemWriter(tmp, sync_files=True)
        quiet = _quiet_single_process()
        try:
            self._write(state, writer, tmp, step)
        finally:
            quiet.__exit__(None, None, None)
        self.last_saved = step
        return os.path.join(self.root, name)

    def _write(self, state, writer, tmp: str, step: int) -> None:
        if self.async_save:
            fut = dcp.async_save(state, storage_writer=writer,
                                 process_group=self._get_async_group(),
                                 no_dist=not _distributed())
            self._pending = (fut, tmp, step)
            logger.info("checkpoint step %d: writing in the background", step)
        else:
            dcp.save(state, storage_writer=writer, no_dist=not _distributed())
            _barrier()  # every rank's train_state file is closed too
            self._commit(tmp, step)
            _barrier()

    def wait(self) -> None:
        """Blocks until a pending async save is written, then commits it (rank 0).

        No collective: rank 0's future completes only after DCP wrote the metadata, which
        it does once every rank's shards are written, so rank 0 can commit on its own."""
        if self._pending is None:
            return
        fut, tmp, step = self._pending
        self._pending = None
        fut.result()
        self._commit(tmp, step)

    def poll(self) -> None:
        """Commits a finished async save without blocking (call once per step), so
        ``latest`` moves as soon as the data is on disk, not at the next save."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def close(self) -> None:
        self.wait()

    def _get_async_group(self):
        # The background save runs collectives; giving it its own gloo group keeps them
        # from interleaving with the training step's collectives on the default group.
        if not _distributed():
            return None
        if self._async_group is None:
            self._async_group = dist.new_group(backend="gloo")
        return self._async_group

    def _commit(self, tmp: str, step: int) -> None:
        if self.rank != 0:
            return
        final = os.path.join(self.root, step_dir_name(step))
        _fsync_dir(tmp)
        # saved again at the same step (e.g. after a resume): swap the old one out
        replace_dir(tmp, final, os.path.join(self.root, TMP_PREFIX + "old-" + step_dir_name(step)))
        _fsync_dir(self.root)
        _atomic_write_text(os.path.join(self.root, LATEST), step_dir_name(step) + "\n")
        logger.info("checkpoint %s committed", final)
        self._prune(step)

    def _prune(self, current_step: int) -> None:
        if self.keep_last <= 0:
            return
        # Directories past the current step belong to an abandoned timeline (a resume from
        # an older checkpoint); they are left alone and overwritten when reached again.
        older = [(s, p) for s, p in list_checkpoints(self.root) if s <= current_step]
        for _, path in older[:-self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    # -- load ---------------------------------------------------------------
    def resume(self, resume_from: str | None = None, enabled: bool = True) -> str | None:
        """Loads ``resume_from``, else (when ``enabled``) the latest checkpoint under root;
        returns the path loaded, or None when there was nothing to resume."""
        path = resume_from or (latest_checkpoint(self.root) if enabled else None)
        if path is None:
            return None
        self.load(path)
        return path

    def load(self, path: str) -> bool:
        """Loads ``path`` into every registered object; returns True when the checkpoint was
        written with another world size (rank 0's per-rank state was used)."""
        self.wait()
        verify_checkpoint(path)
        keys = set(read_metadata(path).state_dict_metadata)
        state, missing = {}, []
        for name, obj in self._sharded.items():
            if any(k == name or k.startswith(name + ".") for k in keys):
                if hasattr(obj, "match_checkpoint"):
                    obj.match_checkpoint(name, keys)
                state[name] = obj
            elif name in self._on_missing:
                missing.append(name)
            else:
                raise IncompleteCheckpointError(f"{path} has no '{name}' state")
        quiet = _quiet_single_process()
        try:  # DCP calls state_dict() on each Stateful, loads in place, then load_state_dict()
            dcp.load(state, storage_reader=SafeFileSystemReader(path),
                     planner=WeightsOnlyLoadPlanner(), no_dist=not _distributed())
        finally:
            quiet.__exit__(None, None, None)
        for name in missing:
            logger.warning("%s has no '%s' state: it starts from the loaded model", path, name)
            self._on_missing[name]()
        changed, per_rank = self._read_rank_state(path)
        for name, obj in self._per_rank.items():
            if changed and name in self._same_layout_only:
                continue
            if name in per_rank:
                obj.load_state_dict(per_rank[name])
        self.last_saved = None
        return changed

    def _read_rank_state(self, path: str) -> tuple[bool, dict]:
        state_dir = os.path.join(path, "train_state")
        own = os.path.join(state_dir, _rank_state_name(self.rank))
        with open(os.path.join(path, "meta.json")) as f:
            saved_world = json.load(f)["world_size"]
        if saved_world == self.world_size and os.path.exists(own):
            return False, _load_rank_file(own)
        return True, _load_rank_file(os.path.join(state_dir, _rank_state_name(0)))


def _load_rank_file(path: str) -> dict:
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:  # something other than plain data: refused as it is
        raise
    except Exception as e:  # truncated, corrupt or unreadable: say which file and what to do
        raise IncompleteCheckpointError(
            f"{path} cannot be read ({type(e).__name__}: {e}); the checkpoint is damaged: "
            f"resume from an older one with --checkpoint.resume_from="
            f"{os.path.dirname(os.path.dirname(os.path.dirname(path)))}/step_N") from None

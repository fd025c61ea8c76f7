"""Checkpoint files: names, the ``latest`` pointer, safe reading and verification.

A checkpoint directory is read without executing anything stored in it: DCP's
``.metadata`` goes through an unpickler that admits only DCP's own metadata classes
(``SafeFileSystemReader``), non-tensor items through ``torch.load(weights_only=True)``
(``WeightsOnlyLoadPlanner``), and the per-rank state files with ``weights_only=True``.
``verify_checkpoint`` names the first missing or truncated file before anything loads.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import re
import shutil

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
LATEST = "latest"
METADATA = ".metadata"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or read."""


class IncompleteCheckpointError(CheckpointError):
    """A checkpoint directory lacks a file or a file is shorter than its index says."""


class UnsafeCheckpointError(CheckpointError):
    """Checkpoint metadata names something other than DCP's own data classes."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# --------------------------------------------------------------------------- safe reading
class _MetadataUnpickler(pickle.Unpickler):
    """Admits only the classes DCP metadata is made of; anything else is refused."""

    _MODULE_PREFIXES = ("torch.distributed.checkpoint.",)
    _ALLOWED = {("collections", "OrderedDict"), ("torch", "Size"), ("builtins", "set"),
                ("builtins", "frozenset"), ("torch", "device"), ("builtins", "slice"),
                ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                ("torch.serialization", "_get_layout")}  # name -> torch.layout lookup

    def find_class(self, module: str, name: str):
        if module.startswith(self._MODULE_PREFIXES) or (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None),
                                            (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(f"checkpoint metadata refers to {module}.{name}, which "
                                    f"is not part of DCP metadata: refusing to load it")


def read_metadata(path: str):
    """DCP ``Metadata`` of a checkpoint directory, unpickled with the allow-list above."""
    meta_path = os.path.join(path, METADATA)
    if not os.path.exists(meta_path):
        raise IncompleteCheckpointError(
            f"{meta_path} is missing: '{path}' is not a complete checkpoint")
    with open(meta_path, "rb") as f:
        try:
            return _MetadataUnpickler(f).load()
        except (EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
            raise IncompleteCheckpointError(f"{meta_path} is unreadable ({e}): the "
                                            f"checkpoint is truncated or corrupt") from e


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_metadata(str(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """Non-tensor items (optimizer hyper-parameters, ...) come back through
    ``torch.load(weights_only=True)``: plain containers and numbers only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def verify_checkpoint(path: str) -> None:
    """Raises ``IncompleteCheckpointError`` naming the first missing or short file."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory '{path}' does not exist")
    metadata = read_metadata(path)
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        rel = info.relative_path
        needed[rel] = max(needed.get(rel, 0), info.offset + info.length)
    for rel, size in sorted(needed.items()):
        full = os.path.join(path, rel)
        if not os.path.exists(full):
            raise IncompleteCheckpointError(f"shard file {full} is missing (the index "
                                            f"{os.path.join(path, METADATA)} lists it)")
        have = os.path.getsize(full)
        if have < size:
            raise IncompleteCheckpointError(f"shard file {full} is truncated: {have} bytes, "
                                            f"the index needs {size}")
    state_dir = os.path.join(path, "train_state")
    if not os.path.isfile(os.path.join(state_dir, _rank_state_name(0))):
        raise IncompleteCheckpointError(
            f"{os.path.join(state_dir, _rank_state_name(0))} is missing")


# --------------------------------------------------------------------------- rank state
def _rank_state_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """torch CPU/CUDA, Python and NumPy RNG states plus named generators, as tensors."""
    state = {"torch_cpu": torch.get_rng_state(),
             "python": _python_rng_to_tensor(random.getstate()),
             "generators": {k: g.get_state() for k, g in (generators or {}).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:
        pass
    return state


def restore_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None):
    torch.set_rng_state(state["torch_cpu"])
    random.setstate(_python_rng_from_tensor(state["python"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["cached"]))
    for k, g in (generators or {}).items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])


def _python_rng_to_tensor(s) -> dict:
    version, internal, gauss = s
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def _python_rng_from_tensor(d: dict):
    return d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"]


# --------------------------------------------------------------------------- pointer
def replace_dir(src: str, dst: str, parking: str) -> None:
    """Moves the finished directory ``src`` to ``dst``; an existing ``dst`` is parked at
    ``parking`` for the instant of the swap, then removed (two renames, no copy)."""
    if os.path.exists(dst):
        shutil.rmtree(parking, ignore_errors=True)
        os.replace(dst, parking)
        os.replace(src, dst)
        shutil.rmtree(parking, ignore_errors=True)
    else:
        os.replace(src, dst)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of committed checkpoint directories, oldest first."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = STEP_DIR.match(name)
        if m and os.path.isdir(os.path.join(root, name)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def latest_checkpoint(root: str) -> str | None:
    """The directory ``latest`` names; without a pointer, the newest committed one."""
    pointer = os.path.join(root, LATEST)
    if os.path.exists(pointer):
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(root, name)
        if not STEP_DIR.match(name) or not os.path.isdir(path):
            raise CheckpointError(f"{pointer} names '{name}', which is not a checkpoint "
                                  f"directory in {root}")
        return path
    found = list_checkpoints(root)
    return found[-1][1] if found else None

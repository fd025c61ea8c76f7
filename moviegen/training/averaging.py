"""Model averaging (Movie Gen averages models fine-tuned with different data,
hyper-parameters and checkpoints; Llama 3 does the same): a weighted mean, tensor by tensor.

Inputs are exports (``<output_dir>/final``: model.safetensors, or ema.safetensors with
``ema=True``) or DCP training checkpoints (``<output_dir>/checkpoints/step_N``, any layout:
each tensor is read whole from the shards of every input, one tensor at a time, so no
process ever holds more than one tensor per input plus its mean). The output is an export
that ``moviegen.sample`` and ``train.init_from`` read; its model.safetensors is written as
it is computed (header first, then each tensor), never assembled in memory.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile

import torch
import yaml

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
              torch.bool: "BOOL", torch.uint8: "U8"}


class AverageError(ValueError):
    """Inputs that cannot be averaged (names the first mismatch)."""


# --------------------------------------------------------------------------- readers
class ExportReader:
    """Tensors of an export's model.safetensors (or ema.safetensors), one at a time."""

    def __init__(self, directory: str, ema: bool = False):
        from safetensors import safe_open

        self.path = os.path.join(directory, "ema.safetensors" if ema else "model.safetensors")
        if not os.path.isfile(self.path):
            raise AverageError(f"{self.path} does not exist"
                               + (" (that run kept no EMA weights)" if ema else ""))
        self.config_dir = directory
        self._f = safe_open(self.path, framework="pt")

    def specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        out = {}
        for k in self._f.keys():
            t = self._f.get_slice(k)
            out[k] = (tuple(t.get_shape()), _dtype_of(t.get_dtype()))
        return out

    def tensor(self, name: str) -> torch.Tensor:
        return self._f.get_tensor(name)


class CheckpointReader:
    """Model (or EMA) tensors of a DCP checkpoint, each read whole from its shards."""

    def __init__(self, directory: str, ema: bool = False):
        from moviegen.training.checkpoint_files import read_metadata, verify_checkpoint

        verify_checkpoint(directory)
        self.path, self.prefix = directory, "ema." if ema else "model."
        self.meta = read_metadata(directory).state_dict_metadata
        if not any(k.startswith(self.prefix) for k in self.meta):
            raise AverageError(f"{directory} holds no '{self.prefix[:-1]}' state"
                               + (" (that run kept no EMA weights)" if ema else ""))
        # the run's export carries its config: <output_dir>/checkpoints/step_N -> final/
        self.config_dir = os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(directory))), "final")

    def specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        return {k[len(self.prefix):]: (tuple(m.size), m.properties.dtype)
                for k, m in self.meta.items()
                if k.startswith(self.prefix) and isinstance(m, TensorStorageMetadata)}

    def tensor(self, name: str) -> torch.Tensor:
        import warnings

        import torch.distributed.checkpoint as dcp

        from moviegen.training.checkpoint_files import (SafeFileSystemReader,
                                                        WeightsOnlyLoadPlanner)

        size, dtype = self.specs_cache()[name]
        out = {self.prefix + name: torch.empty(size, dtype=dtype)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(out, storage_reader=SafeFileSystemReader(self.path),
                     planner=WeightsOnlyLoadPlanner(), no_dist=True)
        return out[self.prefix + name]

    def specs_cache(self):
        if not hasattr(self, "_specs"):
            self._specs = self.specs()
        return self._specs


def open_input(path: str, ema: bool):
    if os.path.isfile(os.path.join(path, ".metadata")):
        return CheckpointReader(path, ema)
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return ExportReader(path, ema)
    raise AverageError(f"{path} is neither an export (model.safetensors) nor a training "
                       f"checkpoint (.metadata)")


def _dtype_of(name: str) -> torch.dtype:
    for dt, st in _ST_DTYPES.items():
        if st == name:
            return dt
    raise AverageError(f"unsupported tensor dtype {name}")


# --------------------------------------------------------------------------- writer
def write_safetensors_streaming(path: str, specs: dict, produce) -> None:
    """Writes a .safetensors file whose tensors come one at a time from ``produce(name)``:
    the header (names, dtypes, shapes, offsets) first, then each tensor's bytes in order."""
    header, offset = {}, 0
    names = sorted(specs)
    for name in names:
        shape, dtype = specs[name]
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            t = produce(name).contiguous()
            if t.dtype == torch.bfloat16:  # numpy has no bf16: write its raw 16-bit words
                t = t.view(torch.int16)
            f.write(t.numpy().tobytes())


# --------------------------------------------------------------------------- average
def _check_configs(readers) -> dict:
    """The first input's config (its model section must match every other's)."""
    configs = []
    for r in readers:
        path = os.path.join(r.config_dir, "config.yaml")
        if not os.path.isfile(path):
            raise AverageError(f"no config.yaml for {getattr(r, 'path', r.config_dir)} (looked "
                               f"in {r.config_dir}; an export or a run with a final/ export)")
        with open(path) as f:
            configs.append(yaml.safe_load(f))
    for r, cfg in zip(readers[1:], configs[1:]):
        if cfg["model"] != configs[0]["model"]:
            diff = sorted(k for k in cfg["model"] if cfg["model"][k] != configs[0]["model"].get(k))
            raise AverageError(f"model configs differ: {r.config_dir} has model.{diff[0]}="
                               f"{cfg['model'][diff[0]]!r}, the first input "
                               f"{configs[0]['model'].get(diff[0])!r}")
    return configs[0]


def average(inputs: list[str], output: str, weights: list[float] | None = None,
            ema: bool = False) -> str:
    """Writes the weighted mean of ``inputs`` as an export at ``output``; returns it."""
    if len(inputs) < 2:
        raise AverageError("give at least two inputs")
    weights = weights or [1.0 / len(inputs)] * len(inputs)
    if len(weights) != len(inputs):
        raise AverageError(f"{len(weights)} weights for {len(inputs)} inputs")
    total = sum(weights)
    if total <= 0:
        raise AverageError(f"weights sum to {total}")
    weights = [w / total for w in weights]
    readers = [open_input(p, ema) for p in inputs]
    specs = readers[0].specs()
    for r, path in zip(readers[1:], inputs[1:]):
        other = r.specs()
        for name in sorted(set(specs) | set(other)):
            if name not in other or name not in specs:
                raise AverageError(f"tensor '{name}' is in {inputs[0] if name in specs else path}"
                                   f" only")
            if other[name][0] != specs[name][0]:
                raise AverageError(f"tensor '{name}' has shape {list(other[name][0])} in {path}"
                                   f" but {list(specs[name][0])} in {inputs[0]}")
    _check_configs(readers)

    def mean(name: str) -> torch.Tensor:
        dtype = specs[name][1]
        if not dtype.is_floating_point:  # integer buffers: the first input's
            return readers[0].tensor(name)
        acc = torch.zeros(specs[name][0], dtype=torch.float64)
        for r, w in zip(readers, weights):
            acc += w * r.tensor(name).double()
        return acc.to(dtype)

    parent = os.path.dirname(os.path.abspath(output)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".average-", dir=parent)
    src = readers[0].config_dir
    for name in ("config.yaml", "sample.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(tmp, name))
    for name in ("tae", "text_encoders"):
        if os.path.isdir(os.path.join(src, name)):
            shutil.copytree(os.path.join(src, name), os.path.join(tmp, name))
    write_safetensors_streaming(os.path.join(tmp, "model.safetensors"), specs, mean)
    with open(os.path.join(tmp, "average.json"), "w") as f:
        json.dump({"inputs": [os.path.abspath(p) for p in inputs], "weights": weights,
                   "ema": ema}, f, indent=1)
    from moviegen.training.checkpoint_files import replace_dir

    replace_dir(tmp, output, output + ".old")
    return output

"""Same seed, same model on any layout: the trainer's public path (no shared state dict).

Initial weights: the trainer built from a seed on 1 process, FSDP 2, TP 2 and TP 2 x CP 2
holds bitwise the same parameters, and no two TP shards of a weight are equal.
"""
from __future__ import annotations

import os

import pytest
import torch

from dist_helpers import spawn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")


def tiny_cfg(output_dir: str, *extra: str):
    from moviegen.config import load_config
    return load_config(TINY, [f"--output_dir={output_dir}", "--train.progress_bar=false",
                              "--metrics.tensorboard=false", "--checkpoint.resume=false",
                              *extra])


def _initial_weights(rank, world, output_dir, layouts):
    """Spawn target: for each layout, the whole initial parameters (rank 0) and each
    rank's local pieces of the tensor-parallel weights."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from moviegen.training.diffusion import DiffusionTrainer
    from parallel.state import canonical_name, gather_full_state_dict, model_tensors

    out = {}
    for i, layout in enumerate(layouts):
        trainer = DiffusionTrainer(tiny_cfg(f"{output_dir}/{i}", *layout))
        full = gather_full_state_dict(model_tensors(trainer.model), rank == 0)
        tp_pieces = {}
        for name, p in trainer.model.named_parameters():
            if isinstance(p, DTensor) and "tp" in (p.device_mesh.mesh_dim_names or ()):
                tp_dim = p.device_mesh.mesh_dim_names.index("tp")
                if p.placements[tp_dim].is_shard():
                    tp_pieces[canonical_name(name)] = p.to_local().detach().clone()
        out[" ".join(layout)] = (full, tp_pieces)
        trainer.ckpt.close()
        trainer.model = None
        dist.barrier()
    return out


@pytest.mark.timeout(150)
def test_initial_weights_equal_one_process_on_every_layout(tmp_path):
    from moviegen.training.diffusion import DiffusionTrainer
    from parallel.state import gather_full_state_dict, model_tensors

    ref = gather_full_state_dict(model_tensors(
        DiffusionTrainer(tiny_cfg(str(tmp_path / "one"))).model), True)
    two = spawn(_initial_weights, 2, 120, str(tmp_path / "w2"),
                [["--parallel.dp_shard=2"], ["--parallel.tp=2"]])
    four = spawn(_initial_weights, 4, 120, str(tmp_path / "w4"),
                 [["--parallel.tp=2", "--parallel.cp=2"]])
    checked = 0
    for result in (two, four):
        for layout, (full, _) in result[0].items():
            assert full.keys() == ref.keys(), layout
            for k, v in ref.items():
                assert torch.equal(full[k], v), f"{layout}: {k} differs from one process"
                checked += 1
    assert checked == 3 * len(ref)
    # the two halves of every tensor-parallel weight differ (they would be equal if each
    # rank had drawn its shard from its own generator)
    pieces0, pieces1 = two[0]["--parallel.tp=2"][1], two[1]["--parallel.tp=2"][1]
    assert len(pieces0) >= 14 and pieces0.keys() == pieces1.keys()
    for name in pieces0:
        if pieces0[name].abs().max() > 0:
            assert not torch.equal(pieces0[name], pieces1[name]), name
    # a different seed gives different weights
    other = DiffusionTrainer(tiny_cfg(str(tmp_path / "seed1"), "--train.seed=1")).model
    assert not torch.equal(other.blocks["0"].attn.wq.weight, ref["blocks.0.attn.wq.weight"])

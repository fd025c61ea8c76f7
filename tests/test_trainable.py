"""train.trainable: a real fine-tuning run that trains only part of the model.

Emu Video's interpolation model starts from the video model and trains part of it: here a
text-to-video export is loaded through train.init_from into a conditioned model and only
the attention and the patch embedding train on the interpolate task. The frozen weights
stay bitwise those of the export, the optimizer holds state for the trainable ones only,
the gradient norm is clipped over them, and a run stopped at a checkpoint and resumed logs
the losses of an uninterrupted one. A pattern that matches nothing is a config error.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from moviegen.config import ConfigError, load_config
from moviegen.training.diffusion import DiffusionTrainer, check_job
from moviegen.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")
COMMON = ["--train.val_every=1000", "--train.progress_bar=false", "--train.log_every=1",
          "--metrics.tensorboard=false", "--data.batch_size=4", "--train.warmup_steps=1"]
TRAINABLE = "--train.trainable=[\"blocks.*.attn.*\", \"patch_embed.*\"]"


def _cfg(output_dir, *extra):
    """The config as python -m moviegen.train parses it (with the job's checks)."""
    return load_config(TINY, [f"--output_dir={output_dir}", *COMMON, *extra],
                       checks=check_job)


@pytest.fixture(scope="module")
def t2v_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2v")
    trainer = DiffusionTrainer(_cfg(d, "--train.steps=6"))
    trainer.fit()
    trainer.close()
    return str(d / "final")


def _finetune(output_dir, export, steps, *extra):
    trainer = DiffusionTrainer(_cfg(output_dir, f"--train.steps={steps}",
                                    f"--train.init_from={export}", "--model.cond_channels=17",
                                    "--train.tasks={interpolate: 1.0}", TRAINABLE,
                                    "--train.grad_clip=0.005", *extra))
    trainer.fit()
    trainer.close()
    return trainer


@pytest.mark.timeout(240)
def test_only_the_chosen_parameters_train_clip_and_resume(t2v_export, tmp_path):
    trainer = _finetune(tmp_path / "full", t2v_export, 4)
    start = load_file(os.path.join(t2v_export, "model.safetensors"))
    end = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(".attn." in n or n.startswith("patch_embed") for n in trained)
    assert not any(".cross_attn." in n for n in trained)
    for name, value in end.items():
        if name in trained:
            if name != "patch_embed.proj.weight":
                assert not torch.equal(value, start[name]), f"{name} did not train"
        else:
            assert torch.equal(value, start[name]), f"frozen {name} moved"
    # the conditioning channels learnt from zero; the latent ones moved as well
    assert torch.count_nonzero(end["patch_embed.proj.weight"][:, 16:]) > 0
    # optimizer state for the trainable parameters only
    state_params = {id(p) for p in trainer.optimizer.state}
    names = {n for n, p in trainer.model.named_parameters() if id(p) in state_params}
    assert names == trained
    rows = [r for r in read_metrics(str(tmp_path / "full")) if "loss" in r]
    assert len(rows) == 4 and all(r["grad_norm"] > 0.005 for r in rows)  # clipping bit

    # stop at step 2 (a checkpoint), resume to 4: the losses of the run above
    _finetune(tmp_path / "resumed", t2v_export, 2)
    resumed = _finetune(tmp_path / "resumed", t2v_export, 4)
    assert resumed.resumed_from
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "resumed")) if "loss" in r]
    assert losses[-2:] == pytest.approx([r["loss"] for r in rows][-2:], rel=1e-6)
    again = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    for name, value in end.items():
        assert torch.allclose(again[name], value, rtol=1e-5, atol=1e-7), name


def test_a_pattern_that_matches_nothing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train.trainable: pattern 'blocks\.\*\.atn\.\*' "
                                          r"matches no parameter .*top-level parts: blocks"):
        _cfg(tmp_path, "--train.trainable=[\"blocks.*.atn.*\"]")
    with pytest.raises(ConfigError, match=r"model.cond_channels: train.tasks \['i2v', 't2v'\]"
                                          r" give the model conditioning frames"):
        _cfg(tmp_path, "--train.tasks={t2v: 0.5, i2v: 0.5}")
    with pytest.raises(ConfigError, match="train.tasks: unknown task 'i2i'"):
        _cfg(tmp_path, "--train.tasks={i2i: 1.0}", "--model.cond_channels=17")
    with pytest.raises(ConfigError, match="train.extend_frames: 4 given latent frames leave "
                                          "none to generate"):
        _cfg(tmp_path, "--train.tasks={extend: 1.0}", "--model.cond_channels=17",
             "--train.extend_frames=4")


def _fsdp_finetune(rank, world, runs, export):
    """Spawn target: fine-tune runs (output_dir, steps) on FSDP 2 in turn; each run's
    logged losses (rank 0) and whether its frozen weights kept the export's values."""
    import torch.distributed as dist
    from moviegen.parallel.state import gather_full_state_dict, model_tensors

    out = []
    for output_dir, steps in runs:
        trainer = DiffusionTrainer(_cfg(output_dir, f"--train.steps={steps}",
                                        f"--train.init_from={export}",
                                        "--model.cond_channels=17",
                                        "--train.tasks={interpolate: 1.0}", TRAINABLE,
                                        "--train.grad_clip=0.005", "--parallel.dp_shard=2",
                                        "--data.global_batch_size=4"))
        # no gradient reduce-scatter for a frozen parameter: after backward it has no grad
        position = trainer.train_data.state_dict()
        trainer.forward_backward(next(trainer.train_data))
        frozen_grads = [n for n, p in trainer.model.named_parameters()
                        if not p.requires_grad and p.grad is not None]
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.train_data.load_state_dict(position)  # fit() sees the same batches
        trainer.fit()
        full = gather_full_state_dict(model_tensors(trainer.model), rank == 0)
        losses = [r["loss"] for r in read_metrics(str(output_dir)) if "loss" in r]
        out.append((losses, frozen_grads, full))
        trainer.ckpt.close()
        dist.barrier()
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_frozen_parameters_on_fsdp2_train_and_resume_like_one_process(t2v_export, tmp_path):
    """FSDP 2 with frozen parameters: no gradient for them, the losses of one process, and
    a run stopped at step 2 and resumed (optimizer state of the trainable parameters
    only, from a sharded checkpoint) logs the losses of an uninterrupted one."""
    from dist_helpers import spawn

    one = _finetune(tmp_path / "one", t2v_export, 4, "--data.global_batch_size=4")
    ref = [r["loss"] for r in read_metrics(str(tmp_path / "one")) if "loss" in r]
    start = load_file(os.path.join(t2v_export, "model.safetensors"))
    runs = [(str(tmp_path / "fsdp"), 4), (str(tmp_path / "resumed"), 2),
            (str(tmp_path / "resumed"), 4)]
    (straight, part, resumed) = spawn(_fsdp_finetune, 2, 280, runs, t2v_export)[0]
    assert straight[1] == [] and resumed[1] == []
    assert straight[0] == pytest.approx(ref, rel=1e-5)
    assert resumed[0][-2:] == pytest.approx(ref[-2:], rel=1e-5) and len(part[0]) == 2
    trained = {n for n, p in one.model.named_parameters() if p.requires_grad}
    for name, value in resumed[2].items():
        if name not in trained:
            assert torch.equal(value, start[name]), f"frozen {name} moved"

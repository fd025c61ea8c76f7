"""Same seed, same run on any layout: the trainer's public path (no shared state dict).

Initial weights: the trainer built from a seed on 1 process, FSDP 2, TP 2 and TP 2 x CP 2
holds bitwise the same parameters, and no two TP shards of a weight are equal.
Global batch: data.global_batch_size splits over data-parallel ranks (or a config error),
the same samples and per-sample noise on any layout, precomputed data included (and its
token count checked against cp x tp before any process group).
Training: 4 steps from the seed on FSDP 2, TP 2, CP 2, TP 2 x CP 2 (each AC mode), HSDP 2x2,
CP 4 and FSDP 2 x TP 2 x CP 2 log one process's losses (rel 1e-5, fp32) and end with its
parameters; the CLI under torchrun does the same.
"""
from __future__ import annotations

import os

import pytest
import torch

from dist_helpers import adamw_param_problems, launch_failure, spawn

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

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
    from moviegen.parallel.state import canonical_name, gather_full_state_dict, model_tensors

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
    from moviegen.parallel.state import gather_full_state_dict, model_tensors

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


# --------------------------------------------------------------------------- global batch
def test_global_batch_splits_over_data_parallel_ranks_or_says_why(tmp_path):
    from moviegen.config import ConfigError
    from moviegen.data.sources import build_data
    from moviegen.training.diffusion import job_layout

    cfg = tiny_cfg(str(tmp_path), "--data.global_batch_size=6")
    assert job_layout(cfg, 2).dp == 2  # 3 per rank
    with pytest.raises(ConfigError, match="data.global_batch_size: 6 samples do not split "
                                          "over 4 data-parallel ranks"):
        job_layout(cfg, 4)
    # tp x cp peers do not count: 4 ranks as tp 2 x cp 2 is one data-parallel rank
    assert job_layout(tiny_cfg(str(tmp_path), "--data.global_batch_size=6",
                               "--parallel.tp=2", "--parallel.cp=2"), 4).dp == 1
    # the same global batches, in the same places, whatever the data-parallel size
    one = next(build_data(tiny_cfg(str(tmp_path), "--data.global_batch_size=8"), 0, 1, "train"))
    halves = [next(build_data(tiny_cfg(str(tmp_path), "--data.global_batch_size=8"), r, 2,
                              "train")) for r in range(2)]
    assert torch.equal(torch.cat([h["latents"] for h in halves]), one["latents"])
    assert torch.equal(torch.cat([h["index"] for h in halves]), one["index"])
    # data.batch_size stays per rank when no global size is set
    assert len(next(build_data(tiny_cfg(str(tmp_path), "--data.batch_size=3"), 1, 2,
                               "train"))["captions"]) == 3


def test_per_sample_randomness_ignores_the_rank_and_the_batch_around_it():
    from moviegen.flow import per_sample_draws, sample_seed

    seeds = [sample_seed(0, "train", 5, i) for i in range(4)]
    t, x0, keep = per_sample_draws((4, 2, 1, 2, 2), seeds, drop_prob=0.5)
    t2, x02, keep2 = per_sample_draws((2, 2, 1, 2, 2), seeds[2:], drop_prob=0.5)
    assert torch.equal(t[2:], t2) and torch.equal(x0[2:], x02) and torch.equal(keep[2:], keep2)
    assert len(set(t.tolist())) == 4
    t3, _, _ = per_sample_draws((1, 2, 1, 2, 2), [sample_seed(0, "train", 6, 0)])
    assert t3[0] != t[0]  # another step, other numbers


def _losses(output_dir) -> list[float]:
    from moviegen.training.metrics import read_metrics
    return [r["loss"] for r in read_metrics(str(output_dir)) if "loss" in r]


@pytest.mark.timeout(200)
def test_cli_same_losses_on_one_process_tp2_cp2_and_fsdp2_cp2(tmp_path):
    """python -m moviegen.train on 1 process and torchrun on 4 ranks (tp 2 x cp 2, then
    dp_shard 2 x cp 2) log the same losses with the same global batch."""
    import subprocess
    import sys

    common = ["-m", "moviegen.train", "--config", "launch/configs/tiny.yaml",
              "--data.global_batch_size=8", "--train.steps=5", "--train.log_every=1",
              "--train.val_every=1000", "--train.progress_bar=false",
              "--metrics.tensorboard=false"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    runs = {"one": [sys.executable],
            "tp2_cp2": torchrun + ["--no-python", sys.executable],
            "fsdp2_cp2": torchrun + ["--no-python", sys.executable]}
    layouts = {"one": [], "tp2_cp2": ["--parallel.tp=2", "--parallel.cp=2"],
               "fsdp2_cp2": ["--parallel.dp_shard=2", "--parallel.cp=2"]}
    losses = {}
    for name, prefix in runs.items():
        cmd = prefix + common + layouts[name] + [f"--output_dir={tmp_path / name}"]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=90)
        assert out.returncode == 0, launch_failure(name, out)
        losses[name] = _losses(tmp_path / name)
    assert len(losses["one"]) == 5
    for name in ("tp2_cp2", "fsdp2_cp2"):
        assert losses[name] == pytest.approx(losses["one"], rel=1e-5), name


# --------------------------------------------------------------------------- precomputed
def test_precomputed_token_count_checked_before_any_process_group(tmp_path):
    """45-token latents (5 x 6 x 6 with patch 1 x 2 x 2) cannot split over cp 2: the
    error comes from the precompute index, before a process group or a shard is read."""
    import json

    from moviegen.config import ConfigError
    from moviegen.training.diffusion import job_layout

    index = {"version": 1, "text_dims": {"byt5": 64}, "tae_checkpoint": None,
             "num_samples": {"train": 4, "val": 0},
             "shards": [{"file": "train/r0000_b000000.safetensors", "split": "train",
                         "bucket": "odd_5x6x6", "num_samples": 4,
                         "latent_shape": [16, 5, 6, 6]}]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    cfg = tiny_cfg(str(tmp_path / "run"), "--data.kind=precomputed",
                   f"--data.precomputed_dir={tmp_path}", "--parallel.cp=2")
    with pytest.raises(ConfigError, match="data bucket 'odd_5x6x6'.*45 tokens, not "
                                          "divisible by cp x tp = 2 x 1"):
        job_layout(cfg, 2)
    # the same set is fine on a layout whose cp x tp divides 45
    assert job_layout(tiny_cfg(str(tmp_path / "run"), "--data.kind=precomputed",
                               f"--data.precomputed_dir={tmp_path}"), 2).dp == 2


def test_precomputed_global_batches_do_not_depend_on_the_data_parallel_size(tmp_path):
    import json

    from safetensors.torch import save_file

    from moviegen.data.precomputed import PrecomputedLoader

    (tmp_path / "train").mkdir()
    shards = []
    for k, n in enumerate((6, 5)):  # 11 samples in two buckets of different shapes
        shape = [16, 1 + k, 2, 2]
        name = f"train/r0000_b{k:06d}.safetensors"
        save_file({"latents": torch.randn(n, *shape),
                   "text.byt5.emb": torch.randn(n, 3, 4),
                   "text.byt5.mask": torch.ones(n, 3, dtype=torch.bool)},
                  str(tmp_path / name), metadata={
                      "captions": json.dumps([f"b{k} s{i}" for i in range(n)]),
                      "bucket": f"b{k}", "paths": "[]"})
        shards.append({"file": name, "split": "train", "bucket": f"b{k}", "num_samples": n,
                       "latent_shape": shape})
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "shards": shards}))

    def global_batches(dp: int, count: int):
        loaders = [PrecomputedLoader(str(tmp_path), "train", 4 // dp, r, dp, seed=3)
                   for r in range(dp)]
        out = []
        for _ in range(count):
            parts = [next(loader) for loader in loaders]
            out.append(([c for p in parts for c in p["captions"]],
                        torch.cat([p["index"] for p in parts]).tolist()))
        return out, loaders[0].state_dict()

    one, state = global_batches(1, 7)  # crosses an epoch (per bucket: 4 + 4 filled up)
    two, _ = global_batches(2, 7)
    assert one == two
    assert all(len(c) == 4 for c, _ in one)
    assert {c for batch, _ in one[:4] for c in batch} == {f"b{k} s{i}" for k, n in
                                                          enumerate((6, 5)) for i in range(n)}
    # the position is in global batches: resume on 2 ranks where 1 rank stopped
    resumed = [PrecomputedLoader(str(tmp_path), "train", 2, r, 2, seed=3) for r in range(2)]
    for loader in resumed:
        loader.load_state_dict(state)
    ref, _ = global_batches(1, 9)
    assert [c for r in resumed for c in next(r)["captions"]] == ref[7][0]


# --------------------------------------------------------------------------- training
TRAIN = ["--data.global_batch_size=8", "--train.steps=4", "--train.warmup_steps=2",
         "--train.log_every=1", "--train.val_every=1000", "--checkpoint.ema_decay=0"]


def _train(rank, world, output_dir, layouts):
    """Spawn target (and the 1-process run): for each layout, the trainer from the seed
    trained 4 steps; its logged losses and (rank 0) the whole parameters after them."""
    import torch.distributed as dist

    from moviegen.training.diffusion import DiffusionTrainer
    from moviegen.training.metrics import read_metrics
    from moviegen.parallel.state import gather_full_state_dict, model_tensors

    out = {}
    for i, layout in enumerate(layouts):
        trainer = DiffusionTrainer(tiny_cfg(f"{output_dir}/{i}", *TRAIN, *layout))
        trainer.fit()
        losses = [r["loss"] for r in read_metrics(f"{output_dir}/{i}") if "loss" in r]
        out[" ".join(layout)] = (losses, gather_full_state_dict(model_tensors(trainer.model),
                                                                rank == 0))
        trainer.ckpt.close()
        if world > 1:
            dist.barrier()
    return out


def _assert_like_one_process(ref, results, expected: int):
    ref_losses, ref_params = ref
    assert len(ref_losses) == 4
    assert len(results[0]) == expected
    for layout, (losses, params) in results[0].items():
        assert losses == pytest.approx(ref_losses, rel=1e-5), layout
        # launch/configs/tiny.yaml: lr 2e-3 (warm-up, then cosine): at most 8e-3 over 4 steps
        assert adamw_param_problems(params, ref_params, lr_sum=8e-3, what=layout) == []


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return _train(0, 1, str(tmp_path_factory.mktemp("one")), [[]])[""]


@pytest.mark.timeout(150)
def test_training_fsdp2_tp2_cp2_like_one_process(one_process, tmp_path):
    results = spawn(_train, 2, 140, str(tmp_path), [
        ["--parallel.dp_shard=2"],
        ["--parallel.tp=2", "--parallel.ac=selective"],
        ["--parallel.cp=2", "--parallel.ac=full"]])
    _assert_like_one_process(one_process, results, 3)


@pytest.mark.timeout(200)
def test_training_tp2_cp2_each_ac_mode_like_one_process(one_process, tmp_path):
    results = spawn(_train, 4, 190, str(tmp_path), [
        ["--parallel.tp=2", "--parallel.cp=2", f"--parallel.ac={ac}"]
        for ac in ("none", "selective", "full")])
    _assert_like_one_process(one_process, results, 3)


@pytest.mark.timeout(200)
def test_training_hsdp2x2_and_cp4_like_one_process(one_process, tmp_path):
    results = spawn(_train, 4, 190, str(tmp_path), [
        ["--parallel.dp_replicate=2", "--parallel.dp_shard=2"], ["--parallel.cp=4"]])
    _assert_like_one_process(one_process, results, 2)


@pytest.mark.timeout(240)
def test_training_fsdp2_x_tp2_x_cp2_on_8_ranks_like_one_process(one_process, tmp_path):
    results = spawn(_train, 8, 230, str(tmp_path), [
        ["--parallel.dp_shard=2", "--parallel.tp=2", "--parallel.cp=2"]])
    _assert_like_one_process(one_process, results, 1)


# --------------------------------------------------------------------------- conditioned
# Every task at once, with noise augmentation, a degraded upsample input, a loss mask and
# part of the model frozen (text projections, positions and time embedding): the same
# losses and weights as one process. The conditioning is concatenated before patchify, so
# the sequence split sees one input as before; the draws are per sample.
COND = ["--model.cond_channels=17", "--train.tasks={t2v: 0.2, i2v: 0.2, extend: 0.2, "
        "interpolate: 0.2, upsample: 0.2}", "--train.trainable=[\"blocks.*\", "
        "\"patch_embed.*\", \"final_layer.*\"]"]


@pytest.fixture(scope="module")
def one_process_conditioned(tmp_path_factory):
    return _train(0, 1, str(tmp_path_factory.mktemp("one_cond")), [COND])[" ".join(COND)]


@pytest.mark.timeout(200)
def test_conditioned_training_fsdp2_tp2_cp2_like_one_process(one_process_conditioned,
                                                             tmp_path):
    from moviegen.training.diffusion import DiffusionTrainer

    losses, params = one_process_conditioned
    init = dict(DiffusionTrainer(tiny_cfg(str(tmp_path / "init"), *COND)).model
                .named_parameters())
    frozen = [k for k in params if k.startswith(("pos_embed", "text_proj", "time_embed"))]
    assert len(frozen) >= 6 and all(torch.equal(params[k], init[k]) for k in frozen)
    assert not torch.equal(params["patch_embed.proj.weight"][:, 16:],
                           init["patch_embed.proj.weight"][:, 16:])  # conditioning learnt
    results = spawn(_train, 2, 190, str(tmp_path), [
        [*COND, "--parallel.dp_shard=2"],
        [*COND, "--parallel.tp=2", "--parallel.ac=selective"],
        [*COND, "--parallel.cp=2"]])
    _assert_like_one_process(one_process_conditioned, results, 3)


# --------------------------------------------------------------------------- any trainer
# Tensor parallel's gradient fix-up belongs to the loop: a new model's trainer that
# supplies only the required methods (no gradient hook) and shards a transformer with
# moviegen.parallel trains on TP 2 exactly as on one process.
class _SameBatches:
    """The minimal trainer's data: batch k of a fixed sequence, the whole batch on every
    rank (TP peers read the same samples)."""

    def __init__(self):
        self.index = 0

    def __next__(self) -> dict:
        self.index += 1
        return {"seed": 100 + self.index}

    def batches_per_epoch(self) -> int:
        return 1

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]

    def stats(self) -> dict:
        return {}


def _minimal_trainer_cls():
    from dist_helpers import loss_of, make_batch, reference_state, tiny_args
    from moviegen.models.transformer import MovieGenTransformer
    from moviegen.parallel.parallelize import parallelize
    from moviegen.parallel.state import load_full_state_dict
    from moviegen.training.distributed import check_layout
    from moviegen.training.trainer import Trainer

    class MinimalTrainer(Trainer):
        def check_layout(self, world):
            args = tiny_args()
            return check_layout(self.cfg.parallel, world, args.n_heads, args.ffn_dim)

        def build_model(self):
            args = tiny_args()
            with torch.device("meta"):
                model = MovieGenTransformer(args)
            parallelize(model, self.dims, self.mesh, self.cfg.parallel, "cpu")
            model.to_empty(device="cpu")
            load_full_state_dict(model, reference_state(args))
            return model

        def build_data(self, split):
            return _SameBatches()

        def forward_backward(self, batch):
            loss = loss_of(self.model, make_batch("video", 4, batch["seed"]))
            loss.backward()
            return loss.detach(), {}

    return MinimalTrainer


def _minimal_steps(rank, world, output_dir, layout):
    """Spawn target (and the 1-process run): 3 steps of the minimal trainer; the losses,
    the gradient norms before clipping and (rank 0) the whole parameters after them."""
    from moviegen.parallel.state import gather_full_state_dict, model_tensors

    trainer = _minimal_trainer_cls()(tiny_cfg(output_dir, "--train.device=cpu",
                                              "--train.lr_schedule=constant",
                                              "--train.warmup_steps=0", *layout))
    steps = [trainer.train_step(next(trainer.train_data)) for _ in range(3)]
    params = gather_full_state_dict(model_tensors(trainer.model), rank == 0)
    trainer.close()
    return ([(s["loss"].item(), s["grad_norm"].item()) for s in steps], params)


@pytest.mark.timeout(150)
def test_a_minimal_trainer_on_tp2_gets_the_sequence_parallel_gradient_fix_up(tmp_path):
    ref_steps, ref_params = _minimal_steps(0, 1, str(tmp_path / "one"), [])
    (steps, params), _ = spawn(_minimal_steps, 2, 140, str(tmp_path / "tp2"),
                               ["--parallel.tp=2"])
    # tiny.yaml: lr 2e-3, constant here, so AdamW moves a weight at most 6e-3 in 3 steps.
    # the gradient norm (taken after the fix-up, before clipping) sees every gradient:
    # without the sum over TP, the norms, then the losses and weights, differ
    for (ref_loss, ref_norm), (loss, norm) in zip(ref_steps, steps):
        assert norm == pytest.approx(ref_norm, rel=1e-5)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert adamw_param_problems(params, ref_params, lr_sum=6e-3,
                                what="minimal trainer tp 2") == []

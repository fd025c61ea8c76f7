"""Resharding: a checkpoint saved with one layout loads into another and gives the same
loss, before and after one more optimizer step (so weights, Adam moments and EMA all
reshard), on CPU with gloo.

    save: 4 ranks, dp 2 x tp 2 (FSDP2 over dp, DTensor tensor parallel over tp:
          column-parallel q/k/v and w1/w3, row-parallel o and w2), 2 training steps
    load: 4 ranks with the same layout, 2 ranks FSDP2, 1 plain process

The layouts are applied here with torch's own fully_shard / parallelize_module, so the
test covers the checkpoint code on its own; the trainer-level matrix with the parallel
package's plans (tp 2 x cp 2) runs the real trainer once it is distributed.
"""
import multiprocessing as mp
import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist

from moviegen.training.checkpoint import CheckpointManager, latest_checkpoint
from moviegen.config import load_config
from moviegen.training.ema import EMA
from moviegen.flow import flow_matching_loss, interpolate, sample_t, target_velocity
from moviegen.data.latents import SyntheticLatentDataset
from moviegen.models.transformer import build_model, resolve_model_args
from moviegen.models.text_encoders import TextEncoders
from moviegen.data.sources import build_data
from moviegen.training.checkpoint import ModelState, OptimizerState
from moviegen.training.optim import build_optimizer
from moviegen.training.trainer import TrainState

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")
BATCH = 8


# --------------------------------------------------------------------------- processes
def _entry(rank, world, init_file, fn, args, queue):
    os.environ.update(OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))  # what torchrun sets; the trainer reads them
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
        queue.put((rank, "ok", fn(rank, world, *args)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world, *args, timeout=90, monitor=None):
    """Runs ``fn(rank, world, *args)`` on ``world`` forked processes with a gloo group;
    returns the per-rank results; a hang or an error on any rank fails the test.
    ``monitor(processes)`` runs in this process while they work (to send signals)."""
    _setup()  # import transformers' T5 once here; forked children inherit it
    ctx = mp.get_context("fork")  # children inherit the imported modules: no re-import
    queue = ctx.Queue()
    init_file = tempfile.mktemp(prefix="moviegen-pg-")
    procs = [ctx.Process(target=_entry, args=(r, world, init_file, fn, args, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        if monitor is not None:
            monitor(procs)
        for _ in range(world):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                pytest.fail(f"rank {rank} failed:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        if os.path.exists(init_file):
            os.remove(init_file)
    return [results[r] for r in range(world)]


# --------------------------------------------------------------------------- the job
def _setup():
    cfg = load_config(TINY, ["--output_dir=/nonexistent", "--train.lr=0.01",
                             "--train.warmup_steps=0", "--train.lr_schedule=constant"])
    torch.manual_seed(cfg.train.seed)
    encoders = TextEncoders(cfg.text)
    model = build_model(resolve_model_args(cfg.model, encoders.out_dims), "cpu")
    return cfg, encoders, model


def _batch(cfg, encoders, index):
    """Full batch ``index`` (latents, t, noise, text): identical on every rank."""
    d = cfg.data
    ds = SyntheticLatentDataset(64, (cfg.model.in_channels, d.latent_frames, d.latent_height,
                                     d.latent_width), seed=5)
    items = [ds[(index * BATCH + i) % len(ds)] for i in range(BATCH)]
    x1 = torch.stack([x for x, _ in items])
    g = torch.Generator().manual_seed(100 + index)
    t = sample_t(BATCH, generator=g)
    x0 = torch.randn(x1.shape, generator=g)
    embeds, masks = encoders.encode([c for _, c in items])
    return interpolate(x0, x1, t, 1e-5), t, target_velocity(x0, x1, 1e-5), embeds, masks


def _loss(model, inputs, part=slice(None)):
    x_t, t, target, embeds, masks = inputs
    emb = {k: v[part] for k, v in embeds.items()} if isinstance(embeds, dict) else embeds[part]
    msk = {k: v[part] for k, v in masks.items()} if isinstance(masks, dict) else masks[part]
    pred = model(x_t[part], t[part], emb, msk)
    sum_sq, count = flow_matching_loss(pred, target[part])
    return sum_sq / count


def _layout(model, layout: str):
    """Shards ``model`` in place; returns the data-parallel (rank, size)."""
    if layout == "single":
        return 0, 1
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    if layout == "fsdp":
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
        dp_mesh = mesh
    elif layout == "dp2_tp2":
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)

        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        dp_mesh = mesh["dp"]
        plan = {"attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(),
                "attn.wv": ColwiseParallel(), "attn.wo": RowwiseParallel(),
                "ffn.w1": ColwiseParallel(), "ffn.w3": ColwiseParallel(),
                "ffn.w2": RowwiseParallel()}
        for block in model.blocks.values():
            parallelize_module(block, mesh["tp"], plan)
    else:
        raise ValueError(layout)
    for block in model.blocks.values():
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    return dp_mesh.get_local_rank(), dp_mesh.size()


def _train_step(model, optimizer, ema, inputs, dp_rank, dp_size):
    per = BATCH // dp_size  # data-parallel ranks take their half; FSDP averages gradients
    loss = _loss(model, inputs, slice(dp_rank * per, (dp_rank + 1) * per))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model)


def _ema_digest(ema, model):
    full = ema.full_state_dict(model, is_main=True)
    return sum(float(v.double().sum()) for v in full.values())


def job(rank, world, layout, ckpt_root, save):
    cfg, encoders, model = _setup()
    dp_rank, dp_size = _layout(model, layout)
    optimizer, _ = build_optimizer(model, cfg.train, torch.device("cpu"))
    ema = EMA(model, 0.5)
    manager = CheckpointManager(ckpt_root, keep_last=2)
    progress = TrainState()
    manager.register("model", ModelState(model))
    manager.register("optim", OptimizerState(model, optimizer))
    manager.register("ema", ema)
    manager.register_rank("train", progress)
    if save:
        for i in range(2):
            _train_step(model, optimizer, ema, _batch(cfg, encoders, i), dp_rank, dp_size)
        progress.step = 2
        manager.save(2)
    else:
        manager.load(latest_checkpoint(ckpt_root))
        assert progress.step == 2
    with torch.no_grad():
        before = _loss(model, _batch(cfg, encoders, 9)).item()
    _train_step(model, optimizer, ema, _batch(cfg, encoders, 2), dp_rank, dp_size)
    with torch.no_grad():
        after = _loss(model, _batch(cfg, encoders, 9)).item()
    return before, after, _ema_digest(ema, model)


@pytest.mark.timeout(300)
def test_resharding_matrix(tmp_path):
    root = str(tmp_path / "checkpoints")
    saved = run_ranks(job, 4, "dp2_tp2", root, True)
    assert all(r == saved[0] for r in saved), f"ranks disagree: {saved}"
    same = run_ranks(job, 4, "dp2_tp2", root, False)
    fsdp = run_ranks(job, 2, "fsdp", root, False)
    single = job(0, 1, "single", root, False)
    ref = saved[0]
    for name, got in (("dp2 x tp2", same[0]), ("fsdp 2", fsdp[0]), ("fsdp 2 rank 1", fsdp[1]),
                      ("1 process", single)):
        # loss of the loaded weights, loss after one more step (Adam moments), EMA sum
        assert got[0] == pytest.approx(ref[0], rel=1e-5), f"{name}: loaded weights differ"
        assert got[1] == pytest.approx(ref[1], rel=1e-5), f"{name}: optimizer state differs"
        assert got[2] == pytest.approx(ref[2], rel=1e-6), f"{name}: EMA differs"
    assert ref[1] != pytest.approx(ref[0], rel=1e-4)  # the extra step did change the model


# --------------------------------------------------------------------------- trainer
def trainer_cfg(output_dir, *extra):
    return load_config(TINY, [f"--output_dir={output_dir}", "--train.steps=3",
                              "--train.val_every=1000", "--train.progress_bar=false",
                              "--data.num_val=16", "--checkpoint.ema_decay=0.9",
                              "--metrics.tensorboard=false", *extra])


def _full_optimizer_digest(trainer):
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)

    sd = get_optimizer_state_dict(trainer.model, trainer.optimizer,
                                  options=StateDictOptions(full_state_dict=True))
    return {f"{k}/{n}": float(v.double().sum()) for k, st in sd["state"].items()
            for n, v in st.items()}


def trainer_job(rank, world, output_dir, resume_from, *layout):
    from moviegen.training.diffusion import DiffusionTrainer

    extra = list(layout) + ([f"--checkpoint.resume_from={resume_from}"] if resume_from else [])
    trainer = DiffusionTrainer(trainer_cfg(output_dir, *extra))
    if resume_from is None:
        trainer.fit()
    else:
        assert trainer.step == 3
        trainer.export()
    # The same 8 samples, t and noise on every rank whatever the layout (validate() splits
    # its set over data-parallel ranks, so its noise draws depend on the layout).
    optimizer_digest = _full_optimizer_digest(trainer)
    batch = build_data(trainer.cfg, 0, 1, "val").__next__()
    with torch.no_grad():
        trainer.model.eval()
        inputs = trainer.prepare_batch(batch, "check", 7, drop_text=False)
        loss = trainer.forward_loss(*inputs).item()
    return loss, optimizer_digest


@pytest.mark.timeout(300)
def test_trainer_resharding_tp2_cp2_to_fsdp2_and_one_process(tmp_path):
    """The trainer's own layouts (parallel package): 3 steps on 4 ranks with tp 2 x cp 2,
    then the checkpoint loads on 2 ranks with FSDP 2 and in 1 process."""
    from safetensors.torch import load_file

    saved = run_ranks(trainer_job, 4, str(tmp_path / "a"), None, "--parallel.tp=2",
                      "--parallel.cp=2")
    ckpt = str(tmp_path / "a" / "checkpoints" / "step_00000003")
    fsdp = run_ranks(trainer_job, 2, str(tmp_path / "b"), ckpt, "--parallel.dp_shard=2")
    single = trainer_job(0, 1, str(tmp_path / "c"), ckpt)
    ref_val, ref_opt = saved[0]
    for name, (val, opt) in (("fsdp 2", fsdp[0]), ("1 process", single)):
        assert val == pytest.approx(ref_val, rel=1e-5), f"{name}: loss differs"
        assert opt.keys() == ref_opt.keys()
        for k in ref_opt:  # Adam moments and step counts, gathered: an exact copy
            assert opt[k] == pytest.approx(ref_opt[k], rel=1e-6, abs=1e-12), f"{name}: {k}"
    for weights in ("model.safetensors", "ema.safetensors"):
        ref = load_file(str(tmp_path / "a" / "final" / weights))
        for run in ("b", "c"):
            got = load_file(str(tmp_path / run / "final" / weights))
            assert ref.keys() == got.keys()
            for k in ref:
                assert torch.equal(ref[k], got[k]), f"{run}/{weights}: {k}"

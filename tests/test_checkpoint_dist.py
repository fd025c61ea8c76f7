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

from moviegen.checkpoint import CheckpointManager, latest_checkpoint
from moviegen.config import load_config
from moviegen.ema import EMA
from moviegen.flow import flow_matching_loss, interpolate, sample_t, target_velocity
from moviegen.latent_synthetic import SyntheticLatentDataset
from moviegen.model import build_model, resolve_model_args
from moviegen.text_encoders import TextEncoders
from moviegen.train import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")
BATCH = 8


# --------------------------------------------------------------------------- processes
def _entry(rank, world, init_file, fn, args, queue):
    os.environ["OMP_NUM_THREADS"] = "1"
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


def run_ranks(fn, world, *args, timeout=90):
    """Runs ``fn(rank, world, *args)`` on ``world`` forked processes with a gloo group;
    returns the per-rank results; a hang or an error on any rank fails the test."""
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
    optimizer, _ = build_optimizer(model, cfg, torch.device("cpu"))
    ema = EMA(model, 0.5)
    manager = CheckpointManager(ckpt_root, keep_last=2)
    if save:
        for i in range(2):
            _train_step(model, optimizer, ema, _batch(cfg, encoders, i), dp_rank, dp_size)
        manager.save(2, model, optimizer, {"step": 2}, ema=ema)
    else:
        state = manager.load(latest_checkpoint(ckpt_root), model, optimizer, ema=ema)
        assert state["step"] == 2
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

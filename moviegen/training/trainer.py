"""One training loop for every model: the loop, its bookkeeping and its fault handling.

A model's trainer subclasses ``Trainer`` and supplies what differs (torchtitan's pattern):

    check_config(cfg)          optional: config rules that need the model or data code
                               (run while the command line is parsed)
    check_layout(world)        layout rules that need the model or data (before any
                               process group), returns ParallelDims
    build_model()              meta -> parallelize -> materialise -> init; returns the model
    build_data(split)          a loader with moviegen.data.sources.BatchLoader's interface
    forward_backward(batch)    loss.backward() on one batch; returns (loss, metrics)
    validate()                 {"val_loss": ...} or {"psnr": ...} on the held-out split
    export()                   the inference artefacts at the end (a collective)
    write_samples(log)         optional: samples every train.sample_every steps

Everything else is here, once: device and process group (after the layout is checked),
AdamW + warmup/cosine schedule, tensor parallel's gradient fix-up (the sequence-parallel
parameters' partial gradients summed over TP after every backward, for any model that
moviegen.parallel sharded), global gradient clipping, the non-finite guard (a skipped
update, K in a row stop the run), SIGTERM/SIGUSR1 preemption (every rank finishes its
step, saves and exits 0), EMA, checkpoints of Stateful objects with exact resume (same
command, same output_dir), metrics.jsonl + TensorBoard + progress bar, profiler traces.

Host synchronisation: one per step, a 2-element all-reduce (non-finite? stop signal?)
that every rank must agree on before the optimizer step; losses stay on the device and
are read only every ``train.log_every`` steps.
"""
from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist

from moviegen.training.checkpoint import (CheckpointManager, ModelState, OptimizerState,
                                          RNGState, SchedulerState)
from moviegen.training.distributed import (autocast_context, global_rank, init_distributed,
                                           pick_device, world_size)
from moviegen.training.ema import EMA
from moviegen.training.fault import NonFiniteGuard, StopRequest, agree_on_flags
from moviegen.training.metrics import RunLog
from moviegen.training.optim import build_optimizer
from moviegen.parallel.parallelize import clip_grad_norm_
from moviegen.parallel.tensor_parallel import finish_sequence_parallel_grads

logger = logging.getLogger("moviegen.training")


class TrainState:
    """The step counter, saved per rank with the checkpoint."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class Trainer:
    """Holds the model, optimiser and data of one run; ``fit()`` runs it to train.steps."""

    label = "train"
    val_key = "val_loss"  # the headline validation number (history and the summary line)

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.dims = self.check_layout(world_size())  # no process group exists yet
        self.mesh = init_distributed(self.dims, self.device)
        self.rank = global_rank() if self.mesh is not None else 0
        self.world_size = self.dims.world_size
        self.is_main = self.rank == 0
        self.dp_rank = self.mesh["dp"].get_local_rank() if self.mesh is not None else 0
        self.dp_size = self.dims.dp
        self.autocast = lambda: autocast_context(cfg.train.mixed_precision, self.device)
        torch.manual_seed(cfg.train.seed)
        self.model = self.build_model()
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.train, self.device)
        self.train_data = self.build_data("train")
        self.val_data = self.build_data("val")
        # a subclass's per-rank randomness (the TAE's augmentation): shared by a CP x TP
        # group, distinct per data-parallel rank (the transformer's is per sample instead)
        self.gen = torch.Generator(device="cpu").manual_seed(
            cfg.train.seed + 17 + 7919 * self.dp_rank)
        self.state = TrainState()
        c = cfg.checkpoint
        self.ema = EMA(self.model, c.ema_decay) if c.ema_decay > 0 else None
        self.nonfinite = NonFiniteGuard(c.max_consecutive_nonfinite)
        self.ckpt = CheckpointManager(os.path.join(cfg.output_dir, "checkpoints"),
                                      keep_last=c.keep_last, async_save=c.async_save,
                                      every_steps=c.every_steps)
        self.register_states(self.ckpt)
        if self.is_main:
            logger.info("layout: %s on %s", self.dims.describe(), self.device.type)
        self._warn_shared_store()
        self.resumed_from = self.ckpt.resume(c.resume_from, enabled=c.resume)
        if self.resumed_from and self.is_main:
            logger.info("resumed from %s at step %d", self.resumed_from, self.step)

    # -- what a model's trainer supplies ------------------------------------
    @staticmethod
    def check_config(cfg) -> None:
        """Config rules that need the model's or the data's code (moviegen.config imports
        neither); moviegen.training.launch runs them while parsing, so an error names
        where the value came from."""

    def check_layout(self, world: int):
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def build_data(self, split: str):
        raise NotImplementedError

    def forward_backward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Runs backward on one batch; returns (detached loss, metrics). Tensor metrics are
        averaged over the log window; ``tokens``/``flops`` (host numbers, this rank's
        batch) feed throughput and MFU."""
        raise NotImplementedError

    def validate(self) -> dict:
        raise NotImplementedError

    def export(self) -> None:
        raise NotImplementedError

    def write_samples(self, log: RunLog) -> None:
        """Every train.sample_every steps, on every rank (a sharded forward is a
        collective); nothing for a model without a sampler."""

    def after_step(self, batch: dict, skipped: bool) -> dict:
        """After the optimizer step (e.g. a discriminator's own update); returns more
        metrics for the step."""
        return {}

    def skipped_files(self) -> int:
        """Inputs skipped so far because they could not be read (metrics.jsonl)."""
        return int(self.train_data.stats().get("skipped_files", 0))

    def register_states(self, ckpt: CheckpointManager) -> None:
        """Everything a checkpoint holds; a subclass adds its own (``super()`` first)."""
        ckpt.register("model", ModelState(self.model))
        ckpt.register("optim", OptimizerState(self.model, self.optimizer))
        if self.ema is not None:
            ckpt.register("ema", self.ema, on_missing=lambda: self.ema.reset(self.model))
        ckpt.register_rank("train", self.state)
        ckpt.register_rank("scheduler", SchedulerState(self.scheduler))
        ckpt.register_rank("data", self.train_data)
        ckpt.register_rank("nonfinite", self.nonfinite)
        ckpt.register_rank("rng", RNGState({"train": self.gen}), same_layout_only=True)

    # -- the loop -----------------------------------------------------------
    @property
    def step(self) -> int:
        return self.state.step

    def fit(self) -> dict:
        """Trains to train.steps (or until a preemption signal), then saves and exports."""
        cfg = self.cfg
        history = {self.val_key: [], "preempted": False, "resumed_from": self.resumed_from}
        if self.step >= cfg.train.steps:  # nothing to train (train.steps=0 writes nothing)
            return history
        with StopRequest() as stop, RunLog(self) as log:
            if self.step == 0 and cfg.train.steps > 0:
                self._validate(log, history)
            while self.step < cfg.train.steps:
                t_start = time.perf_counter()
                log.profiler.start(self.step + 1)
                batch = next(self.train_data)
                t_data = time.perf_counter()
                out = self.train_step(batch, stop.requested)
                self.state.step += 1
                self.ckpt.poll()
                log.profiler.stop(self.step)
                self.nonfinite.record(self.step, out["skipped"])
                log.record(self.step, out, t_data - t_start, time.perf_counter() - t_start)
                if out["stop"]:
                    self._preempt()
                    history["preempted"] = True
                    break
                self.ckpt.save_if_due(self.step, cfg.train.steps)
                if self.step % cfg.train.val_every == 0 or self.step == cfg.train.steps:
                    self._validate(log, history)
                if cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
                    self.write_samples(log)
        if not history["preempted"]:
            self.ckpt.save_final(self.step)
            self.export()
            if self.world_size > 1:
                dist.barrier()
        return history

    def train_step(self, batch: dict, stop_requested: bool = False) -> dict:
        self.model.train()
        t0 = time.perf_counter()
        loss, metrics = self.forward_backward(batch)
        # TP: each rank holds a partial sum for the parameters used on its sequence shard
        finish_sequence_parallel_grads(self.model)
        t1 = time.perf_counter()
        # the true global norm over plain tensors and DTensors on every mesh
        grad_norm = clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                    self.cfg.train.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.detach()
        # The one host sync of a step: skip on any rank's non-finite value, stop on any
        # rank's signal (all ranks must take the same branch).
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        skipped, stop = agree_on_flags(torch.stack([bad, torch.tensor(stop_requested,
                                                                       device=bad.device)]))
        if not skipped:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        metrics.update(self.after_step(batch, skipped))
        return {"loss": loss, "grad_norm": grad_norm, "metrics": metrics, "skipped": skipped,
                "stop": stop, "fwd_bwd_s": t1 - t0, "optim_s": time.perf_counter() - t1}

    def _validate(self, log: RunLog, history: dict) -> None:
        result = self.validate()
        history[self.val_key].append((self.step, result[self.val_key]))
        log.validation(self.step, result)

    def _preempt(self) -> None:
        self.ckpt.save(self.step)
        self.ckpt.wait()
        if self.is_main:
            with open(os.path.join(self.cfg.output_dir, "preempted"), "w") as f:
                f.write(f"{self.step}\n")
            logger.info("preempted: checkpoint at step %d saved, exiting", self.step)

    def _warn_shared_store(self) -> None:
        if (self.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0):
            logger.warning("torchrun restarts share one TCPStore here and restarted workers "
                           "can fail to connect; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                           "(launch/torchrun.sh and the sbatch script do)")

    def close(self) -> None:
        """Stops loaders and, when this trainer started it, the process group."""
        for loader in (self.train_data, self.val_data):
            if hasattr(loader, "close"):
                loader.close()
        self.ckpt.close()
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

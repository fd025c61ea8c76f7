"""Train the Movie Gen transformer with flow matching.

Single process (the tiny CPU demo):
    python -m moviegen.train --config launch/configs/tiny.yaml
    python -m moviegen.train --config launch/configs/tiny.yaml --train.steps=60 --output_dir=runs/x
All fields and their meaning:
    python -m moviegen.train --help

Several processes (any valid layout; NCCL on GPUs, gloo on CPU):
    torchrun --nproc_per_node=8 -m moviegen.train --config launch/configs/tiny.yaml \
        --parallel.dp_shard=2 --parallel.cp=2 --parallel.tp=2
The layout is checked against the world size, the model and the data shapes before the
process group starts (the same error on every rank), then logged by rank 0. Ranks of one
CP x TP group read the same samples; only data-parallel ranks differ.

Outputs in ``output_dir``: metrics.jsonl (one row per logged step, design.md's fields),
tensorboard/, checkpoints/ (``step_N`` directories and a ``latest`` pointer), ``final/``
(consolidated weights + config, read by ``python -m moviegen.sample``).

Resume and preemption: running again with the same ``output_dir`` resumes from
``checkpoints/latest`` and stops at ``train.steps``. SIGTERM or SIGUSR1 makes every rank
finish its step, save a checkpoint, write ``<output_dir>/preempted`` and exit 0.
A non-finite loss or gradient norm skips that update; ``checkpoint.max_consecutive_nonfinite``
in a row stop the run (exit 1) naming the steps.

Host synchronisation: one per step, a 2-element all-reduce (non-finite? stop signal?)
that every rank must agree on before the optimizer step; losses and norms stay on the
device and are read only every ``train.log_every`` steps.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time

import torch

from moviegen.checkpoint import (CheckpointManager, capture_rng_state, full_model_state_dict,
                                 latest_checkpoint, restore_rng_state)
from moviegen.config import ConfigError, JobConfig, load_config, parse_cli, to_dict
from moviegen.ema import EMA
from moviegen.export import export_inference
from moviegen.fault import NonFiniteError, NonFiniteGuard, StopRequest, agree_on_flags
from moviegen.flow import flow_matching_loss, interpolate, sample_t, target_velocity
from moviegen.flops import device_peak_tflops, flops_per_sample
from moviegen.data_sources import build_data, build_pixel_encoder, num_batches
from moviegen.metrics import MetricsWriter, ProgressBar, StepProfiler, max_memory_gb
from moviegen.model import MovieGenTransformer, adapt_stage_state_dict, resolve_model_args
from moviegen.text_encoders import TextEncoders, drop_captions
from parallel.parallel_dims import validate_layout
from parallel.parallelize import (Parallelized, clip_grad_norm_, load_full_state_dict,
                                  parallelize)

logger = logging.getLogger("moviegen.train")


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_context(cfg: JobConfig, device: torch.device):
    mode = cfg.train.mixed_precision
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_lambda(cfg: JobConfig):
    t = cfg.train

    def fn(step: int) -> float:
        if t.warmup_steps > 0 and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "constant":
            return 1.0
        span = max(t.steps - t.warmup_steps, 1)
        progress = min(max(step - t.warmup_steps, 0) / span, 1.0)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_optimizer(model: torch.nn.Module, cfg: JobConfig, device: torch.device):
    # One group per (weight decay, device mesh): sharded parameters live on different
    # meshes (FSDP only, or FSDP x TP), and a fused/foreach step works within one mesh.
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # norms, position tables and modulation tables are not decayed
        decays = not (p.ndim < 2 or "pos_embed" in name or "modulation" in name)
        mesh = getattr(p, "device_mesh", None)
        key = (decays, None if mesh is None else (tuple(mesh.mesh_dim_names or ()),
                                                  tuple(mesh.mesh.flatten().tolist())))
        groups.setdefault(key, {"params": [], "weight_decay":
                                cfg.train.weight_decay if decays else 0.0})["params"].append(p)
    groups = list(groups.values())
    kwargs = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    if device.type == "cuda":
        kwargs["fused"] = True
    opt = torch.optim.AdamW(groups, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    return opt, sched


def init_distributed(cfg: JobConfig, device: torch.device):
    """(ParallelDims, meshes or None). Validates the layout BEFORE the process group exists
    (a pure function of config and WORLD_SIZE: every rank raises the same ConfigError)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dims = validate_layout(cfg, world_size)
    if world_size == 1:
        return dims, None
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dims, dims.build_mesh(device.type)


class Trainer:
    """Holds the model, optimiser and data of one run; ``fit()`` runs it to train.steps."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.dims, mesh = init_distributed(cfg, self.device)
        self.rank = int(os.environ.get("RANK", "0")) if mesh is not None else 0
        self.world_size = self.dims.world_size
        torch.manual_seed(cfg.train.seed)

        self.text_encoders = TextEncoders(cfg.text).to(self.device)
        self.model_args = resolve_model_args(cfg.model, self.text_encoders.out_dims)
        self.dims.validate_model(self.model_args)
        # meta -> parallelize (TP, CP, AC, compile, FSDP) -> materialise -> init
        with torch.device("meta"):
            self.model: MovieGenTransformer = MovieGenTransformer(self.model_args)
        self.parallel: Parallelized = parallelize(self.model, self.dims, mesh, cfg.parallel,
                                                  self.device.type)
        self.model.to_empty(device=self.device)
        self.model.init_weights()
        self.model.set_kernel_backend(cfg.model.kernels, self.device)
        self.dp_rank, self.dp_size = self.parallel.dp_rank, self.dims.dp
        if cfg.train.init_from:
            self._init_from(cfg.train.init_from)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.device)
        self.pixel_encoder = build_pixel_encoder(cfg, self.device)  # data.kind=video only
        self.train_data = build_data(cfg, self.dp_rank, self.dp_size, "train")
        self.val_data = build_data(cfg, self.dp_rank, self.dp_size, "val")
        self._val_start = self.val_data.state_dict()  # every validation replays this epoch
        self.step = 0
        self._cost_cache: dict = {}
        self.last_batch_shape: tuple | None = None  # set by train_step (host metadata)
        # t, noise and caption dropout: shared by a CP x TP group, distinct per DP rank
        self.gen = torch.Generator(device="cpu").manual_seed(
            cfg.train.seed + 17 + 7919 * self.dp_rank)
        if self.rank == 0:
            logger.info("layout: %s on %s", self.dims.describe(), self.device.type)
            if mesh is not None:
                logger.info("mesh: %s", mesh.root)
        self.stop: StopRequest | None = None
        self._setup_checkpointing()

    # -- checkpoints --------------------------------------------------------
    def _setup_checkpointing(self) -> None:
        c = self.cfg.checkpoint
        self.ema = EMA(self.model, c.ema_decay) if c.ema_decay > 0 else None
        self.nonfinite = NonFiniteGuard(c.max_consecutive_nonfinite)
        self.ckpt = CheckpointManager(os.path.join(self.cfg.output_dir, "checkpoints"),
                                      keep_last=c.keep_last, async_save=c.async_save)
        self.resumed_from = None
        if (self.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0):
            logger.warning("torchrun restarts share one TCPStore here and restarted workers "
                           "can fail to connect; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                           "(launch/torchrun.sh and the sbatch script do)")
        path = c.resume_from or (latest_checkpoint(self.ckpt.root) if c.resume else None)
        if path is not None:
            self.load_checkpoint(path)

    def rank_state(self) -> dict:
        """What this rank needs, besides weights and optimizer, to continue exactly."""
        return {"step": self.step, "scheduler": self.scheduler.state_dict(),
                "data": self.train_data.state_dict(),
                "rng": capture_rng_state({"train": self.gen}),
                "nonfinite": self.nonfinite.state_dict(),
                "dp_rank": self.dp_rank, "dp_size": self.dp_size}

    def save_checkpoint(self) -> str:
        return self.ckpt.save(self.step, self.model, self.optimizer, self.rank_state(),
                              ema=self.ema, meta={"parallel": to_dict(self.cfg.parallel),
                                                  "model": self.cfg.model.name})

    def load_checkpoint(self, path: str) -> None:
        state = self.ckpt.load(path, self.model, self.optimizer, ema=self.ema)
        self.step = int(state["step"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.nonfinite.load_state_dict(state["nonfinite"])
        same_layout = (not state["layout_changed"] and state["dp_rank"] == self.dp_rank
                       and state["dp_size"] == self.dp_size)
        self.train_data.load_state_dict(state["data"])
        if same_layout:
            restore_rng_state(state["rng"], {"train": self.gen})
        else:  # another layout: the weights are exact, the noise and data streams restart
            self.gen.manual_seed(self.cfg.train.seed + 17 + 1_000_003 * self.step + self.dp_rank)
            if self.rank == 0:
                logger.warning("%s was written with another layout: weights, optimizer and "
                               "step are restored; noise and data order restart", path)
        self.resumed_from = path
        if self.rank == 0:
            logger.info("resumed from %s at step %d", path, self.step)

    def _init_from(self, directory: str) -> None:
        from safetensors.torch import load_file

        state = load_file(os.path.join(directory, "model.safetensors"), device=str(self.device))
        state = adapt_stage_state_dict(state, self.model, self.cfg.train.position_resize)
        load_full_state_dict(self.model, state)
        logger.info("initialised from %s (position tables -> %s)", directory,
                    (self.model_args.max_t, self.model_args.max_h, self.model_args.max_w))

    # -- one step -----------------------------------------------------------
    def prepare_batch(self, batch: dict, generator: torch.Generator, drop_text: bool):
        """Latents, noise, t and text embeddings for one batch (no graph, no host sync)."""
        if "latents" in batch:
            x1 = batch["latents"].to(self.device, non_blocking=True)
        else:  # pixels from video files: encode with the frozen TAE (or random patches)
            x1 = self.pixel_encoder.encode(batch["video"].to(self.device, non_blocking=True))
        if "text_embeds" in batch:  # precomputed by python -m moviegen.precompute
            embeds = {k: v.to(self.device) for k, v in batch["text_embeds"].items()}
            masks = {k: v.to(self.device) for k, v in batch["text_masks"].items()}
        else:
            embeds, masks = self.text_encoders.encode(batch["captions"])
        if drop_text:
            masks = drop_captions(masks, self.cfg.text.caption_dropout, generator)
        t = sample_t(x1.shape[0], generator=generator).to(self.device)
        x0 = torch.randn(x1.shape, generator=generator).to(self.device)
        sigma = self.cfg.flow.sigma_min
        return interpolate(x0, x1, t, sigma), t, target_velocity(x0, x1, sigma), embeds, masks

    def forward_loss(self, x_t, t, target, embeds, masks):
        with autocast_context(self.cfg, self.device):
            pred = self.model(x_t, t, embeds, masks)
        sum_sq, count = flow_matching_loss(pred, target)
        return sum_sq / count

    def train_step(self, batch: dict) -> dict:
        self.model.train()
        inputs = self.prepare_batch(batch, self.gen, drop_text=True)
        x_t = inputs[0]
        self.last_batch_shape = tuple(x_t.shape)  # host metadata: no sync
        t0 = time.perf_counter()
        loss = self.forward_loss(*inputs)
        loss.backward()
        self.parallel.finish_grads()  # TP: sum sequence-parallel partial grads
        t1 = time.perf_counter()
        # the true global norm over plain tensors and DTensors on every mesh
        grad_norm = clip_grad_norm_(list(self.model.parameters()), self.cfg.train.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss, grad_norm = loss.detach(), grad_norm.detach()
        # The one host sync of a step: skip on any rank's non-finite value, stop on any
        # rank's signal (all ranks must take the same branch).
        stop_flag = self.stop.requested if self.stop is not None else False
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        skipped, stop = agree_on_flags(torch.stack([bad, torch.tensor(stop_flag,
                                                                       device=bad.device)]))
        if not skipped:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        t2 = time.perf_counter()
        return {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "stop": stop,
                "fwd_bwd_s": t1 - t0, "optim_s": t2 - t1}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean velocity MSE over the held-out set, with fixed t and noise every time."""
        self.model.eval()
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 4242)
        data = self.val_data
        data.load_state_dict(self._val_start)
        total, n = torch.zeros((), device=self.device), 0
        for _ in range(num_batches(data)):
            inputs = self.prepare_batch(next(data), gen, drop_text=False)
            total += self.forward_loss(*inputs)
            n += 1
        return self.parallel.mean_over_dp(total / max(n, 1)).item()

    def sample_cost(self, latent_shape_BCTHW) -> tuple[int, float]:
        """(video tokens, model FLOPs) of one sample of this latent shape (moviegen.flops)."""
        key = tuple(latent_shape_BCTHW[1:])
        if key not in self._cost_cache:
            seq_len = math.prod(self.model.patch_grid(key))
            text_len = sum(e.max_length for e in self.cfg.text.encoders)
            self._cost_cache[key] = (seq_len, flops_per_sample(self.model_args, seq_len,
                                                               text_len)["total"])
        return self._cost_cache[key]

    # -- loop ---------------------------------------------------------------
    def fit(self) -> dict:
        """Trains to train.steps (or until a preemption signal), then saves and exports."""
        self.stop = StopRequest()
        try:
            return self._fit()
        finally:
            self.stop.close()
            self.stop = None

    def _fit(self) -> dict:
        cfg = self.cfg
        is_main = self.rank == 0
        marker = os.path.join(cfg.output_dir, "preempted")
        if is_main and os.path.exists(marker):
            os.remove(marker)
        writer = MetricsWriter(cfg.output_dir, enabled=is_main,
                               tensorboard=cfg.metrics.tensorboard,
                               wandb_project=cfg.metrics.wandb_project if cfg.metrics.wandb
                               else None, run_config=to_dict(cfg),
                               resume_step=self.step if self.resumed_from else None)
        profiler = StepProfiler(cfg.metrics.profile_steps, cfg.output_dir, self.rank,
                                self.device)
        peak, peak_name = device_peak_tflops(
            torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None)
        if is_main:
            logger.info("model %s: %.3fM parameters%s", cfg.model.name,
                        sum(p.numel() for p in self.model.parameters()) / 1e6,
                        f", MFU against {peak_name}" if peak_name else "")
        bar = ProgressBar(cfg.train.steps, self.step, enabled=is_main and cfg.train.progress_bar)
        history = {"val_loss": [], "preempted": False, "resumed_from": self.resumed_from}
        last_saved = self.step if self.resumed_from else None
        if self.step == 0 and cfg.train.steps > 0:
            v = self.validate()
            history["val_loss"].append((0, v))
            writer.write({"step": 0, "val_loss": v})
        window = {"loss": [], "grad_norm": [], "time": 0.0, "wait": 0.0, "fwd_bwd": 0.0,
                  "optim": 0.0, "n": 0, "tokens": 0.0, "flops": 0.0}
        while self.step < cfg.train.steps:
            t_start = time.perf_counter()
            profiler.start(self.step + 1)
            batch = next(self.train_data)
            t_data = time.perf_counter()
            out = self.train_step(batch)
            self.step += 1
            self.ckpt.poll()
            profiler.stop(self.step)
            self.nonfinite.record(self.step, out["skipped"])
            if not out["skipped"]:  # a skipped step's NaN would poison the window mean
                window["loss"].append(out["loss"])
                window["grad_norm"].append(out["grad_norm"])
            window["wait"] += t_data - t_start
            window["fwd_bwd"] += out["fwd_bwd_s"]
            window["optim"] += out["optim_s"]
            window["time"] += time.perf_counter() - t_start
            window["n"] += 1
            tokens, flops = self.sample_cost(self.last_batch_shape)
            window["tokens"] += tokens * self.last_batch_shape[0]
            window["flops"] += flops * self.last_batch_shape[0]
            if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps \
                    or out["stop"]:
                n = window["n"]
                losses = window["loss"] or [torch.tensor(float("nan"))]
                loss = self.parallel.mean_over_dp(  # the one sync per log
                    torch.stack(losses).mean()).item()
                step_time = window["time"] / n
                # every DP rank runs a batch like this one; per device = / world size
                tflops = window["flops"] * self.dp_size / window["time"] / self.world_size / 1e12
                row = {"step": self.step, "loss": loss,
                       "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": torch.stack(window["grad_norm"] or
                                                [torch.tensor(float("nan"))]).mean().item(),
                       "step_time_s": step_time,
                       "tokens_per_s": window["tokens"] * self.dp_size / window["time"]
                       / self.world_size,
                       "tflops_per_device": tflops,
                       "mfu": tflops / peak if peak else None,
                       "max_mem_gb": max_memory_gb(self.device),
                       "data_wait_s": window["wait"] / n,
                       "fwd_bwd_s": window["fwd_bwd"] / n,
                       "optimizer_s": window["optim"] / n,
                       "skipped_steps": self.nonfinite.skipped_total,
                       "skipped_files": self._skipped_files()}
                writer.write(row)
                bar.update(n, loss=f"{loss:.4f}")
                window = {k: ([] if isinstance(v, list) else 0.0 if isinstance(v, float) else 0)
                          for k, v in window.items()}
            if out["stop"]:
                self.save_checkpoint()
                self.ckpt.wait()
                if is_main:
                    with open(marker, "w") as f:
                        f.write(f"{self.step}\n")
                    logger.info("preempted: checkpoint at step %d saved, exiting", self.step)
                history["preempted"] = True
                break
            every = cfg.checkpoint.every_steps
            if every > 0 and self.step % every == 0 and self.step < cfg.train.steps:
                self.save_checkpoint()
                last_saved = self.step
            if self.step % cfg.train.val_every == 0 or self.step == cfg.train.steps:
                v = self.validate()
                history["val_loss"].append((self.step, v))
                writer.write({"step": self.step, "val_loss": v})
                if is_main:
                    logger.info("step %d: val_loss %.4f", self.step, v)
        bar.close()
        writer.close()
        if history["preempted"]:
            return history
        if last_saved != self.step:
            self.save_checkpoint()
        self.ckpt.wait()
        self.export()
        if self.world_size > 1:
            torch.distributed.barrier()
        return history

    def export(self) -> None:
        """Consolidated weights (and EMA) in <output_dir>/final; collective on all ranks."""
        is_main = self.rank == 0
        # Gathered one tensor at a time into rank 0's CPU memory (at 30B a full copy on
        # every GPU would not fit); a collective when sharded.
        state = full_model_state_dict(self.model)
        ema_state = self.ema.full_state_dict(self.model, is_main) if self.ema else None
        if is_main:
            export_inference(os.path.join(self.cfg.output_dir, "final"), state, self.cfg,
                             self.text_encoders, ema_state_dict=ema_state,
                             latent_shape=self.last_batch_shape[1:] if self.last_batch_shape
                             else None)

    def _skipped_files(self) -> int:
        stats = getattr(self.train_data, "stats", None)
        return int(stats().get("skipped_files", 0)) if stats else 0


def main(argv: list[str] | None = None) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        path, overrides = parse_cli(argv, __doc__)
        cfg = load_config(path, overrides)
        trainer = Trainer(cfg)  # checks the layout before any process group exists
    except ConfigError as e:  # before anything starts
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    try:
        history = trainer.fit()
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0 and history["preempted"]:
        print(f"preempted at step {trainer.step}: checkpoint saved; run the same command "
              f"again to resume")
    elif rank == 0 and len(history["val_loss"]) == 1:
        (s1, v1), = history["val_loss"]
        print(f"validation loss: step {s1} {v1:.4f} (resumed from {history['resumed_from']})")
    elif rank == 0 and history["val_loss"]:
        (s0, v0), (s1, v1) = history["val_loss"][0], history["val_loss"][-1]
        print(f"validation loss: step {s0} {v0:.4f} -> step {s1} {v1:.4f}")
    elif rank == 0:
        print(f"already at train.steps={cfg.train.steps}: nothing to train")
    return history


if __name__ == "__main__":
    main()

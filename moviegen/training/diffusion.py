"""The flow-matching transformer's trainer: its model, data, step and validation.

The loop, checkpoints, preemption, metrics and the non-finite guard are ``Trainer``'s;
this file says only what is particular to the Movie Gen transformer:
  model      text encoders (frozen) + MovieGenTransformer built on the meta device, then
             parallel.parallelize (TP, CP, AC, compile, FSDP), materialised and initialised
  data       moviegen.data.sources.build_data (synthetic latents, video files, precomputed)
  step       t ~ logit-normal, x_t = t x1 + (1 - (1 - s) t) x0, MSE to the velocity over
             the global batch; t, noise and caption dropout per sample from (seed, step,
             index in the global batch), never from the rank; with train.tasks, each
             sample's task, given frames and conditioning noise the same way
             (moviegen.conditioning), the loss over the frames it must generate
  validate   the same loss on the held-out split with fixed t and noise
  export     consolidated weights (+ EMA) in <output_dir>/final for moviegen.sample
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist

from moviegen.conditioning import (image_latents, normalized_tasks, training_condition,
                                   uses_conditioning)
from moviegen.data.sources import (build_data, build_pixel_encoder, latent_grids,
                                   per_rank_batch)
from moviegen.flow import (flow_matching_loss, interpolate, per_sample_draws, sample_seed,
                          target_velocity)
from moviegen.models.flops import flops_per_sample
from moviegen.models.text_encoders import TextEncoders, drop_captions
from moviegen.models.transformer import (MovieGenTransformer, adapt_stage_state_dict,
                                         init_unit, resolve_model_args)
from moviegen.training.distributed import check_layout, mean_over_dp
from moviegen.training.export import export_inference
from moviegen.training.optim import freeze_all_but
from moviegen.training.trainer import Trainer
from moviegen.parallel.parallelize import parallelize
from moviegen.parallel.state import (gather_full_state_dict, init_shards, load_full_state_dict,
                            model_tensors)

logger = logging.getLogger("moviegen.training")


def check_job(cfg) -> None:
    """The transformer job's config rules that need the data and model code (moviegen.config
    imports neither): train.tasks' names, every data shape (synthetic, the video buckets,
    a precomputed index) against the position tables and the attention windows, the tasks
    against those shapes, and train.trainable against the model's parameter names.
    ``python -m moviegen.train`` runs them while parsing, so an error names its source,
    before any process group or output exists."""
    from moviegen.conditioning import TASKS, check_tasks
    from moviegen.config import check
    from moviegen.training.optim import check_trainable

    for name in cfg.train.tasks:
        check(name in TASKS, "train.tasks", f"unknown task '{name}' (choose from "
              f"{', '.join(TASKS)})")
    grids = latent_grids(cfg)
    for name, T, H, W in grids:
        cfg.model.patch_grid_fits(name, T, H, W)
    check_tasks(cfg, grids)
    check_trainable(cfg)


def job_layout(cfg, world: int):
    """ParallelDims of a transformer job on ``world`` ranks: every layout rule (world size,
    heads and FFN width against tp, each data shape's tokens against cp x tp, the global
    batch against the data-parallel degree), checked as
    a ConfigError without any process group."""
    m = resolve_model_args(cfg.model)
    dims = check_layout(cfg.parallel, world, m.n_heads, m.ffn_dim, latent_grids(cfg),
                        cfg.model.patch_size)
    per_rank_batch(cfg.data, dims.dp)  # the global batch splits over the DP ranks
    return dims


class DiffusionTrainer(Trainer):
    label = "train"
    val_key = "val_loss"
    check_config = staticmethod(check_job)

    def check_layout(self, world: int):
        return job_layout(self.cfg, world)

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        self.text_encoders = TextEncoders(cfg.text).to(self.device)
        self.model_args = resolve_model_args(cfg.model, self.text_encoders.out_dims)
        # meta -> parallelize (TP, CP, AC, compile, FSDP) -> materialise -> init
        with torch.device("meta"):
            model = MovieGenTransformer(self.model_args)
        # frozen before sharding: FSDP2 then reduce-scatters no gradient for them
        trainable = freeze_all_but(model, cfg.train.trainable)
        if cfg.train.trainable and self.is_main:
            n_all = sum(p.numel() for p in model.parameters())
            n_train = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
            logger.info("train.trainable: %d of %d parameters train (%d tensors)",
                        n_train, n_all, len(trainable))
        parallelize(model, self.dims, self.mesh, cfg.parallel, self.device.type)
        model.to_empty(device=self.device)
        # whole tensors from (train.seed, unit name), then this rank's shard: the same
        # initial weights on every layout (init_weights after sharding would draw each
        # shard from its own rank's generator)
        with torch.device("meta"):
            plain = MovieGenTransformer(self.model_args)
        init_shards(model, plain.init_units(),
                    lambda prefix, unit: init_unit(prefix, unit, cfg.train.seed))
        model.set_kernel_backend(cfg.model.kernels, self.device)
        if cfg.train.init_from:
            self._init_from(model, cfg.train.init_from)
        self.pixel_encoder = build_pixel_encoder(cfg, self.device)  # data.kind=video only
        self.last_batch_shape: tuple | None = None  # host metadata of the last batch
        self._cost_cache: dict = {}
        return model

    def _init_from(self, model, directory: str) -> None:
        from safetensors.torch import load_file

        state = load_file(os.path.join(directory, "model.safetensors"), device=str(self.device))
        state = adapt_stage_state_dict(state, model, self.cfg.train.position_resize)
        load_full_state_dict(model, state)
        logger.info("initialised from %s (position tables -> %s)", directory,
                    (self.model_args.max_t, self.model_args.max_h, self.model_args.max_w))

    def build_data(self, split: str):
        loader = build_data(self.cfg, self.dp_rank, self.dp_size, split)
        if split == "val":
            self._val_start = loader.state_dict()  # every validation replays this epoch
        return loader

    # -- one step -----------------------------------------------------------
    def prepare_batch(self, batch: dict, stream: str, step: int, drop_text: bool):
        """Latents, noise, t and text embeddings for one batch (no graph, no host sync).

        t, noise and caption dropout of a sample come from (train.seed, ``stream``,
        ``step``, its index in the global batch): the same numbers on any layout."""
        pixels = None
        if "latents" in batch:
            x1 = batch["latents"].to(self.device, non_blocking=True)
        else:  # pixels from video files: encode with the frozen TAE (or random patches)
            pixels = batch["video"].to(self.device, non_blocking=True)
            x1 = self.pixel_encoder.encode(pixels)
        if "text_embeds" in batch:  # precomputed by python -m moviegen.precompute
            embeds = {k: v.to(self.device) for k, v in batch["text_embeds"].items()}
            masks = {k: v.to(self.device) for k, v in batch["text_masks"].items()}
        else:
            embeds, masks = self.text_encoders.encode(batch["captions"])
        B = x1.shape[0]
        index = batch.get("index")
        if index is None:  # a source without global positions: rank-major placement
            index = torch.arange(self.dp_rank * B, (self.dp_rank + 1) * B)
        seeds = [sample_seed(self.cfg.train.seed, stream, step, int(i)) for i in index]
        t, x0, keep = per_sample_draws(tuple(x1.shape), seeds,
                                       self.cfg.text.caption_dropout if drop_text else 0.0)
        if drop_text:
            masks = drop_captions(masks, keep)
        t, x0 = t.to(self.device), x0.to(device=self.device, dtype=x1.dtype)
        sigma = self.cfg.flow.sigma_min
        cond = loss_mask = None
        if uses_conditioning(self.cfg.train.tasks):  # task, mask, noise level per sample
            encode = self.pixel_encoder.encode if pixels is not None else None
            first = batch.get("first_frame_latents")  # precomputed (moviegen.precompute)
            if first is not None:
                first = first.to(self.device)
            elif pixels is not None and "i2v" in normalized_tasks(self.cfg.train.tasks):
                first = image_latents(pixels, encode)
            cond, loss_mask, _ = training_condition(
                x1, seeds, self.cfg.train, pixels, encode,
                self.cfg.data.video.spatial_compression, first)
            loss_mask = loss_mask[:, None, :, None, None]  # (B, 1, T, 1, 1)
        return (interpolate(x0, x1, t, sigma), t, target_velocity(x0, x1, sigma), embeds,
                masks, cond, loss_mask)

    def forward_sums(self, x_t, t, target, embeds, masks, cond=None, loss_mask=None):
        """(sum of squared errors, element count) of this rank's samples; with conditioning
        tasks only the frames each sample must generate count (``loss_mask``)."""
        with self.autocast():
            pred = self.model(x_t, t, embeds, masks, cond)
        return flow_matching_loss(pred, target, loss_mask)

    def forward_loss(self, *inputs):
        sum_sq, count = self.forward_sums(*inputs)
        return sum_sq / count

    def forward_backward(self, batch: dict):
        inputs = self.prepare_batch(batch, "train", self.step, drop_text=True)
        self.last_batch_shape = tuple(inputs[0].shape)
        sum_sq, count = self.forward_sums(*inputs)
        # The loss is the mean over every element of the global batch: one all-reduce of
        # (sum, count) over the data-parallel ranks (CP/TP peers hold the same sums).
        totals = torch.stack([sum_sq.detach(), count.to(sum_sq.dtype)])
        if self.dp_size > 1:
            dist.all_reduce(totals, group=self.mesh["dp"].get_group())
        # FSDP divides the summed gradients by the data-parallel degree, so each rank's
        # part is scaled by dp: the result is d(global sum / global count).
        (sum_sq * (self.dp_size / totals[1])).backward()
        tokens, flops = self.sample_cost(self.last_batch_shape)
        B = self.last_batch_shape[0]
        return totals[0] / totals[1], {"tokens": tokens * B, "flops": flops * B}

    def write_samples(self, log) -> None:
        from moviegen.training.samples import write_samples

        write_samples(self, log.writer, self.step)

    def sample_cost(self, latent_shape_BCTHW) -> tuple[int, float]:
        """(video tokens, model FLOPs) of one sample of this latent shape (moviegen.models.flops)."""
        key = tuple(latent_shape_BCTHW[1:])
        if key not in self._cost_cache:
            grid = self.model.patch_grid(key)
            seq_len = math.prod(grid)
            text_len = sum(e.max_length for e in self.cfg.text.encoders)
            self._cost_cache[key] = (seq_len, flops_per_sample(self.model_args, seq_len,
                                                               text_len, grid)["total"])
        return self._cost_cache[key]

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean velocity MSE over the held-out set, with fixed t and noise every time."""
        self.model.eval()
        data = self.val_data
        data.load_state_dict(self._val_start)
        total, n = torch.zeros((), device=self.device), 0
        for j in range(data.batches_per_epoch()):
            inputs = self.prepare_batch(next(data), "val", j, drop_text=False)
            total += self.forward_loss(*inputs)
            n += 1
        return {"val_loss": mean_over_dp(total / max(n, 1), self.mesh).item()}

    def export(self) -> None:
        """Consolidated weights (and EMA) in <output_dir>/final; collective on all ranks."""
        state = gather_full_state_dict(model_tensors(self.model), self.is_main)
        ema_state = self.ema.full_state_dict(self.model, self.is_main) if self.ema else None
        if self.is_main:
            export_inference(os.path.join(self.cfg.output_dir, "final"), state, self.cfg,
                             self.text_encoders, ema_state_dict=ema_state,
                             latent_shape=self.last_batch_shape[1:] if self.last_batch_shape
                             else None)

"""The temporal autoencoder's trainer: its model, data, step and validation.

The loop, checkpoints and exact resume, preemption, metrics, the non-finite guard and
FSDP under torchrun are ``Trainer``'s; this file says only what is particular to the TAE:
  model      TAE (moviegen.models.tae), initialised whole, then FSDP2 over every residual
             and attention block (moviegen.parallel.parallelize.apply_fsdp_units)
  data       clips from a folder or manifest through moviegen.data's bucketed loader (bad
             files skipped and counted), cropped to data.height x data.width; every
             data.image_every-th step trains on single frames drawn from the step's clips
  step       l1 * |x - x^| + mse * (x - x^)^2 + opl * OPL(mean, r) + kl * KL
             [+ perceptual VGG16 distance] [+ adversarial hinge term, own optimizer]
  validate   PSNR (dB) of the held-out clips at full frame size
  export     tae.safetensors + tae_config.json (with the latent shift/scale measured on
             the held-out clips) and recon.gif in output_dir
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moviegen.data.clips import (clip_loader_config, clips_manifest, has_media,
                                 held_out_clips)
from moviegen.data.loader import build_video_loader
from moviegen.data.video_io import write_gif
from moviegen.models.tae import (TAE, AxialAttention, ResBlock, kl_loss, outlier_penalty_loss,
                                 psnr_from_mse, save_tae)
from moviegen.training.checkpoint import ModelState, OptimizerState
from moviegen.training.distributed import check_layout
from moviegen.training.trainer import Trainer
from moviegen.parallel.parallelize import apply_fsdp_units, resolve_param_dtype
from moviegen.parallel.state import gather_full_state_dict, model_tensors

logger = logging.getLogger("moviegen.training")
_FORWARD_METHODS = ("encode", "encode_moments", "decode")


class TAETrainer(Trainer):
    label = "tae"
    val_key = "psnr"

    def check_layout(self, world: int):
        return check_layout(self.cfg.parallel, world)

    def _fsdp_mesh(self):
        if self.mesh is None:
            return None
        return (self.mesh["dp_replicate", "dp_shard_cp"] if self.dims.dp_replicate > 1
                else self.mesh["dp_shard_cp"])

    def _shard(self, module, units, forward_methods=()) -> None:
        mesh = self._fsdp_mesh()
        if mesh is not None:
            dtype = resolve_param_dtype(self.cfg.parallel.param_dtype, self.device.type)
            apply_fsdp_units(module, mesh, units, forward_methods, param_dtype=dtype,
                             reshard_after_forward=self.cfg.parallel.reshard_after_forward)

    def build_model(self) -> torch.nn.Module:
        cfg, loss = self.cfg, self.cfg.loss
        # Built and initialised whole (a TAE is small), then sharded: the same weights on
        # every layout for a given seed.
        model = TAE(cfg.tae).to(self.device)
        model.init_weights()
        if cfg.train.init_from:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(os.path.join(cfg.train.init_from,
                                                         "tae.safetensors"),
                                            device=str(self.device)), strict=True)
        self._shard(model, [m for m in model.modules() if isinstance(m, (ResBlock, AxialAttention))],
                    _FORWARD_METHODS)
        self.disc = self.opt_d = self.vgg = None
        if loss.adversarial_weight > 0:
            from moviegen.models.tae_losses import PatchDiscriminator

            self.disc = PatchDiscriminator().to(self.device)
            self.disc.init_weights()
            self._shard(self.disc, [])
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.train.lr,
                                           betas=(0.5, 0.9))
        if loss.perceptual_weight > 0:
            from moviegen.models.tae_losses import VGG16Features

            self.vgg = VGG16Features.from_file(loss.perceptual_weights).to(self.device)
        self._gan_step = False
        return model

    def register_states(self, ckpt) -> None:
        super().register_states(ckpt)
        if self.disc is not None:
            ckpt.register("disc", ModelState(self.disc))
            ckpt.register("disc_optim", OptimizerState(self.disc, self.opt_d))

    # -- data ---------------------------------------------------------------
    def build_data(self, split: str):
        d = self.cfg.data
        multiple = self.model.spatial_compression
        if split == "val":
            return held_out_clips(self.clips_manifest, d.num_val, d.val_frames, multiple)
        self.clips_manifest, self.unreadable = self._prepare_clips()
        cfg = clip_loader_config(self.clips_manifest, d.num_frames, d.fps, d.height, d.width,
                                 d.batch_size, multiple, d.backend, d.num_workers,
                                 d.max_skip_fraction, d.cache_decoded_mb)
        return build_video_loader(cfg, dp_rank=self.dp_rank, dp_size=self.dp_size,
                                  seed=self.cfg.train.seed, split="train")

    def _prepare_clips(self) -> tuple[str, int]:
        """Rank 0 generates (when asked and the folder is empty) and probes; the others
        wait, then read the same manifest."""
        data_dir, d = self.cfg.clips_dir, self.cfg.data
        work = os.path.join(self.cfg.output_dir, "data_index")
        manifest, unreadable = None, 0
        if self.is_main:
            if not (os.path.isdir(data_dir) and has_media(data_dir)):
                if d.generate_if_missing <= 0:
                    raise ValueError(f"data.data_dir: no clips in '{data_dir}' (set "
                                     f"data.generate_if_missing > 0 to write synthetic ones)")
                from moviegen.data.synthetic import write_synthetic_dataset

                logger.info("no clips in %s: writing %d synthetic clips", data_dir,
                            d.generate_if_missing)
                write_synthetic_dataset(data_dir, num_videos=d.generate_if_missing,
                                        seed=self.cfg.train.seed)
            manifest, report = clips_manifest(data_dir, work, d.num_val)
            for path, why in report["unreadable"]:
                logger.warning("skipping %s: %s", path, why)
            unreadable = len(report["unreadable"])
        if self.world_size > 1:  # every rank reads the manifest rank 0 wrote
            box = [manifest, unreadable]
            dist.broadcast_object_list(box, src=0)
            manifest, unreadable = box
        return manifest, unreadable

    def skipped_files(self) -> int:
        return self.unreadable + super().skipped_files()

    # -- one step -----------------------------------------------------------
    def _augment(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        """Per clip: random RGB order, horizontal flip, time reversal (self.gen)."""
        out = []
        for clip in x_BCTHW:
            clip = clip[torch.randperm(3, generator=self.gen)]
            flips = torch.rand(2, generator=self.gen)
            if flips[0] < 0.5:
                clip = clip.flip(-1)
            if flips[1] < 0.5:
                clip = clip.flip(1)
            out.append(clip)
        return torch.stack(out)

    def _frames_as_images(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        """image_batch_size single frames drawn from the clips: [N, 3, 1, H, W]."""
        frames = x_BCTHW.transpose(1, 2).flatten(0, 1)  # [B*T, 3, H, W]
        n = min(self.cfg.data.image_batch_size, frames.shape[0])
        pick = torch.randperm(frames.shape[0], generator=self.gen)[:n]
        return frames[pick].unsqueeze(2)

    def forward_backward(self, batch: dict):
        d, w = self.cfg.data, self.cfg.loss
        x = batch["video"]
        if d.augment:
            x = self._augment(x)
        is_image = d.image_every > 0 and self.step % d.image_every == d.image_every - 1
        if is_image:
            x = self._frames_as_images(x)
        x = x.to(self.device, non_blocking=True)
        with self.autocast():
            recon, mean, logvar = self.model(x)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        mse = (recon - x).pow(2).mean()
        opl = outlier_penalty_loss(mean, r=w.opl_r)
        kl = kl_loss(mean, logvar) if logvar is not None else mse.new_zeros(())
        loss = w.l1_weight * l1 + w.mse_weight * mse + w.opl_weight * opl + w.kl_weight * kl
        if self.vgg is not None:
            frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
            loss = loss + w.perceptual_weight * self.vgg.distance(frames(recon), frames(x))
        self._gan_step = self.disc is not None and self.step >= w.adversarial_start_step
        if self._gan_step:
            with self.autocast():
                loss = loss - w.adversarial_weight * self.disc(recon).float().mean()
            self._gan_inputs = (x, recon.detach())
        loss.backward()
        metrics = {"recon": (w.l1_weight * l1 + w.mse_weight * mse).detach(),
                   "l1": l1.detach(), "mse": mse.detach(), "opl": opl.detach(),
                   "kl": kl.detach(), "kind": "image" if is_image else "video"}
        return loss.detach(), metrics

    def after_step(self, batch: dict, skipped: bool) -> dict:
        """The discriminator's hinge update on real clips vs the reconstructions."""
        if not self._gan_step:
            return {}
        x, recon = self._gan_inputs
        self._gan_inputs = None
        # the generator's backward also reached the discriminator: start from zero
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            d_loss = (F.relu(1 - self.disc(x)).float().mean()
                      + F.relu(1 + self.disc(recon)).float().mean())
        d_loss.backward()
        if not skipped:
            self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        return {"d_loss": d_loss.detach()}

    # -- validation and export ----------------------------------------------
    @torch.no_grad()
    def _held_out(self) -> tuple[float, float, float]:
        """(PSNR dB over all held-out clips, latent mean, latent std), posterior mean.
        Every rank evaluates every clip (FSDP needs all ranks in each forward)."""
        self.model.eval()
        se, n, zs = 0.0, 0, []
        for clip in self.val_data:
            clip = clip.to(self.device)
            with self.autocast():
                recon, mean, _ = self.model(clip, sample=False)
            se += (recon.float().clamp(-1, 1) - clip).pow(2).sum().item()
            n += clip.numel()
            zs.append(mean.float().flatten())
        self.model.train()
        z = torch.cat(zs)
        return psnr_from_mse(se / n), z.mean().item(), z.std().item()

    def validate(self) -> dict:
        return {"psnr": self._held_out()[0]}

    def export(self) -> None:
        """tae.safetensors + tae_config.json (latent statistics for the diffusion model) and
        recon.gif (a held-out clip beside its reconstruction); collective on all ranks."""
        _, z_mean, z_std = self._held_out()
        model = self.model
        model.cfg.latent_shift, model.cfg.latent_scale = z_mean, 1.0 / max(z_std, 1e-6)
        state = gather_full_state_dict(model_tensors(model), self.is_main)
        with torch.no_grad(), self.autocast():
            model.eval()
            clip = self.val_data[0].to(self.device)
            side_by_side = torch.cat([clip, model(clip, sample=False)[0].float().clamp(-1, 1)],
                                     dim=-1)
        if self.is_main:
            write_gif(os.path.join(self.cfg.output_dir, "recon.gif"), side_by_side[0].cpu(),
                      fps=8)
            save_tae(model, self.cfg.output_dir, state_dict=state)
            logger.info("wrote %s/tae.safetensors (latent mean %.3f, std %.3f)",
                        self.cfg.output_dir, z_mean, z_std)

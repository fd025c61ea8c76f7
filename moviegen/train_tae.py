"""Train the temporal autoencoder (TAE) on video clips, with image batches interleaved.

Single process (CPU or one GPU):
    python -m moviegen.train_tae --config launch/configs/tae_tiny.yaml [--train.steps=300]
torchrun, FSDP2 over all ranks (gloo on CPU, NCCL on GPUs):
    torchrun --nproc_per_node=2 -m moviegen.train_tae --config launch/configs/tae_tiny.yaml
SLURM: the same torchrun line inside an sbatch script (launch/slurm/), one task per node.

Loss = l1 * |x - x^| + mse * (x - x^)^2 + opl * OPL(mean, r) + kl * KL(q || N(0, I))
       [+ perceptual * VGG16-feature distance, only with local weights]
       [+ adversarial * hinge GAN term from a 2.5D patch discriminator trained from scratch]
Every ``data.image_every``-th step is an image batch (single frames; Movie Gen: 1 image per 3
videos, image_every = 4). Clips come from ``data.data_dir`` (.webm/.mp4, decoded with PyAV);
when it holds none, ``data.generate_if_missing`` synthetic moving-shape clips are written first.

Writes ``<output_dir>/metrics.jsonl`` (step, loss, recon, opl, kl, lr, grad_norm, step_time_s,
data_wait_s, kind, and psnr in dB on the held-out clips at eval steps),
``<output_dir>/tae.safetensors`` and ``<output_dir>/tae_config.json`` (load with
``moviegen.tae.load_tae``), and ``<output_dir>/recon.gif`` (a held-out clip | its reconstruction). The saved config carries latent_shift / latent_scale measured on the
held-out clips, so ``tae.scale_latents(z)`` has zero mean and unit variance for the diffusion model.
"""
from __future__ import annotations

import glob
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from moviegen.config import ConfigError, describe, load_config, parse_cli
from moviegen.tae import (TAE, Conv25d, TAEConfig, kl_loss, outlier_penalty_loss, psnr,
                          save_tae)
from moviegen.video_io import read_video, write_gif, write_video


# --------------------------------------------------------------------------- config
@dataclass
class TAEDataConfig:
    data_dir: str = "data/synthetic"
    """Directory searched recursively for .webm / .mp4 clips (or a moviegen.data dataset: its
    manifest.jsonl gives the video files and the train/val split)."""
    generate_if_missing: int = 48
    """If data_dir has no clips, write this many synthetic moving-shape clips there first
    (0: fail instead)."""
    num_frames: int = 8
    """Frames per training video clip (any count encodes; multiples of ct waste nothing)."""
    height: int = 64
    """Training crop height (random crop; must divide by the spatial compression). Held-out
    clips are reconstructed at full frame size."""
    width: int = 64
    """Training crop width."""
    batch_size: int = 4
    """Video clips per rank on video steps."""
    image_batch_size: int = 8
    """Images (single frames) per rank on image steps."""
    image_every: int = 4
    """Every this-many-th step is an image step (4: one image batch per three video batches;
    0: videos only)."""
    augment: bool = True
    """Random RGB channel order, horizontal flip and time reversal per training clip: a small
    synthetic set has few distinct colours, and the TAE should not learn only those."""
    num_val: int = 4
    """Clips held out for PSNR and latent statistics (a manifest.jsonl's val rows when data_dir
    has one, else the last clips in sorted order)."""
    val_frames: int = 17
    """Frames of each held-out clip that are reconstructed (odd on purpose: padding is tested)."""


@dataclass
class TAETrainConfig:
    steps: int = 400
    """Optimizer steps."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 disables)."""
    seed: int = 0
    """Seed for init, data order and posterior sampling."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    mse_weight: float = 1.0
    """Weight of the MSE reconstruction loss."""
    opl_weight: float = 0.1
    """Weight of the outlier penalty loss on the latent means."""
    opl_r: float = 3.0
    """OPL radius in standard deviations (Movie Gen: 3)."""
    kl_weight: float = 1e-6
    """Weight of KL(q(z|x) || N(0, I)) (variational TAE only)."""
    perceptual_weight: float = 0.0
    """Weight of the VGG16-feature loss; needs perceptual_weights (nothing is downloaded)."""
    perceptual_weights: Optional[str] = None
    """Local .safetensors with torchvision-named VGG16 'features.N.weight/bias' tensors."""
    adversarial_weight: float = 0.0
    """Weight of the generator's hinge GAN loss (0: no discriminator is built)."""
    adversarial_start_step: int = 0
    """Step at which the discriminator and the adversarial term switch on."""
    log_every: int = 10
    """Write a metrics.jsonl row every this many steps."""
    val_every: int = 100
    """PSNR on the held-out clips every this many steps (and at step 0 and at the end)."""
    device: str = "auto"
    """auto (cuda when available), cuda or cpu."""
    mixed_precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."""


@dataclass
class TAEJobConfig:
    output_dir: str = "runs/tae_tiny"
    """Metrics and the trained TAE (tae.safetensors + tae_config.json)."""
    tae: TAEConfig = field(default_factory=TAEConfig)
    """TAE size (preset full or tiny, plus per-field overrides)."""
    data: TAEDataConfig = field(default_factory=TAEDataConfig)
    """Clips, crops and the image/video interleave."""
    train: TAETrainConfig = field(default_factory=TAETrainConfig)
    """Optimisation and losses."""


def validate_tae_job(cfg: TAEJobConfig) -> None:
    def need(cond: bool, key: str, why: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {why}")

    try:
        tae_cfg = cfg.tae.resolved()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cs = 2 ** (len(tae_cfg.channel_multipliers) - 1)
    d, t = cfg.data, cfg.train
    need(d.height % cs == 0, "data.height", f"{d.height} is not divisible by the spatial compression {cs}")
    need(d.width % cs == 0, "data.width", f"{d.width} is not divisible by the spatial compression {cs}")
    for k in ("num_frames", "batch_size", "image_batch_size", "num_val", "val_frames"):
        need(getattr(d, k) >= 1, f"data.{k}", "must be >= 1")
    need(d.image_every >= 0, "data.image_every", "must be >= 0")
    need(t.steps >= 0, "train.steps", "must be >= 0")
    need(t.lr > 0, "train.lr", "must be > 0")
    need(t.log_every >= 1 and t.val_every >= 1, "train.log_every", "log_every and val_every must be >= 1")
    need(t.device in ("auto", "cuda", "cpu"), "train.device", f"'{t.device}' is not auto, cuda or cpu")
    need(t.mixed_precision in ("auto", "bf16", "fp32"), "train.mixed_precision",
         f"'{t.mixed_precision}' is not auto, bf16 or fp32")
    if t.perceptual_weight > 0:
        need(t.perceptual_weights is not None and os.path.isfile(t.perceptual_weights),
             "train.perceptual_weights",
             f"perceptual_weight > 0 needs a local VGG16 .safetensors file (got "
             f"{t.perceptual_weights!r}); nothing is downloaded")


# --------------------------------------------------------------------------- data
def write_synthetic_clips(output_dir: str, num_videos: int, num_frames: int = 32, size: int = 64,
                          fps: int = 16, seed: int = 0) -> list[str]:
    """Writes VP9 .webm clips of 1-2 coloured squares/discs moving in straight lines (bouncing
    off the edges) over a flat background. A stand-in for ``moviegen.data.synthetic``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    paths = []
    for i in range(num_videos):
        bg = rng.uniform(0.0, 0.35, size=3)
        frames = np.broadcast_to(bg, (num_frames, size, size, 3)).copy()
        for _ in range(rng.integers(1, 3)):
            colour = rng.uniform(0.4, 1.0, size=3)
            r = rng.uniform(size * 0.08, size * 0.18)
            pos = rng.uniform(r, size - r, size=2)
            vel = rng.uniform(-3.0, 3.0, size=2)
            disc = rng.random() < 0.5
            for f in range(num_frames):
                cy, cx = pos
                if disc:
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                else:
                    mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                frames[f][mask] = colour
                pos = pos + vel
                for k in range(2):  # bounce
                    if not r <= pos[k] <= size - r:
                        vel[k] = -vel[k]
                        pos[k] = np.clip(pos[k], r, size - r)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() * 2 - 1
        paths.append(write_video(os.path.join(output_dir, f"clip_{i:05d}.webm"), video, fps=fps))
    return paths


def _find_clips(data_dir: str) -> dict[str, list[str]]:
    """{"train": [...], "val": [...]} clip paths. A ``manifest.jsonl`` (moviegen.data's format:
    rows with path, type, split) decides the split when present; otherwise all .webm/.mp4 files
    under data_dir go to "train" and the split is made by ``split_clips``."""
    manifest = os.path.join(data_dir, "manifest.jsonl")
    if os.path.isfile(manifest):
        out: dict[str, list[str]] = {"train": [], "val": []}
        with open(manifest) as f:
            for line in f:
                row = json.loads(line) if line.strip() else None
                if row and row.get("type", "video") == "video":
                    split = "val" if row.get("split") == "val" else "train"
                    out[split].append(os.path.join(data_dir, row["path"]))
        return out
    found = []
    for ext in ("webm", "mp4"):
        found += glob.glob(os.path.join(data_dir, "**", f"*.{ext}"), recursive=True)
    return {"train": sorted(found), "val": []}


def _generate_clips(cfg: TAEDataConfig, seed: int) -> None:
    try:  # the project's dataset (captions, manifest, splits) when that package is present
        from moviegen.data.synthetic import generate
    except ImportError:
        write_synthetic_clips(cfg.data_dir, cfg.generate_if_missing, seed=seed)
    else:
        generate(cfg.data_dir, num_videos=cfg.generate_if_missing, seed=seed)


def prepare_clips(cfg: TAEDataConfig, seed: int = 0) -> dict[str, list[str]]:
    """{"train": paths, "val": paths (num_val held-out clips)}, generating a synthetic set first
    when the directory is empty (rank 0 writes, the others wait at a barrier). Held-out clips
    are the manifest's val rows when there is a manifest, else the last clips in sorted order."""
    clips = _find_clips(cfg.data_dir)
    if not clips["train"] and cfg.generate_if_missing > 0:
        if not dist.is_initialized() or dist.get_rank() == 0:
            _generate_clips(cfg, seed)
        if dist.is_initialized():
            dist.barrier()
        clips = _find_clips(cfg.data_dir)
    train_clips, val_clips = clips["train"], clips["val"]
    if len(val_clips) < cfg.num_val:  # top up the held-out set from the end of the train list
        need = cfg.num_val - len(val_clips)
        if len(train_clips) <= need:
            raise ConfigError(f"data.data_dir: {cfg.data_dir} has {len(train_clips)} training "
                              f"clips; need more than data.num_val={cfg.num_val}")
        train_clips, val_clips = train_clips[:-need], val_clips + train_clips[-need:]
    return {"train": train_clips, "val": val_clips[:cfg.num_val]}


def build_clip_loader(cfg: TAEDataConfig, clips: dict[str, list[str]], split: str,
                      num_frames: int, batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                      seed: int = 0) -> Iterator[dict]:
    """Yields {"video": [B, 3, num_frames, H, W] in [-1, 1]}: random clips of this rank's share
    of the split, random temporal and spatial crops. The one place the TAE trainer touches data:
    switch it to ``moviegen.data.build_video_loader`` for bucketed, prefetched loading."""
    names = clips[split][dp_rank::dp_size] or clips[split]  # every rank needs a clip
    cache: dict[str, torch.Tensor] = {}
    rng = random.Random(seed * 1000 + dp_rank)
    gen = torch.Generator().manual_seed(seed * 1000 + dp_rank)
    while True:
        batch = []
        for _ in range(batch_size):
            name = rng.choice(names)
            if name not in cache:
                cache[name] = read_video(name)
            video = cache[name]
            T, H, W = video.shape[1:]
            if T < num_frames or H < cfg.height or W < cfg.width:
                raise ValueError(f"{name}: {T}x{H}x{W} is smaller than the crop "
                                 f"{num_frames}x{cfg.height}x{cfg.width}")
            t0, y0, x0 = (rng.randint(0, T - num_frames), rng.randint(0, H - cfg.height),
                          rng.randint(0, W - cfg.width))
            clip = video[:, t0:t0 + num_frames, y0:y0 + cfg.height, x0:x0 + cfg.width]
            if cfg.augment:
                clip = clip[torch.randperm(3, generator=gen)]
                if rng.random() < 0.5:
                    clip = clip.flip(-1)
                if rng.random() < 0.5:
                    clip = clip.flip(1)
            batch.append(clip)
        yield {"video": torch.stack(batch)}


def load_val_clips(cfg: TAEDataConfig, clips: dict[str, list[str]], multiple: int
                   ) -> list[torch.Tensor]:
    """Held-out clips at full frame size, each [1, 3, <= val_frames, H, W] (H and W cropped down
    to a multiple of the spatial compression)."""
    out = []
    for name in clips["val"]:
        v = read_video(name, num_frames=cfg.val_frames)
        H, W = (v.shape[2] // multiple) * multiple, (v.shape[3] // multiple) * multiple
        out.append(v[:, :, :H, :W].unsqueeze(0))
    return out


# --------------------------------------------------------------------------- optional losses
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
_VGG16_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in torchvision numbering


class VGG16Features(nn.Module):
    """torchvision-compatible VGG16 ``features`` (up to relu4_3) loaded from a local file."""

    def __init__(self):
        super().__init__()
        layers, ch = [], 3
        for v in _VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU()]
                ch = v
        self.features = nn.Sequential(*layers[:_VGG16_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str) -> "VGG16Features":
        from safetensors.torch import load_file

        net = cls()
        sd = {k: v for k, v in load_file(path).items()
              if k.startswith("features.") and int(k.split(".")[1]) <= _VGG16_TAPS[-1]}
        net.load_state_dict(sd, strict=True)
        return net.eval().requires_grad_(False)

    def distance(self, x_NCHW: torch.Tensor, y_NCHW: torch.Tensor) -> torch.Tensor:
        """Mean over taps of the MSE between channel-unit-normalised features (LPIPS-like,
        without learned channel weights). Inputs in [-1, 1]."""
        h = torch.cat([x_NCHW, y_NCHW]).add(1).div(2).sub(self.mean).div(self.std)
        loss = h.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG16_TAPS:
                f = h / (h.norm(dim=1, keepdim=True) + 1e-10)
                fx, fy = f.chunk(2)
                loss = loss + (fx - fy).pow(2).sum(dim=1).mean()
        return loss / len(_VGG16_TAPS)


class PatchDiscriminator(nn.Module):
    """A small 2.5D patch discriminator (stride-2 spatial convs), trained from scratch."""

    def __init__(self, channels: int = 32, n_layers: int = 3):
        super().__init__()
        convs, ch = [], 3
        for i in range(n_layers):
            convs.append(Conv25d(ch, channels * 2 ** i, spatial_stride=2))
            ch = channels * 2 ** i
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv3d(ch, 1, 1)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        h = video_BCTHW
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return self.head(h)  # patch logits

    def init_weights(self) -> None:
        for m in self.modules():
            if hasattr(m, "reset_parameters") and m is not self:
                m.reset_parameters()
        for conv in self.convs:
            conv.temporal.init_weights()


# --------------------------------------------------------------------------- helpers
def lr_at(step: int, cfg: TAETrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _setup_distributed(device_kind: str) -> tuple[int, int, Optional[object]]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    if device_kind == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    mesh = init_device_mesh(device_kind, (world,), mesh_dim_names=("dp_shard",))
    return dist.get_rank(), world, mesh


@torch.no_grad()
def evaluate(model: nn.Module, val_clips: list[torch.Tensor], device: torch.device, autocast
             ) -> tuple[float, float, float]:
    """(PSNR dB over all held-out clips, latent mean, latent std) with the posterior mean.
    Every rank evaluates every clip (FSDP needs all ranks in each forward)."""
    model.eval()
    se, n, zs = 0.0, 0, []
    for clip in val_clips:
        clip = clip.to(device)
        with autocast:
            recon, mean, _ = model(clip, sample=False)
        se += (recon.float().clamp(-1, 1) - clip).pow(2).sum().item()
        n += clip.numel()
        zs.append(mean.float().flatten())
    model.train()
    z = torch.cat(zs)
    return 10.0 * math.log10(4.0 / max(se / n, 1e-12)), z.mean().item(), z.std().item()


# --------------------------------------------------------------------------- main
def train(cfg: TAEJobConfig) -> dict:
    """Runs the job; returns the last eval {"step", "psnr"} (rank 0's view)."""
    validate_tae_job(cfg)
    tc = cfg.train
    device_kind = "cuda" if tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available()) else "cpu"
    rank, world, mesh = _setup_distributed(device_kind)
    device = torch.device(device_kind, torch.cuda.current_device()) if device_kind == "cuda" else torch.device("cpu")
    use_bf16 = tc.mixed_precision == "bf16" or (tc.mixed_precision == "auto" and device_kind == "cuda")
    autocast = torch.autocast(device_kind, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    is_main = rank == 0

    torch.manual_seed(tc.seed)  # same init on every rank; FSDP then shards it
    with torch.device("meta"):
        model = TAE(cfg.tae)
    model.to_empty(device=device)
    model.init_weights()
    disc = None
    if tc.adversarial_weight > 0:
        disc = PatchDiscriminator().to(device)
        disc.init_weights()
    if mesh is not None:
        from parallel.tae import apply_tae_fsdp

        apply_tae_fsdp(model, mesh)
        if disc is not None:
            from torch.distributed.fsdp import fully_shard
            fully_shard(disc, mesh=mesh)
    vgg = VGG16Features.from_file(tc.perceptual_weights).to(device) if tc.perceptual_weight > 0 else None

    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                            weight_decay=tc.weight_decay)
    opt_d = (torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=(0.5, 0.9)) if disc is not None else None)

    clips = prepare_clips(cfg.data, seed=tc.seed)
    d = cfg.data
    videos = build_clip_loader(d, clips, "train", d.num_frames, d.batch_size, rank, world, tc.seed)
    images = build_clip_loader(d, clips, "train", 1, d.image_batch_size, rank, world, tc.seed + 1)
    val_clips = load_val_clips(d, clips, model.spatial_compression)

    os.makedirs(cfg.output_dir, exist_ok=True)
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    log = open(metrics_path, "w") if is_main else None
    last_eval: dict = {}

    def log_row(row: dict) -> None:
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()

    def run_eval(step: int) -> float:
        value, _, _ = evaluate(model, val_clips, device, autocast)
        last_eval.update(step=step, psnr=value)
        if is_main:
            print(f"[train_tae] step {step}: held-out PSNR {value:.2f} dB", flush=True)
        return value

    log_row({"step": 0, "psnr": run_eval(0)})
    model.train()
    for step in range(tc.steps):
        t0 = time.perf_counter()
        is_image = d.image_every > 0 and step % d.image_every == d.image_every - 1
        x = next(images if is_image else videos)["video"].to(device, non_blocking=True)
        t_data = time.perf_counter()
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast:
            recon, mean, logvar = model(x)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        mse = (recon - x).pow(2).mean()
        opl = outlier_penalty_loss(mean, r=tc.opl_r)
        kl = kl_loss(mean, logvar) if logvar is not None else mse.new_zeros(())
        loss = tc.l1_weight * l1 + tc.mse_weight * mse + tc.opl_weight * opl + tc.kl_weight * kl
        if vgg is not None:
            frames_NCHW = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
            loss = loss + tc.perceptual_weight * vgg.distance(frames_NCHW(recon), frames_NCHW(x))
        gan_on = disc is not None and step >= tc.adversarial_start_step
        if gan_on:
            with autocast:
                loss = loss - tc.adversarial_weight * disc(recon).float().mean()
        loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0
                     else torch.zeros(()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gan_on:  # hinge loss on real clips vs the (detached) reconstructions
            with autocast:
                d_loss = (F.relu(1 - disc(x)).float().mean() + F.relu(1 + disc(recon.detach())).float().mean())
            d_loss.backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        step_time = time.perf_counter() - t0  # (a CUDA step is only done at the .item() below)
        done = step + 1
        held_out = run_eval(done) if done % tc.val_every == 0 or done == tc.steps else None
        if done % tc.log_every == 0 or held_out is not None:
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            row = {"step": done, "loss": loss.item(), "recon": (tc.l1_weight * l1 + tc.mse_weight * mse).item(),
                   "l1": l1.item(), "mse": mse.item(), "opl": opl.item(), "kl": kl.item(),
                   "lr": lr, "grad_norm": float(gn), "kind": "image" if is_image else "video",
                   "step_time_s": step_time, "data_wait_s": t_data - t0, "psnr": held_out}
            if gan_on:
                row["d_loss"] = d_loss.item()
            log_row(row)

    # latent statistics for the diffusion model, then the checkpoint
    _, z_mean, z_std = evaluate(model, val_clips, device, autocast)
    model.cfg.latent_shift, model.cfg.latent_scale = z_mean, 1.0 / max(z_std, 1e-6)
    if mesh is not None:
        from parallel.tae import full_state_dict

        state = full_state_dict(model)
    else:
        state = model.state_dict()
    with torch.no_grad(), autocast:  # a held-out clip beside its reconstruction, to look at
        model.eval()
        clip = val_clips[0].to(device)
        side_by_side = torch.cat([clip, model(clip, sample=False)[0].float().clamp(-1, 1)], dim=-1)
    if is_main:
        write_gif(os.path.join(cfg.output_dir, "recon.gif"), side_by_side[0].cpu(), fps=8)
        save_tae(model, cfg.output_dir, state_dict=state)
        print(f"[train_tae] wrote {cfg.output_dir}/tae.safetensors (latent mean {z_mean:.3f}, "
              f"std {z_std:.3f})", flush=True)
        log.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return last_eval


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip() + "\n\nOverrides (any field, dotted):\n" + "\n".join(describe(TAEJobConfig)))
        return
    try:
        path, overrides = parse_cli(argv)
        cfg = load_config(path, overrides, cls=TAEJobConfig, validate=False)
        validate_tae_job(cfg)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")
    train(cfg)


if __name__ == "__main__":
    main()

"""What the trainer iterates: one function from ``cfg.data`` to a resumable loader.

data.kind
  synthetic_latents  generated caption-dependent latents (moviegen.data.latents)
  video              real video files through moviegen.data (DALI or PyAV), encoded to
                     latents on the fly by ``data.encoder``: ``tae`` (a trained TAE) or
                     ``random_patch`` (a fixed random Conv3d at the TAE's compression, so
                     the whole file -> loss path runs before a TAE exists)
  precomputed        TAE latents + captions written by ``python -m moviegen.precompute``

Every loader has one interface (``BatchLoader``): it iterates forever and yields dicts
with ``captions`` and either ``latents`` [B, C, T', H', W'] or ``video`` [B, 3, T, H, W] in
[-1, 1], and ``index`` [B]: each sample's position in the step's
global batch, the same on any layout, which keys its noise, t and caption dropout;
``batches_per_epoch()`` (one pass of this rank's shard, e.g. for validation),
``state_dict()`` / ``load_state_dict()`` (``epoch`` and ``batch_index`` of the next batch:
exact resume) and ``stats()`` (``seen_files``, ``skipped_files``: undecodable inputs that
were skipped and logged).
"""
from __future__ import annotations

import math
from typing import Iterator, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from moviegen.data.latents import SyntheticLatentDataset, SyntheticLatentLoader


class BatchLoader(Protocol, Iterator[dict]):
    """What every data source gives the trainer (see the module docstring)."""

    def batches_per_epoch(self) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def stats(self) -> dict: ...


def per_rank_batch(data_cfg, dp_size: int) -> int:
    """Samples per data-parallel rank per step: data.global_batch_size / dp when it is
    set (a ConfigError when dp does not divide it), else data.batch_size."""
    from moviegen.config.core import check

    g = data_cfg.global_batch_size
    if g is None:
        return data_cfg.batch_size
    check(g % dp_size == 0, "data.global_batch_size",
          f"{g} samples do not split over {dp_size} data-parallel ranks (dp_replicate x "
          f"dp_shard); choose a multiple of {dp_size} or another layout")
    return g // dp_size


def build_data(cfg, dp_rank: int, dp_size: int, split: str):
    d = cfg.data
    batch = per_rank_batch(d, dp_size)
    if d.kind == "synthetic_latents":
        shape = (cfg.model.in_channels, d.latent_frames, d.latent_height, d.latent_width)
        n = d.num_train if split == "train" else d.num_val
        seed = cfg.train.seed if split == "train" else cfg.train.seed + 7919
        ds = SyntheticLatentDataset(n, shape, seed=seed, fps=d.fps)
        bs = batch if split == "train" else max(1, min(batch, n // dp_size))
        return SyntheticLatentLoader(ds, bs, dp_rank, dp_size, seed=seed,
                                     shuffle=(split == "train"))
    if d.kind == "video":
        from moviegen.data import build_video_loader

        return build_video_loader(d.video, dp_rank=dp_rank, dp_size=dp_size,
                                  seed=cfg.train.seed, split=split)
    if d.kind == "precomputed":
        from moviegen.data.precomputed import PrecomputedLoader

        return PrecomputedLoader(d.precomputed_dir, split=split, batch_size=batch,
                                 dp_rank=dp_rank, dp_size=dp_size, seed=cfg.train.seed)
    raise ValueError(f"data.kind: '{d.kind}' is not a known data source "
                     f"(synthetic_latents, video, precomputed)")


class RandomPatchEncoder(nn.Module):
    """A fixed random linear map from pixel patches to latents (no training, no TAE).

    Kernel = stride = (temporal, spatial, spatial) compression, so a clip of T frames
    gives ceil(T / ct) latent frames like the TAE (the last frame is repeated to fill
    the final temporal patch). Weights come from a fixed seed: every rank and every run
    encodes identically. Output is scaled to roughly unit variance.
    """

    def __init__(self, latent_channels: int, temporal: int, spatial: int, seed: int = 4321):
        super().__init__()
        self.ct, self.cs = temporal, spatial
        g = torch.Generator().manual_seed(seed)
        fan_in = 3 * temporal * spatial * spatial
        weight = torch.randn(latent_channels, 3, temporal, spatial, spatial, generator=g)
        self.register_buffer("weight", weight / math.sqrt(fan_in) * 2.0, persistent=False)

    @torch.no_grad()
    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        T = video_BCTHW.shape[2]
        pad = (-T) % self.ct
        if pad:
            video_BCTHW = torch.cat([video_BCTHW, video_BCTHW[:, :, -1:].expand(
                -1, -1, pad, -1, -1)], dim=2)
        return F.conv3d(video_BCTHW.to(self.weight.dtype), self.weight,
                        stride=(self.ct, self.cs, self.cs))


class TAELatentEncoder(nn.Module):
    """A trained, frozen TAE as the online pixel -> latent encoder.

    Latents are normalised with the shift/scale train_tae measured on held-out clips
    (``TAE.scale_latents``), so the transformer sees roughly unit-variance inputs; the
    sampler undoes it with ``unscale_latents`` before decoding.
    """

    def __init__(self, checkpoint: str):
        super().__init__()
        from moviegen.models.tae import load_tae

        self.tae = load_tae(checkpoint).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.tae.scale_latents(self.tae.encode(video_BCTHW))


def build_pixel_encoder(cfg, device) -> nn.Module | None:
    """The encoder for data.kind=video (None for sources that already yield latents)."""
    d = cfg.data
    if d.kind != "video":
        return None
    if d.encoder == "random_patch":
        enc = RandomPatchEncoder(cfg.model.in_channels, d.video.temporal_compression,
                                 d.video.spatial_compression)
    else:
        enc = TAELatentEncoder(d.tae_checkpoint)
    return enc.to(device)


def latent_grids(cfg) -> list[tuple[str, int, int, int]]:
    """(bucket name, T', H', W') latent shapes the model will see, for layout checks."""
    d = cfg.data
    if d.kind == "synthetic_latents":
        return [("synthetic_latents", d.latent_frames, d.latent_height, d.latent_width)]
    if d.kind == "video":
        from moviegen.data.buckets import bucket_latent_shapes

        shapes = bucket_latent_shapes(d.video, d.video.temporal_compression,
                                      d.video.spatial_compression, patch=(1, 1, 1))
        return [(name, *shape) for name, shape in shapes.items()]
    if d.kind == "precomputed" and d.precomputed_dir:
        from moviegen.data.precomputed import latent_shapes

        return latent_shapes(d.precomputed_dir)
    return []

"""Temporal autoencoder (TAE): Movie Gen's 2.5D video VAE, its outlier penalty loss and tiled
inference.

(One file of ~570 lines on purpose, like the transformer's: the whole autoencoder reads top
to bottom, layers -> encoder/decoder -> tiling -> losses -> save/load; its config and presets are in
moviegen/models/sizes.py.)

    tae = TAE(TAEConfig(preset="tiny"))         # or load_tae("runs/tae/tae.safetensors")
    z_BCthw = tae.encode(video_BCTHW)           # video in [-1, 1]
    video_BCTHW = tae.decode(z_BCthw, num_frames=T)

Shape legend: B batch, C channels, T frames, H x W pixels; t, h, w the latent grid.
    t = ceil(T / temporal_compression), h = H / spatial_compression, w = W / spatial_compression

2.5D: every spatial 3x3 conv is followed by a temporal conv of width 3 (a "Conv2.5d"), every
spatial self-attention by a temporal self-attention. Frames are never mixed by anything else
(normalisation is per frame), so an image is simply a 1-frame video.

Frame counts: each temporal downsampling is a stride-2 conv of width 3 over the frames with one
replicated frame padded on each side (symmetric replicate padding), which maps T frames to
ceil(T / 2) for any T >= 1. Stacked, the encoder maps T frames to ceil(T / ct) latent frames.
The decoder upsamples by nearest interpolation (x2 per stage) followed by a conv, giving t * ct
frames; the spurious trailing frames (those the replicate padding invented) are dropped by
``decode(z, num_frames=T)``. With ``num_frames=None`` decode returns all t * ct frames, the
longest clip that encodes to t latent frames (pass ``num_frames=1`` to decode an image).

Spatial sizes must be divisible by the spatial compression (Movie Gen buckets its aspect ratios).

Tiled inference (Movie Gen, sec. 3.1.1): ``encode_tiled`` encodes tiles of 32 frames (4 latent frames at
8x; for other compressions the default is 4 * ct frames) independently, with no overlap;
``decode_tiled`` decodes tiles of 4 latent frames overlapping by 2 and blends the overlap
linearly, so memory is bounded by the tile and the seams do not show.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# the config and presets live apart, importable without torch (the TAE job's config reads
# them); re-exported here
from moviegen.models.sizes import TAE_PRESETS, TAEConfig, latent_frames  # noqa: F401


# --------------------------------------------------------------------------- building blocks
def _groups(channels: int) -> int:
    """The largest group count <= 32 that divides the channels and leaves >= 4 channels per group
    (SD-VAE's 32 groups of 4 at width 128). A group of one channel would be an instance norm per
    frame, which erases every channel's frame-wide mean: flat colours could not pass through."""
    return max(g for g in range(1, min(32, max(1, channels // 4)) + 1) if channels % g == 0)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame separately, so frames (and tiles) never share statistics."""

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_BCTHW.shape
        x = x_BCTHW.transpose(1, 2).reshape(B * T, C, H, W)
        x = super().forward(x)
        return x.reshape(B, T, C, H, W).transpose(1, 2)


def _spatial(fn, x_BCTHW: torch.Tensor) -> torch.Tensor:
    """Applies a [N, C, H, W] -> [N, C', H', W'] function to every frame."""
    B, C, T, H, W = x_BCTHW.shape
    y = fn(x_BCTHW.transpose(1, 2).reshape(B * T, C, H, W))
    return y.reshape(B, T, *y.shape[1:]).transpose(1, 2)


def _temporal(fn, x_BCTHW: torch.Tensor) -> torch.Tensor:
    """Applies a [N, C, T] -> [N, C', T'] function to every pixel."""
    B, C, T, H, W = x_BCTHW.shape
    y = fn(x_BCTHW.permute(0, 3, 4, 1, 2).reshape(B * H * W, C, T))
    return y.reshape(B, H, W, *y.shape[1:]).permute(0, 3, 4, 1, 2)


class TemporalConv(nn.Conv1d):
    """Width-3 conv over frames with one replicated frame on each side; stride 2 maps T frames to
    ceil(T / 2). Initialised to the identity (centre tap) so a fresh 2.5D conv acts as its 2D
    conv frame by frame, the usual way to grow an image autoencoder into a video one."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__(in_ch, out_ch, kernel_size=3, stride=stride)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        pad = lambda x: F.pad(x, (1, 1), mode="replicate")  # noqa: E731
        return _temporal(lambda x: F.conv1d(pad(x), self.weight, self.bias, self.stride), x_BCTHW)

    def init_weights(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()
            n = min(self.in_channels, self.out_channels)
            self.weight[torch.arange(n), torch.arange(n), 1] = 1.0


class Conv25d(nn.Module):
    """2D 3x3 conv on each frame (optionally stride 2), then a temporal conv (optionally stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, spatial_stride: int = 1, temporal_stride: int = 1):
        super().__init__()
        self.spatial = nn.Conv2d(in_ch, out_ch, 3, stride=spatial_stride, padding=1)
        self.temporal = TemporalConv(out_ch, out_ch, stride=temporal_stride)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.temporal(_spatial(self.spatial, x_BCTHW))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = FrameGroupNorm(_groups(in_ch), in_ch, eps=1e-6)
        self.conv1 = Conv25d(in_ch, out_ch)
        self.norm2 = FrameGroupNorm(_groups(out_ch), out_ch, eps=1e-6)
        self.conv2 = Conv25d(out_ch, out_ch)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCTHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x_BCTHW) + h



class AxialAttention(nn.Module):
    """Self-attention over the frames' pixels (axis="space") or each pixel's frames ("time")."""

    def __init__(self, channels: int, head_dim: int, axis: str):
        super().__init__()
        assert axis in ("space", "time")
        self.axis = axis
        self.n_heads = max(1, channels // head_dim)
        self.norm = FrameGroupNorm(_groups(channels), channels, eps=1e-6)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_BCTHW.shape
        h = self.norm(x_BCTHW)
        if self.axis == "space":
            h_NSC = h.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        else:
            h_NSC = h.permute(0, 3, 4, 2, 1).reshape(B * H * W, T, C)
        N, S, _ = h_NSC.shape
        q, k, v = self.qkv(h_NSC).reshape(N, S, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        o_NSC = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, S, C)
        o_NSC = self.out(o_NSC)
        if self.axis == "space":
            o = o_NSC.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)
        else:
            o = o_NSC.reshape(B, H, W, T, C).permute(0, 4, 3, 1, 2)
        return x_BCTHW + o



class MidBlock(nn.Module):
    """ResBlock, spatial attention, temporal attention, ResBlock (at the lowest resolution)."""

    def __init__(self, channels: int, attention: bool, head_dim: int):
        super().__init__()
        layers = {"res1": ResBlock(channels, channels)}
        if attention:
            layers["attn_space"] = AxialAttention(channels, head_dim, "space")
            layers["attn_time"] = AxialAttention(channels, head_dim, "time")
        layers["res2"] = ResBlock(channels, channels)
        self.layers = nn.ModuleDict(layers)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x_BCTHW = layer(x_BCTHW)
        return x_BCTHW


class Downsample(nn.Module):
    """Stride-2 3x3 conv on each frame, then a temporal conv of stride 2 (or 1)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = Conv25d(channels, channels, spatial_stride=2, temporal_stride=2 if temporal else 1)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.conv(x_BCTHW)  # [B, C, ceil(T/2) or T, H/2, W/2]


class Upsample(nn.Module):
    """Nearest 2x in H, W (and T) then a 2.5D conv."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = Conv25d(channels, channels)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        scale = (2.0 if self.temporal else 1.0, 2.0, 2.0)
        return self.conv(F.interpolate(x_BCTHW, scale_factor=scale, mode="nearest"))


def _stage_widths(cfg: TAEConfig) -> list[int]:
    return [cfg.base_channels * m for m in cfg.channel_multipliers]


class Encoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        widths = _stage_widths(cfg)
        n_temporal = int(math.log2(cfg.temporal_compression))
        self.conv_in = Conv25d(cfg.in_channels, widths[0])
        self.stages = nn.ModuleList()
        ch = widths[0]
        for i, width in enumerate(widths):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.blocks.append(ResBlock(ch, width))
                ch = width
            if i < len(widths) - 1:
                stage.down = Downsample(ch, temporal=i < n_temporal)
            self.stages.append(stage)
        self.mid = MidBlock(ch, cfg.attention, cfg.attention_head_dim)
        self.norm_out = FrameGroupNorm(_groups(ch), ch, eps=1e-6)
        out_ch = 2 * cfg.latent_channels if cfg.variational else cfg.latent_channels
        self.conv_out = Conv25d(ch, out_ch)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCTHW)
        for stage in self.stages:
            for block in stage.blocks:
                h = block(h)
            if hasattr(stage, "down"):
                h = stage.down(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, (2)C_z, t, h, w]


class Decoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        widths = _stage_widths(cfg)
        n_temporal = int(math.log2(cfg.temporal_compression))
        n_stages = len(widths)
        ch = widths[-1]
        self.conv_in = Conv25d(cfg.latent_channels, ch)
        self.mid = MidBlock(ch, cfg.attention, cfg.attention_head_dim)
        self.stages = nn.ModuleList()
        for i in reversed(range(n_stages)):  # deepest first
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.blocks.append(ResBlock(ch, widths[i]))
                ch = widths[i]
            if i > 0:  # mirror of encoder stage i-1's downsampling
                stage.up = Upsample(ch, temporal=(i - 1) < n_temporal)
            self.stages.append(stage)
        self.norm_out = FrameGroupNorm(_groups(ch), ch, eps=1e-6)
        self.conv_out = Conv25d(ch, cfg.in_channels)

    def forward(self, z_BCthw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BCthw))
        for stage in self.stages:
            for block in stage.blocks:
                h = block(h)
            if hasattr(stage, "up"):
                h = stage.up(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, 3, t*ct, H, W]


# --------------------------------------------------------------------------- model
class TAE(nn.Module):
    """The temporal autoencoder. forward(video) -> (reconstruction, mean, logvar) is the training
    entry point (FSDP hooks run on forward); encode/decode are the inference API."""

    def __init__(self, cfg: TAEConfig):
        super().__init__()
        self.cfg = cfg.resolved()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    # ---- sizes
    @property
    def temporal_compression(self) -> int:
        return self.cfg.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.cfg.channel_multipliers) - 1)

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latents of a [3, T, H, W] clip."""
        cs = self.spatial_compression
        return (self.latent_channels, latent_frames(num_frames, self.temporal_compression),
                height // cs, width // cs)

    def init_weights(self) -> None:
        """(Re)initialises every parameter; works after ``to_empty`` from the meta device."""
        # torch defaults, temporal convs as the identity. Zero-initialised residual branches
        # (DiT-style) were tried: on the tiny preset they kept colour from being learned for
        # hundreds of steps (a flat-colour probe stayed at chance), so they are not used.
        for m in self.modules():
            if isinstance(m, TemporalConv):
                m.init_weights()
            elif isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear, nn.GroupNorm)):
                m.reset_parameters()

    # ---- inference
    def _check_video(self, video_BCTHW: torch.Tensor) -> None:
        if video_BCTHW.dim() != 5 or video_BCTHW.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected a video [B, {self.cfg.in_channels}, T, H, W], "
                             f"got {tuple(video_BCTHW.shape)}")
        cs = self.spatial_compression
        H, W = video_BCTHW.shape[-2:]
        if H % cs or W % cs:
            raise ValueError(f"height and width ({H}x{W}) must be divisible by the spatial "
                             f"compression {cs}")

    def encode_moments(self, video_BCTHW: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(mean, logvar) of q(z | video); logvar is None for a non-variational TAE."""
        self._check_video(video_BCTHW)
        h = self.encoder(video_BCTHW)
        if not self.cfg.variational:
            return h, None
        mean, logvar = (p.clone() for p in h.chunk(2, dim=1))  # not views: FSDP hooks outputs
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> latents [B, C_z, ceil(T/ct), H/cs, W/cs] (the mean)."""
        return self.encode_moments(video_BCTHW)[0]

    def decode(self, z_BCthw: torch.Tensor, num_frames: Optional[int] = None) -> torch.Tensor:
        """Latents -> [B, 3, num_frames, H, W]; num_frames defaults to t * ct and may not exceed
        it (the trailing frames beyond num_frames are the ones invented by padding)."""
        t = z_BCthw.shape[2]
        full = t * self.temporal_compression
        num_frames = full if num_frames is None else num_frames
        if not latent_frames(num_frames, self.temporal_compression) == t:
            raise ValueError(f"{t} latent frames decode to {full - self.temporal_compression + 1}"
                             f"..{full} frames, not {num_frames}")
        # contiguous: a fresh tensor, not a (permuted) view, which FSDP's output hooks warn about
        return self.decoder(z_BCthw)[:, :, :num_frames].contiguous()

    def forward(self, video_BCTHW: torch.Tensor, sample: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Training pass: (reconstruction [B,3,T,H,W], mean, logvar); samples z when variational
        and ``sample``."""
        mean, logvar = self.encode_moments(video_BCTHW)
        z = mean
        if logvar is not None and sample:
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return self.decode(z, num_frames=video_BCTHW.shape[2]), mean, logvar

    # ---- latent normalisation for the diffusion model
    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.cfg.latent_shift) * self.cfg.latent_scale

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.cfg.latent_scale + self.cfg.latent_shift

    # ---- tiled inference
    @torch.no_grad()
    def encode_tiled(self, video_BCTHW: torch.Tensor, tile_frames: Optional[int] = None) -> torch.Tensor:
        """Encodes non-overlapping tiles of ``tile_frames`` frames (default 4 latent frames'
        worth: 32 at 8x) independently and concatenates them; same shape as encode()."""
        ct = self.temporal_compression
        tile_frames = 4 * ct if tile_frames is None else tile_frames
        if tile_frames < 1 or tile_frames % ct:
            raise ValueError(f"tile_frames={tile_frames} must be a positive multiple of the "
                             f"temporal compression {ct}")
        T = video_BCTHW.shape[2]
        tiles = [self.encode(video_BCTHW[:, :, s:s + tile_frames]) for s in range(0, T, tile_frames)]
        return torch.cat(tiles, dim=2)

    @torch.no_grad()
    def decode_tiled(self, z_BCthw: torch.Tensor, num_frames: Optional[int] = None,
                     tile_latent_frames: int = 4, overlap_latent_frames: int = 2) -> torch.Tensor:
        """Decodes tiles of ``tile_latent_frames`` latent frames that overlap by
        ``overlap_latent_frames`` and blends each overlap linearly (tile weights ramp from 1/(2L)
        to 1 - 1/(2L) across the L overlapping frames and are renormalised). Same output as
        decode() in shape; equal to it away from the seams when the decoder's temporal receptive
        field fits inside a tile."""
        if not 0 <= overlap_latent_frames < tile_latent_frames:
            raise ValueError("need 0 <= overlap_latent_frames < tile_latent_frames")
        ct = self.temporal_compression
        t = z_BCthw.shape[2]
        if t <= tile_latent_frames:
            return self.decode(z_BCthw, num_frames)
        stride = tile_latent_frames - overlap_latent_frames
        starts = list(range(0, t - tile_latent_frames, stride)) + [t - tile_latent_frames]
        spans = [(s * ct, (s + tile_latent_frames) * ct) for s in starts]  # pixel frames
        B, _, _, h, w = z_BCthw.shape
        cs = self.spatial_compression
        out = torch.zeros(B, self.cfg.in_channels, t * ct, h * cs, w * cs,
                          dtype=z_BCthw.dtype, device=z_BCthw.device)
        weight_sum = torch.zeros(t * ct, dtype=z_BCthw.dtype, device=z_BCthw.device)
        for i, (s, (a, b)) in enumerate(zip(starts, spans)):
            tile = self.decode(z_BCthw[:, :, s:s + tile_latent_frames])
            wgt = torch.ones(b - a, dtype=z_BCthw.dtype, device=z_BCthw.device)
            n = spans[i - 1][1] - a if i > 0 else 0
            if n > 0:  # ramp up across the overlap with the previous tile
                wgt[:n] = torch.minimum(wgt[:n], (torch.arange(n, device=wgt.device) + 0.5) / n)
            n = b - spans[i + 1][0] if i < len(starts) - 1 else 0
            if n > 0:  # ramp down across the overlap with the next tile
                ramp = 1 - (torch.arange(n, device=wgt.device) + 0.5) / n
                wgt[-n:] = torch.minimum(wgt[-n:], ramp.to(wgt.dtype))
            out[:, :, a:b] += tile * wgt.view(1, 1, -1, 1, 1)
            weight_sum[a:b] += wgt
        out = out / weight_sum.view(1, 1, -1, 1, 1)
        num_frames = t * ct if num_frames is None else num_frames
        if latent_frames(num_frames, ct) != t:
            raise ValueError(f"{t} latent frames cannot decode to {num_frames} frames")
        return out[:, :, :num_frames]



# --------------------------------------------------------------------------- losses
def outlier_penalty_loss(z_BCthw: torch.Tensor, r: float = 3.0) -> torch.Tensor:
    """Movie Gen's outlier penalty loss (OPL) against high-norm latent "spots".

    For each sample X in R^{C x t x h x w}, with mu = Mean(X) and sigma = Std(X) the per-channel
    mean and (biased) standard deviation over t, h, w, and X_p the C-vector at position p:

        L_OPL(X, r) = 1 / (t h w) * sum_p max(||X_p - mu||_2 - r * ||sigma||_2, 0)

    averaged over the batch. Latent vectors more than r standard deviations from the mean (in
    norm) are pulled back; ordinary ones cost nothing.
    """
    B, C = z_BCthw.shape[:2]
    x = z_BCthw.reshape(B, C, -1).float()
    mu = x.mean(dim=2, keepdim=True)
    sigma = x.std(dim=2, unbiased=False, keepdim=True)
    dist_BP = (x - mu).norm(dim=1)
    thresh_B1 = r * sigma.norm(dim=1)
    return F.relu(dist_BP - thresh_B1).mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) per latent element, averaged."""
    return 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of two frames or videos in [-1, 1] (peak-to-peak 2, i.e. the usual PSNR
    on [0, 1])."""
    return psnr_from_mse((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)).pow(2).mean().item())


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of pixels in [-1, 1] from their mean squared error (a set of clips pools
    its squared errors first)."""
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


# --------------------------------------------------------------------------- save / load
CONFIG_NAME = "tae_config.json"
WEIGHTS_NAME = "tae.safetensors"


def save_tae(tae: TAE, output_dir: str, state_dict: Optional[dict] = None) -> str:
    """Writes ``tae.safetensors`` and ``tae_config.json`` into output_dir; returns the weights
    path. ``state_dict`` lets a distributed caller pass the gathered full state dict."""
    from safetensors.torch import save_file

    os.makedirs(output_dir, exist_ok=True)
    sd = tae.state_dict() if state_dict is None else state_dict
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    path = os.path.join(output_dir, WEIGHTS_NAME)
    save_file(sd, path)
    with open(os.path.join(output_dir, CONFIG_NAME), "w") as f:
        json.dump(dataclasses.asdict(tae.cfg), f, indent=2)
    return path


def load_tae(checkpoint_path: str, device: str | torch.device = "cpu") -> TAE:
    """Builds a TAE from ``tae.safetensors`` (or its directory) and the ``tae_config.json`` beside
    it. Only tensors and JSON are read: no pickle, nothing executed."""
    from safetensors.torch import load_file

    if os.path.isdir(checkpoint_path):
        checkpoint_path = os.path.join(checkpoint_path, WEIGHTS_NAME)
    config_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), CONFIG_NAME)
    with open(config_path) as f:
        raw = json.load(f)
    known = {f.name for f in dataclasses.fields(TAEConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown TAE config keys {unknown}")
    with torch.device("meta"):
        tae = TAE(TAEConfig(**raw))
    tae.load_state_dict(load_file(checkpoint_path, device=str(device)), strict=True, assign=True)
    return tae.eval()

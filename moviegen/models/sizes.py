"""Model sizes without torch: what a config, the planner and ``info`` read before any
model exists (``python -m moviegen.train --help`` and every config error stay fast).

    args = resolve_model_args(cfg.model, text_dims)   # ModelConfig -> ModelArgs
    MODEL_REGISTRY["30b"]                             # the transformer's registered sizes
    TAEConfig(preset="tiny").resolved()               # the TAE's, from TAE_PRESETS

The modules themselves (moviegen/models/transformer.py, moviegen/models/tae.py) build from
these objects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


# --------------------------------------------------------------------------- transformer
MODEL_REGISTRY: dict[str, dict] = {
    # Movie Gen 30B: 48 layers, 6144 wide, FFN 16384, 48 heads of 128.
    "30b": dict(n_layers=48, dim=6144, ffn_dim=16384, n_heads=48),
    # The spatial upsampler's widths are not in our sources: these are Llama-3-8B's.
    "7b": dict(n_layers=32, dim=4096, ffn_dim=14336, n_heads=32),
    "5b": dict(n_layers=32, dim=3072, ffn_dim=8192, n_heads=24),
    "1b": dict(n_layers=24, dim=1536, ffn_dim=4096, n_heads=16),
    "tiny": dict(n_layers=2, dim=64, ffn_dim=128, n_heads=4),
}

# Text-encoder output widths when the real encoders are used (Movie Gen: UL2, ByT5,
# long-prompt MetaCLIP); the tiny default builds its own small encoder instead.
DEFAULT_TEXT_DIMS = {"ul2": 4096, "byt5": 1472, "metaclip": 1024}


@dataclass
class ModelArgs:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 128
    in_channels: int = 16
    cond_channels: int = 0  # conditioning latent + mask channels (0: text-to-video only)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    max_t: int = 8
    max_h: int = 16
    max_w: int = 16
    norm_eps: float = 1e-6
    text_dims: dict[str, int] = field(default_factory=lambda: {"byt5": 64})
    time_freq_dim: int = 256
    kernels: str = "torch"
    attention_pattern: str = "full"          # full | window
    spatial_window: tuple[int, int] = (16, 16)              # [h, w] patches
    spatiotemporal_window: tuple[int, int, int] = (8, 8, 8)  # [t, h, w] patches

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def block_window(self, layer_id: int) -> tuple[int, int, int] | None:
        """Block ``layer_id``'s self-attention window [t, h, w] (None: full attention)."""
        if self.attention_pattern == "full":
            return None
        if self.attention_pattern != "window":
            raise ValueError(f"attention_pattern must be 'full' or 'window', got "
                             f"{self.attention_pattern!r}")
        if layer_id % 2 == 0:
            return (1, *self.spatial_window)
        return tuple(self.spatiotemporal_window)


def effective_window(window, grid_thw) -> tuple[int, int, int]:
    """The window on this grid: each side clamped to the grid (so a side >= the grid covers
    the axis, and a one-frame image never mixes frames), which must then divide it."""
    win = tuple(min(w, g) for w, g in zip(window, grid_thw))
    if any(g % w for w, g in zip(win, grid_thw)):
        raise ValueError(f"attention window {tuple(window)} (t, h, w patches) does not tile "
                         f"the patch grid {tuple(grid_thw)}: each window side must divide "
                         f"the grid side or be at least as large")
    return win


def resolve_model_args(model_cfg, text_dims: dict[str, int] | None = None) -> ModelArgs:
    """ModelConfig (a config section) -> ModelArgs (what the module needs)."""
    base = dict(MODEL_REGISTRY[model_cfg.name])
    for key in ("dim", "n_layers", "n_heads", "ffn_dim"):
        if getattr(model_cfg, key, None) is not None:
            base[key] = getattr(model_cfg, key)
    return ModelArgs(
        **base,
        in_channels=model_cfg.in_channels,
        cond_channels=getattr(model_cfg, "cond_channels", 0),
        patch_size=tuple(model_cfg.patch_size),
        max_t=model_cfg.max_latent_frames,
        max_h=model_cfg.max_latent_height,
        max_w=model_cfg.max_latent_width,
        norm_eps=model_cfg.norm_eps,
        text_dims=dict(text_dims) if text_dims is not None else {"byt5": 64},
        kernels=model_cfg.kernels,
        attention_pattern=getattr(model_cfg, "attention_pattern", "full"),
        spatial_window=tuple(getattr(model_cfg, "spatial_window", (16, 16))),
        spatiotemporal_window=tuple(getattr(model_cfg, "spatiotemporal_window", (8, 8, 8))),
    )


# --------------------------------------------------------------------------- TAE
@dataclass
class TAEConfig:
    preset: str = "tiny"
    """Registered size (one of TAE_PRESETS: full, tiny); fields left at None take its values."""
    in_channels: int = 3
    """Pixel channels (RGB)."""
    latent_channels: Optional[int] = None
    """Latent channels (Movie Gen: 16)."""
    base_channels: Optional[int] = None
    """Width of the first (full-resolution) stage."""
    channel_multipliers: Optional[list[int]] = None
    """Per-stage width = base_channels * multiplier; there are len - 1 spatial 2x downsamplings,
    so the spatial compression is 2 ** (len - 1)."""
    num_res_blocks: Optional[int] = None
    """Residual blocks per stage (the decoder uses one more, as in SD/Movie Gen-style VAEs)."""
    temporal_compression: Optional[int] = None
    """Frames per latent frame, a power of two <= the spatial compression; the temporal 2x
    downsamplings happen in the first log2 of it stages."""
    attention: Optional[bool] = None
    """Spatial then temporal self-attention in the middle (lowest-resolution) block."""
    attention_head_dim: int = 64
    """Head width of the middle-block attention (heads = channels / head_dim, at least 1)."""
    variational: bool = True
    """The encoder also predicts a log-variance (VAE); encode() returns the mean."""
    latent_shift: float = 0.0
    """Diffusion-side normalisation: scale_latents(z) = (z - latent_shift) * latent_scale.
    train_tae measures it on held-out clips at the end of training."""
    latent_scale: float = 1.0
    """See latent_shift."""

    def resolved(self) -> "TAEConfig":
        """A copy with every None field filled from the preset."""
        if self.preset not in TAE_PRESETS:
            raise ValueError(f"tae.preset: '{self.preset}' is not one of {', '.join(TAE_PRESETS)}")
        base = TAE_PRESETS[self.preset]
        out = dataclasses.replace(self)
        for k, v in base.items():
            if getattr(out, k) is None:
                setattr(out, k, list(v) if isinstance(v, list) else v)
        out.validate()
        return out

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.resolved().channel_multipliers) - 1)

    def validate(self) -> None:
        """Raises ValueError("tae.<field>: why") for an impossible size."""
        def need(cond: bool, key: str, why: str) -> None:
            if not cond:
                raise ValueError(f"tae.{key}: {why}")

        if self.channel_multipliers is None or self.latent_channels is None:
            self.resolved()  # fills the preset's values, then validates them
            return

        mults = self.channel_multipliers
        need(len(mults) >= 1 and all(m >= 1 for m in mults), "channel_multipliers",
             f"expected positive ints, got {mults}")
        ct, cs = self.temporal_compression, 2 ** (len(mults) - 1)
        need(ct >= 1 and ct & (ct - 1) == 0, "temporal_compression", f"{ct} is not a power of two")
        need(ct <= cs, "temporal_compression",
             f"{ct} exceeds the spatial compression {cs} (one temporal 2x per spatial stage)")
        need(self.latent_channels >= 1 and self.base_channels >= 1, "latent_channels",
             "latent_channels and base_channels must be >= 1")
        need(self.num_res_blocks >= 1, "num_res_blocks", "must be >= 1")


# Movie Gen's TAE: 8x in T, H and W, 16 latent channels. Its widths are not published; these are
# the usual SD-VAE widths. The tiny one trains on 2 CPU cores in minutes on 64px clips.
TAE_PRESETS: dict[str, dict] = {
    "full": dict(latent_channels=16, base_channels=128, channel_multipliers=[1, 2, 4, 4],
                 num_res_blocks=2, temporal_compression=8, attention=True),
    "tiny": dict(latent_channels=8, base_channels=16, channel_multipliers=[1, 2, 4],
                 num_res_blocks=1, temporal_compression=4, attention=True),
}


def latent_frames(num_frames: int, temporal_compression: int) -> int:
    """Latent frames of a T-frame clip: ceil(T / ct) (an image, T = 1, gives 1)."""
    return -(-num_frames // temporal_compression)

"""The Movie Gen transformer: a flow-matching DiT over TAE latents.

Read top to bottom: building blocks, one transformer block, the model (the sizes and
ModelArgs are in moviegen/models/sizes.py). One file on purpose, so the whole
architecture reads in one place.

Shape legend
    B batch, C latent channels (16), T/H/W latent frames/height/width,
    t/h/w patch-grid sizes (T, H/2, W/2 for patch (1, 2, 2)), S = t*h*w video tokens,
    D model width, N heads, E head dim (D / N), F SwiGLU hidden width,
    L text tokens (all encoders concatenated), K text-encoder width.

Per block (Movie Gen, sec. 3.1.2): adaLN-modulated RMSNorm -> bidirectional self-attention -> gated
residual; RMSNorm -> cross-attention to text -> residual; adaLN-modulated RMSNorm ->
SwiGLU -> gated residual. No biases. adaLN-single: one shared time MLP makes the six
modulation vectors; each block adds its own learnable [6, D] table. Factorized learnable
T/H/W position tables are added to the input of every block.

``attention_pattern="window"`` (W.A.L.T, Gupta et al., 2023): self-attention is restricted
to non-overlapping windows, alternating spatial windows [1, h, w] (even blocks) and
spatiotemporal windows [t, h, w] (odd blocks). Each window is moved into the batch
dimension, so the same unmasked attention kernels run on [B * windows, N, window, E].
A window side at least as large as the grid covers that whole axis; a one-frame image
therefore attends within its frame in every block (W.A.L.T's identity mask over time).

The model knows nothing of distribution. ``parallel/`` shards it from outside: attention
goes through ``Attention.core`` (swappable), the position add takes a token offset for
sequence shards, and every Linear works on whatever heads/width it is handed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from moviegen import kernels
# the sizes live apart, importable without torch (configs read them); re-exported here
from moviegen.models.sizes import (DEFAULT_TEXT_DIMS, MODEL_REGISTRY, ModelArgs,  # noqa: F401
                                   effective_window, resolve_model_args)


# --------------------------------------------------------------------------- pieces
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x):
        return kernels.reference.rms_norm_reference(x, self.weight, self.eps)


class ModulatedRMSNorm(RMSNorm):
    """RMSNorm(x) * (1 + scale) + shift, scale/shift per sample ([B, D])."""

    backend: str = "torch"

    def forward(self, x_BSD, scale_BD, shift_BD):
        return kernels.modulated_rms_norm(x_BSD, self.weight, scale_BD, shift_BD, self.eps,
                                          backend=self.backend)


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(E)) v over [B, N, S, E] tensors; the one swappable attention op.

    ``kernels`` routes it to Triton or SDPA, the context-parallel plan replaces it with
    an all-gather-K/V version. Key padding mask: [B, L] bool, True = real key.
    """

    backend: str = "torch"

    def forward(self, q_BNSE, k_BNLE, v_BNLE, key_padding_mask_BL=None):
        return kernels.attention(q_BNSE, k_BNLE, v_BNLE, key_padding_mask_BL,
                                 backend=self.backend)


def to_windows(x_BNSE, grid_thw, win_thw):
    """[B, N, t*h*w, E] (t-major) -> [B * windows, N, wt*wh*ww, E], windows in (t, h, w)
    order; ``win_thw`` must tile ``grid_thw``."""
    B, N, _, E = x_BNSE.shape
    (t, h, w), (a, b, c) = grid_thw, win_thw
    x = x_BNSE.reshape(B, N, t // a, a, h // b, b, w // c, c, E)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7, 8)  # (B, t/a, h/b, w/c, N, a, b, c, E)
    return x.reshape(-1, N, a * b * c, E)


def from_windows(x_WNXE, batch: int, grid_thw, win_thw):
    """Inverse of ``to_windows``: -> [B, N, t*h*w, E]."""
    _, N, _, E = x_WNXE.shape
    (t, h, w), (a, b, c) = grid_thw, win_thw
    x = x_WNXE.reshape(batch, t // a, h // b, w // c, N, a, b, c, E)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7, 8)  # (B, N, t/a, a, h/b, b, w/c, c, E)
    return x.reshape(batch, N, t * h * w, E)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention.

    Head count is derived from the projection's output width at run time, so a
    tensor-parallel shard (fewer local heads) runs the same code. With ``window`` set
    (a [t, h, w] in patches), self-attention is restricted to the windows of the patch
    grid passed as ``grid_thw``.
    """

    window: tuple[int, int, int] | None = None

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.core = AttentionCore()

    def reset_parameters(self, std: float):
        for lin in (self.wq, self.wk, self.wv):
            nn.init.trunc_normal_(lin.weight, std=0.02)
        nn.init.trunc_normal_(self.wo.weight, std=std)

    def window_for(self, grid_thw) -> tuple[int, int, int]:
        return effective_window(self.window, grid_thw)

    def window_attention(self, q_BNSE, k_BNLE, v_BNLE, q_grid, kv_grid, win_thw):
        """Attention within windows. K/V cover ``kv_grid`` (whole windows); the queries
        cover ``q_grid``, the same h x w and an equal share of frames of every window in
        time (all of them, or, for a sequence shard, part of one window)."""
        n_t = kv_grid[0] // win_thw[0]
        q_win = (q_grid[0] // n_t, *win_thw[1:])
        q = to_windows(q_BNSE, q_grid, q_win)
        k = to_windows(k_BNLE, kv_grid, win_thw)
        v = to_windows(v_BNLE, kv_grid, win_thw)
        out = self.core(q, k, v, None)  # (B * windows, N, q window, E)
        return from_windows(out, q_BNSE.shape[0], q_grid, q_win)

    def forward(self, x_BSD, context_BLD=None, key_padding_mask_BL=None, grid_thw=None):
        B, S, _ = x_BSD.shape
        kv_in = x_BSD if context_BLD is None else context_BLD
        L = kv_in.shape[1]
        q = self.wq(x_BSD).view(B, S, -1, self.head_dim).transpose(1, 2)  # (B, N, S, E)
        k = self.wk(kv_in).view(B, L, -1, self.head_dim).transpose(1, 2)  # (B, N, L, E)
        v = self.wv(kv_in).view(B, L, -1, self.head_dim).transpose(1, 2)  # (B, N, L, E)
        if self.window is not None and context_BLD is None:
            if grid_thw is None or math.prod(grid_thw) != S:
                raise ValueError(f"window attention needs the patch grid of its {S} tokens, "
                                 f"got grid_thw={grid_thw}")
            win = self.window_for(grid_thw)
            out = self.window_attention(q, k, v, grid_thw, grid_thw, win)
        else:
            out = self.core(q, k, v, key_padding_mask_BL)  # (B, N, S, E)
        out = out.transpose(1, 2).reshape(B, S, -1)  # (B, S, D_local)
        return self.wo(out)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def reset_parameters(self, std: float):
        nn.init.trunc_normal_(self.w1.weight, std=0.02)
        nn.init.trunc_normal_(self.w3.weight, std=0.02)
        nn.init.trunc_normal_(self.w2.weight, std=std)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PatchEmbed(nn.Module):
    """Conv3d patchify with kernel = stride = patch: [B, C, T, H, W] -> [B, S, D].

    The last ``cond_channels`` input channels (the conditioning latent and its mask,
    concatenated after the noisy latent) start at zero, as Emu Video's and Movie Gen's
    upsampler's added inputs do: a freshly built conditioned model, or a text-to-video
    export loaded into one, computes what the text-to-video model computes."""

    def __init__(self, in_channels: int, dim: int, patch: tuple[int, int, int],
                 cond_channels: int = 0):
        super().__init__()
        self.patch = patch
        self.cond_channels = cond_channels
        self.proj = nn.Conv3d(in_channels + cond_channels, dim, kernel_size=patch,
                              stride=patch, bias=False)

    def reset_parameters(self):
        w = self.proj.weight
        n_latent = w.shape[1] - self.cond_channels
        latent = torch.empty_like(w[:, :n_latent])  # the fan of the latent channels alone
        nn.init.xavier_uniform_(latent.view(w.shape[0], -1))
        with torch.no_grad():
            w.zero_()
            w[:, :n_latent].copy_(latent)

    def forward(self, x_BCTHW):
        return self.proj(x_BCTHW).flatten(2).transpose(1, 2)  # (B, S, D), t-major order


class PositionEmbedding(nn.Module):
    """Factorized learnable tables: pos[t, h, w] = pos_t[t] + pos_h[h] + pos_w[w].

    ``token_offset`` is where this (possibly sharded) sequence starts in the full one.
    """

    backend: str = "torch"

    def __init__(self, dim: int, max_t: int, max_h: int, max_w: int):
        super().__init__()
        self.pos_t = nn.Parameter(torch.empty(max_t, dim))
        self.pos_h = nn.Parameter(torch.empty(max_h, dim))
        self.pos_w = nn.Parameter(torch.empty(max_w, dim))

    def reset_parameters(self):
        for p in (self.pos_t, self.pos_h, self.pos_w):
            nn.init.normal_(p, std=0.02)

    def forward(self, x_BSD, grid_thw, token_offset: int = 0):
        return kernels.add_factorized_pos_embed(x_BSD, self.pos_t, self.pos_h, self.pos_w,
                                                grid_thw, token_offset, backend=self.backend)


def timestep_frequencies(t_B: torch.Tensor, dim: int, max_period: float = 10000.0):
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_B.device,
                                                             dtype=torch.float32) / half)
    args = (t_B.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """adaLN-single's shared part: t -> c [B, D] -> six modulation vectors [B, 6, D]."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp_in = nn.Linear(freq_dim, dim, bias=False)
        self.mlp_out = nn.Linear(dim, dim, bias=False)
        self.to_modulation = nn.Linear(dim, 6 * dim, bias=False)

    def reset_parameters(self):
        nn.init.normal_(self.mlp_in.weight, std=0.02)
        nn.init.normal_(self.mlp_out.weight, std=0.02)
        nn.init.zeros_(self.to_modulation.weight)

    def forward(self, t_B):
        freqs = timestep_frequencies(t_B, self.freq_dim).to(self.mlp_in.weight.dtype)
        c_BD = self.mlp_out(F.silu(self.mlp_in(freqs)))
        mod_B6D = self.to_modulation(F.silu(c_BD)).unflatten(1, (6, -1))
        return c_BD, mod_B6D


class TextProjection(nn.Module):
    """One text encoder's output [B, L, K] -> Linear -> LayerNorm -> [B, L, D]."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def reset_parameters(self):
        nn.init.normal_(self.linear.weight, std=self.linear.in_features ** -0.5)
        self.norm.reset_parameters()

    def forward(self, emb_BLK):
        return self.norm(self.linear(emb_BLK))


# --------------------------------------------------------------------------- block
class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_layers = args.n_layers
        self.modulation = nn.Parameter(torch.empty(6, args.dim))  # adaLN-single table
        self.attn_norm = ModulatedRMSNorm(args.dim, args.norm_eps)
        self.attn = Attention(args.dim, args.n_heads)
        self.attn.window = args.block_window(layer_id)
        self.cross_norm = RMSNorm(args.dim, args.norm_eps)
        self.cross_attn = Attention(args.dim, args.n_heads)
        self.ffn_norm = ModulatedRMSNorm(args.dim, args.norm_eps)
        self.ffn = FeedForward(args.dim, args.ffn_dim)

    def reset_parameters(self):
        # Output projections scaled by depth (as in Llama/torchtitan); gates start at 0
        # through the zero-initialised shared modulation linear, so every block starts
        # as the identity on its attention and FFN branches.
        std = 0.02 / math.sqrt(2 * self.n_layers)
        nn.init.normal_(self.modulation, std=1.0 / math.sqrt(self.modulation.shape[-1]))
        self.attn_norm.reset_parameters()
        self.cross_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.attn.reset_parameters(std)
        self.cross_attn.reset_parameters(std)
        self.ffn.reset_parameters(std)
        with torch.no_grad():
            self.modulation[2].zero_()  # attention gate
            self.modulation[5].zero_()  # FFN gate

    def forward(self, x_BSD, mod_B6D, text_BLD, text_mask_BL, grid_thw=None):
        mod = (mod_B6D + self.modulation.unsqueeze(0)).to(x_BSD.dtype)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.unbind(1)  # each (B, D)
        h = self.attn_norm(x_BSD, scale_a, shift_a)
        x_BSD = kernels.gated_residual(x_BSD, gate_a, self.attn(h, grid_thw=grid_thw),
                                       backend=self.attn_norm.backend)
        x_BSD = x_BSD + self.cross_attn(self.cross_norm(x_BSD), text_BLD, text_mask_BL)
        h = self.ffn_norm(x_BSD, scale_f, shift_f)
        x_BSD = kernels.gated_residual(x_BSD, gate_f, self.ffn(h),
                                       backend=self.ffn_norm.backend)
        return x_BSD


class FinalLayer(nn.Module):
    """adaLN-single output head: modulated norm -> Linear(D, prod(patch) * C), zero-init."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.modulation = nn.Parameter(torch.empty(2, args.dim))
        self.norm = ModulatedRMSNorm(args.dim, args.norm_eps)
        self.proj = nn.Linear(args.dim, math.prod(args.patch_size) * args.in_channels, bias=False)

    def reset_parameters(self):
        nn.init.normal_(self.modulation, std=1.0 / math.sqrt(self.modulation.shape[-1]))
        self.norm.reset_parameters()
        nn.init.zeros_(self.proj.weight)

    def forward(self, x_BSD, c_BD):
        shift, scale = (c_BD.unsqueeze(1) + self.modulation.unsqueeze(0)).to(x_BSD.dtype).unbind(1)
        return self.proj(self.norm(x_BSD, scale, shift))  # (B, S, p_t*p_h*p_w*C)


# --------------------------------------------------------------------------- model
class MovieGenTransformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.patch_embed = PatchEmbed(args.in_channels, args.dim, args.patch_size,
                                      args.cond_channels)
        self.pos_embed = PositionEmbedding(args.dim, args.max_t, args.max_h, args.max_w)
        self.time_embed = TimeEmbedding(args.dim, args.time_freq_dim)
        self.text_proj = nn.ModuleDict({name: TextProjection(k, args.dim)
                                        for name, k in args.text_dims.items()})
        self.blocks = nn.ModuleDict({str(i): TransformerBlock(args, i)
                                     for i in range(args.n_layers)})
        self.final_layer = FinalLayer(args)
        self.set_kernel_backend(args.kernels)

    # -- init ---------------------------------------------------------------
    def init_units(self) -> list[tuple[str, nn.Module]]:
        """(name prefix, module) pieces that each initialise all their own parameters
        with ``reset_parameters()``; together they hold every parameter."""
        units = [("patch_embed", self.patch_embed), ("pos_embed", self.pos_embed),
                 ("time_embed", self.time_embed)]
        units += [(f"text_proj.{k}", m) for k, m in self.text_proj.items()]
        units += [(f"blocks.{k}", m) for k, m in self.blocks.items()]
        return units + [("final_layer", self.final_layer)]

    @torch.no_grad()
    def init_weights(self, seed: int | None = None):
        """Initialise every parameter in place (works after ``to_empty`` from meta).

        With ``seed``, each unit draws from a CPU generator seeded by (seed, its name),
        so the result depends on nothing else (``init_unit``; the trainer builds the same
        numbers shard by shard with ``moviegen.parallel.state.init_shards``). Without, the units
        draw in turn from the global generator."""
        for prefix, unit in self.init_units():
            if seed is None:
                unit.reset_parameters()
            else:
                init_unit(prefix, unit, seed)

    def set_kernel_backend(self, setting: str, device: torch.device | str | None = None):
        """Routes norms, residuals, position adds and attention to Triton or torch."""
        backend = kernels.resolve_backend(setting, torch.device(device or "cpu"))
        for module in self.modules():
            if isinstance(module, (ModulatedRMSNorm, AttentionCore, PositionEmbedding)):
                module.backend = backend
        return backend

    # -- shapes -------------------------------------------------------------
    def patch_grid(self, latent_shape_CTHW) -> tuple[int, int, int]:
        _, T, H, W = latent_shape_CTHW
        pt, ph, pw = self.args.patch_size
        if T % pt or H % ph or W % pw:
            raise ValueError(f"latent shape T={T}, H={H}, W={W} is not divisible by the "
                             f"patch size {self.args.patch_size}")
        t, h, w = T // pt, H // ph, W // pw
        if t > self.args.max_t or h > self.args.max_h or w > self.args.max_w:
            raise ValueError(f"patch grid (t={t}, h={h}, w={w}) exceeds the position tables "
                             f"({self.args.max_t}, {self.args.max_h}, {self.args.max_w}); "
                             f"resize them with moviegen.models.transformer.resize_position_tables")
        return t, h, w

    def unpatchify(self, x_BSP, grid_thw):
        t, h, w = grid_thw
        pt, ph, pw = self.args.patch_size
        C = self.args.in_channels
        B = x_BSP.shape[0]
        x = x_BSP.view(B, t, h, w, pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, t, pt, h, ph, w, pw)
        return x.reshape(B, C, t * pt, h * ph, w * pw)

    def embed_text(self, text_embeds: dict, text_masks: dict):
        """Projects each encoder's output and concatenates along the sequence."""
        parts, masks = [], []
        for name, proj in self.text_proj.items():
            if name not in text_embeds:
                raise KeyError(f"text encoder output '{name}' missing (model expects "
                               f"{list(self.text_proj.keys())})")
            parts.append(proj(text_embeds[name]))
            masks.append(text_masks[name].bool())
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)  # (B, L, D), (B, L)

    # -- forward ------------------------------------------------------------
    def with_condition(self, x_BCTHW, cond_BCTHW=None):
        """[noisy latent, conditioning latent, mask] along channels (Emu Video's form);
        the conditioning is all zeros when none is given. Before patchify, hence before
        any sequence split: tensor and context parallelism see one input as before."""
        n = self.args.cond_channels
        if n == 0:
            if cond_BCTHW is not None:
                raise ValueError("this model takes no conditioning (model.cond_channels=0); "
                                 "pass cond_BCTHW=None or use a conditioned model")
            return x_BCTHW
        if cond_BCTHW is None:
            cond_BCTHW = x_BCTHW.new_zeros((x_BCTHW.shape[0], n, *x_BCTHW.shape[2:]))
        elif cond_BCTHW.shape[1] != n or cond_BCTHW.shape[2:] != x_BCTHW.shape[2:] \
                or cond_BCTHW.shape[0] != x_BCTHW.shape[0]:
            raise ValueError(f"conditioning of shape {tuple(cond_BCTHW.shape)} does not fit "
                             f"latents {tuple(x_BCTHW.shape)}: expected [B, {n}, T, H, W] "
                             f"(the conditioning latent and a mask channel; "
                             f"moviegen.conditioning.make_condition builds it)")
        return torch.cat([x_BCTHW, cond_BCTHW.to(x_BCTHW.dtype)], dim=1)

    def forward(self, x_BCTHW, t_B, text_embeds: dict, text_masks: dict, cond_BCTHW=None):
        """Velocity prediction for latents x at flow time t, conditioned on text and, for
        a model with ``cond_channels``, on ``cond_BCTHW`` [B, C + 1, T, H, W] (None: no
        frame given)."""
        grid = self.patch_grid(x_BCTHW.shape[1:])
        x = self.patch_embed(self.with_condition(x_BCTHW, cond_BCTHW))  # (B, S, D)
        c_BD, mod_B6D = self.time_embed(t_B)
        text_BLD, text_mask_BL = self.embed_text(text_embeds, text_masks)
        for block in self.blocks.values():
            x = self.pos_embed(x, grid)  # positions enter every block (Movie Gen)
            x = block(x, mod_B6D, text_BLD, text_mask_BL, grid_thw=grid)
        x = self.final_layer(x, c_BD)  # (B, S, p*C)
        return self.unpatchify(x, grid)  # (B, C, T, H, W)


# --------------------------------------------------------------------------- utilities
def count_parameters(model: nn.Module) -> dict[str, int]:
    """Totals per top-level component (works on the meta device)."""
    counts = {}
    for name, child in model.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["non_embedding"] = counts["total"] - sum(
        p.numel() for p in model.pos_embed.parameters())
    return counts


def resize_table(table_ND: torch.Tensor, new_len: int, mode: str) -> torch.Tensor:
    """One position table to ``new_len`` rows.

    mode "interpolate": linear resampling (the same field of view, more patches).
    mode "extend": keeps the learnt rows and appends freshly initialised ones (Movie Gen's
    temporal table for longer videos); shrinking keeps the first rows.
    """
    if mode not in ("interpolate", "extend"):
        raise ValueError(f"mode must be 'interpolate' or 'extend', got {mode!r}")
    old = table_ND.detach().float()
    if new_len == old.shape[0]:
        return table_ND.detach().clone()
    if mode == "interpolate":
        out = F.interpolate(old.T.unsqueeze(0), size=new_len, mode="linear",
                            align_corners=True).squeeze(0).T
    else:
        extra = torch.randn(max(new_len - old.shape[0], 0), old.shape[1], device=old.device) * 0.02
        out = torch.cat([old, extra], 0)[:new_len]
    return out.to(table_ND.dtype).contiguous()


POSITION_KEYS = {"pos_embed.pos_t": "max_t", "pos_embed.pos_h": "max_h", "pos_embed.pos_w": "max_w"}


@torch.no_grad()
def resize_position_tables(model: MovieGenTransformer, max_t: int, max_h: int, max_w: int,
                           mode: str = "interpolate") -> None:
    """Grows (or shrinks) the model's factorized tables for a new stage, in place."""
    pe = model.pos_embed
    for attr, new_len in (("pos_t", max_t), ("pos_h", max_h), ("pos_w", max_w)):
        setattr(pe, attr, nn.Parameter(resize_table(getattr(pe, attr), new_len, mode)))
    model.args.max_t, model.args.max_h, model.args.max_w = max_t, max_h, max_w


def adapt_stage_state_dict(state: dict, model: MovieGenTransformer,
                           mode: str = "interpolate") -> dict:
    """A checkpoint of an earlier stage -> this model's table sizes (the trainer calls
    this when ``train.init_from`` names weights with smaller position tables) and input
    channels (a text-to-video export gets zero conditioning weights)."""
    out = dict(state)
    key = "patch_embed.proj.weight"
    want = model.args.in_channels + model.args.cond_channels
    if key in out and out[key].shape[1] < want:
        # a text-to-video export into a conditioned model: the conditioning channels
        # start at zero, so the model computes exactly what the export computed
        w = out[key]
        pad = w.new_zeros((w.shape[0], want - w.shape[1], *w.shape[2:]))
        out[key] = torch.cat([w, pad], dim=1)
    for key, attr in POSITION_KEYS.items():
        if key in out:
            target = getattr(model.args, attr)
            if out[key].shape[0] != target:
                out[key] = resize_table(out[key], target, mode)
    return out


def init_unit(prefix: str, unit: nn.Module, seed: int) -> None:
    """``unit.reset_parameters()`` on CPU tensors, drawing from a generator seeded by
    (seed, prefix) only: the same numbers on any layout, device and process."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}/{prefix}".encode(), digest_size=8).digest()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
        unit.reset_parameters()


def build_model(args: ModelArgs, device: torch.device | str = "cpu",
                seed: int | None = None) -> MovieGenTransformer:
    """Meta-device construction, materialise on ``device``, then ``init_weights(seed)``."""
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model

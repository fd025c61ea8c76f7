"""Context parallel, Movie Gen's way: split the tokens, all-gather only K and V.

One sample's video tokens are cut into cp x tp contiguous shards (CP outer, TP inner:
sequence shard index = cp_rank * tp + tp_rank = this rank's coordinate in the flattened
"cp_tp" mesh). Around the plain model, from outside:

  patch_embed   forward hook: keep only this rank's tokens [B, S/(cp*tp), D]
  pos_embed     forward pre-hook: pass this shard's ``token_offset`` into the full grid
  attn          class swap to ``ContextParallelAttention``: Q, K, V are projected for
                the local tokens (S/cp of them after the TP gather); only K and V are
                all-gathered over CP (functional collectives, so the backward is a
                reduce-scatter of dK and dV); local queries attend to the full context.
                No load balancing is needed: attention is bidirectional (no mask).
  cross_attn    untouched: text K/V are replicated, each rank's queries attend to them
  final_layer   forward hook: all-gather the small [B, S/(cp*tp), p*C] output over
                cp x tp so unpatchify and the loss see every token; the backward keeps
                this rank's slice. The loss is therefore a mean over all real tokens of
                the sample (the global count), identical on every rank of the group.

What is overlapped (forward): K is projected first and its all-gather launched at once
(an async c10d work whose handle and buffers are held until the wait); the V projection
runs while K travels; V's all-gather is launched; the Q projection runs while both
travel; attention then waits on K and V. Backward: each reduce-scatter of dV and dK
completes before autograd moves on. Plain c10d work with explicit lifetimes rather than
functional collectives: on gloo, with FSDP2 over the same ranks, the functional form
corrupted the heap (``malloc(): unaligned tcache chunk detected``, ``free(): invalid
pointer``) in two of three 400-step dp_shard 2 x cp 2 runs of the tiny config on torch
2.13; this form ran six such runs clean.
The gathers are not overlapped with the attention kernel itself (flash attention needs
the whole K and V) - ring attention would, at (cp-1)x more latency-bound steps.

Window attention (the model's ``attention_pattern=window``, W.A.L.T): when the CP split
falls on frame boundaries (cp divides the t frames; f = t/cp frames per rank) a rank's
queries need only the K/V of their own windows (``window_exchange``):
  spatial windows, or time windows that f is a multiple of: nothing is exchanged;
  time windows of a = g x f frames (g ranks): K and V go to the g-1 other ranks of the
    window (one all-to-all with empty splits for the rest; backward sums dK, dV back);
  otherwise (frames split across ranks, or windows straddling ranks unevenly): the
    fallback all-gathers Q, K and V, attends over every window, keeps the local rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


# --------------------------------------------------------------------------- gathers
class _LaunchGather(torch.autograd.Function):
    """Starts the all-gather of [s, B, E] into [cp*s, B, E] and returns the (not yet
    filled) output; ``_WaitGather`` must run before it is read. The work handle and the
    input stay referenced in ``pending`` until that wait, so no buffer the collective
    still reads or writes can be freed and reused meanwhile. Backward: the reduce-scatter
    that sums every rank's gradient of these keys/values."""

    @staticmethod
    def forward(ctx, x_SBE, group, pending):
        ctx.group, ctx.size = group, dist.get_world_size(group)
        x_SBE = x_SBE.contiguous()
        out = x_SBE.new_empty((ctx.size * x_SBE.shape[0], *x_SBE.shape[1:]))
        pending.append((dist.all_gather_into_tensor(out, x_SBE, group=group, async_op=True),
                        x_SBE, out))
        return out

    @staticmethod
    def backward(ctx, grad_SBE):
        grad_SBE = grad_SBE.contiguous()
        out = grad_SBE.new_empty((grad_SBE.shape[0] // ctx.size, *grad_SBE.shape[1:]))
        dist.reduce_scatter_tensor(out, grad_SBE, group=ctx.group)
        return out, None, None


class _WaitGather(torch.autograd.Function):
    """Waits for the oldest launched gather; identity for autograd."""

    @staticmethod
    def forward(ctx, out_SBE, pending):
        work, _, buf = pending.pop(0)
        if buf is not out_SBE:
            raise RuntimeError("gathers must be waited on in launch order")
        work.wait()
        return out_SBE.view_as(out_SBE)

    @staticmethod
    def backward(ctx, grad_SBE):
        return grad_SBE, None


def _all_gather_tokens_async(x_BSE: torch.Tensor, group, pending: list) -> torch.Tensor:
    """[B, s, E] -> [cp*s, B, E], launched but not waited on (``_tokens_back`` waits)."""
    return _LaunchGather.apply(x_BSE.transpose(0, 1), group, pending)


def _tokens_back(x_SBE: torch.Tensor, pending: list) -> torch.Tensor:
    return _WaitGather.apply(x_SBE, pending).transpose(0, 1)


def window_exchange(grid_thw, win_thw, cp: int) -> int | None:
    """How many CP ranks' K/V (its own included) one rank's windowed queries read:
    1 = its own only, g = its aligned group of g ranks, None = the all-gather fallback."""
    t, a = grid_thw[0], win_thw[0]
    if t % cp:
        return None  # a rank's tokens do not end on a frame boundary
    f = t // cp
    if f % a == 0:
        return 1
    if a % f == 0:
        return a // f
    return None


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over ``group`` with per-rank splits; the backward sends each
    gradient slice back the way its values came (splits swapped)."""

    @staticmethod
    def forward(ctx, x_SBE, splits, group):
        ctx.splits, ctx.group = splits, group
        x_SBE = x_SBE.contiguous()
        out = x_SBE.new_empty((sum(splits), *x_SBE.shape[1:]))
        dist.all_to_all_single(out, x_SBE, splits, splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_SBE):
        grad_SBE = grad_SBE.contiguous()
        out = grad_SBE.new_empty((sum(ctx.splits), *grad_SBE.shape[1:]))
        dist.all_to_all_single(out, grad_SBE, ctx.splits, ctx.splits, group=ctx.group)
        return out, None, None


def _group_gather_tokens(x_BsE: torch.Tensor, group, rank: int, cp: int, g: int):
    """[B, s, E] -> [B, g*s, E]: the tokens of this rank's group of g consecutive ranks,
    in rank order. One all-to-all over the CP group (zero-sized splits outside the
    group); autograd: the backward all-to-all returns each copy's gradient, and the
    repeat sums them."""
    s = x_BsE.shape[1]
    first = rank - rank % g
    splits = [s if first <= r < first + g else 0 for r in range(cp)]
    x_SBE = x_BsE.transpose(0, 1).contiguous().repeat(g, 1, 1)  # a copy per receiver
    return _AllToAll.apply(x_SBE, splits, group).transpose(0, 1)


class ContextParallelAttention:
    """Self-attention over the full context from a sequence shard. A mixin placed in front
    of the model's attention class (class swap), so parameter names and TP hooks stay as
    they were; it needs ``wq``/``wk``/``wv``/``wo`` projections, ``head_dim`` and ``core``,
    and for windows ``window``, ``window_for`` and ``window_attention``."""

    cp_group: object = None
    cp_rank: int = 0
    cp_size: int = 1

    def forward(self, x_BSD, context_BLD=None, key_padding_mask_BL=None, grid_thw=None):
        if context_BLD is not None or key_padding_mask_BL is not None:
            raise ValueError("ContextParallelAttention is for unmasked self-attention")
        if getattr(self, "window", None) is not None:
            return self._window_forward(x_BSD, grid_thw)
        B, s, _ = x_BSD.shape  # s = S/cp tokens (after the TP gather, if any)
        pending: list = []
        k_full = _all_gather_tokens_async(self.wk(x_BSD), self.cp_group, pending)  # K in flight
        v_full = _all_gather_tokens_async(self.wv(x_BSD), self.cp_group, pending)  # V in flight
        q = self.wq(x_BSD).view(B, s, -1, self.head_dim).transpose(1, 2)   # (B, N, s, E)
        k = _tokens_back(k_full, pending).reshape(B, -1, q.shape[1], self.head_dim).transpose(1, 2)
        v = _tokens_back(v_full, pending).reshape(B, -1, q.shape[1], self.head_dim).transpose(1, 2)
        out = self.core(q, k, v, None)                                    # (B, N, s, E)
        return self.wo(out.transpose(1, 2).reshape(B, s, -1))

    def _window_forward(self, x_BSD, grid_thw):
        B, s, _ = x_BSD.shape
        if grid_thw is None or s * self.cp_size != grid_thw[0] * grid_thw[1] * grid_thw[2]:
            raise ValueError(f"window attention needs the full patch grid of {s} x "
                             f"{self.cp_size} tokens, got grid_thw={grid_thw}")
        win = self.window_for(grid_thw)
        g = window_exchange(grid_thw, win, self.cp_size)
        E = self.head_dim

        def heads(t_BsD):
            return t_BsD.reshape(B, t_BsD.shape[1], -1, E).transpose(1, 2)  # (B, N, ., E)

        if g is None:  # fallback: every rank attends over every window, keeps its rows
            pending: list = []
            q, k, v = (heads(_tokens_back(_all_gather_tokens_async(lin(x_BSD), self.cp_group,
                                                                   pending), pending))
                       for lin in (self.wq, self.wk, self.wv))
            out = self.window_attention(q, k, v, grid_thw, grid_thw, win)
            out = out.narrow(2, self.cp_rank * s, s)
        else:
            f, h, w = grid_thw[0] // self.cp_size, grid_thw[1], grid_thw[2]
            k, v = self.wk(x_BSD), self.wv(x_BSD)
            if g > 1:  # K in flight while V is sent, both while Q is projected
                k = _group_gather_tokens(k, self.cp_group, self.cp_rank, self.cp_size, g)
                v = _group_gather_tokens(v, self.cp_group, self.cp_rank, self.cp_size, g)
            q = heads(self.wq(x_BSD))
            out = self.window_attention(q, heads(k), heads(v), (f, h, w), (g * f, h, w), win)
        return self.wo(out.transpose(1, 2).reshape(B, s, -1))


# --------------------------------------------------------------------------- shard / gather
class _GatherSequence(torch.autograd.Function):
    """All-gather [B, s, P] -> [B, group*s, P]; backward keeps this rank's slice (every
    rank computes the same loss on the gathered tensor, so nothing is summed)."""

    @staticmethod
    def forward(ctx, x_BsP, group, rank, size):
        ctx.rank, ctx.s = rank, x_BsP.shape[1]
        out = torch.empty((size * x_BsP.shape[1], *x_BsP.shape[:1], *x_BsP.shape[2:]),
                          dtype=x_BsP.dtype, device=x_BsP.device)
        dist.all_gather_single(out, x_BsP.transpose(0, 1).contiguous(), group=group)
        return out.transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad_BSP):
        return grad_BSP.narrow(1, ctx.rank * ctx.s, ctx.s), None, None, None


def apply_context_parallel(model, seq_mesh, cp_mesh) -> None:
    """Shards tokens over ``seq_mesh`` (cp x tp) and makes self-attention gather K/V over
    ``cp_mesh``. Call after tensor parallel (the TP hooks stay on the swapped modules)."""
    seq_group, seq_rank, seq_size = seq_mesh.get_group(), seq_mesh.get_local_rank(), seq_mesh.size()

    def keep_local_tokens(module, args, out_BSD):
        S = out_BSD.shape[1]
        if S % seq_size:
            raise ValueError(f"{S} tokens do not split over cp x tp = {seq_size} ranks")
        return out_BSD.narrow(1, seq_rank * (S // seq_size), S // seq_size)

    def local_token_offset(module, args, kwargs):
        x_BsD = args[0]
        kwargs["token_offset"] = seq_rank * x_BsD.shape[1]
        return args, kwargs

    def gather_tokens(module, args, out_BsP):
        return _GatherSequence.apply(out_BsP, seq_group, seq_rank, seq_size)

    model.patch_embed.register_forward_hook(keep_local_tokens)
    model.pos_embed.register_forward_pre_hook(local_token_offset, with_kwargs=True)
    model.final_layer.register_forward_hook(gather_tokens)
    if cp_mesh is not None and cp_mesh.size() > 1:
        for block in model.blocks.values():
            cls = type(block.attn)
            if cls not in _CP_CLASSES:
                _CP_CLASSES[cls] = type(f"ContextParallel{cls.__name__}",
                                        (ContextParallelAttention, cls), {})
            block.attn.__class__ = _CP_CLASSES[cls]
            block.attn.cp_group = cp_mesh.get_group()
            block.attn.cp_rank, block.attn.cp_size = cp_mesh.get_local_rank(), cp_mesh.size()


_CP_CLASSES: dict[type, type] = {}

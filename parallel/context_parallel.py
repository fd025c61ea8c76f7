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
(async: an AsyncCollectiveTensor is only waited on when first read); the V projection
runs while K travels; V's all-gather is launched; the Q projection runs while both
travel; attention then waits on K and V. Backward: autograd runs the attention
backward, the Q projection's backward, then issues the reduce-scatters of dV and dK;
the V projection's backward (dX and dW of wv) runs while dK is being reduce-scattered.
The gathers are not overlapped with the attention kernel itself (flash attention needs
the whole K and V) - ring attention would, at (cp-1)x more latency-bound steps.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


# --------------------------------------------------------------------------- gathers
def _all_gather_tokens_async(x_BSE: torch.Tensor, group) -> torch.Tensor:
    """[B, s, E] -> [cp*s, B, E], launched but not waited on (gather along dim 0 keeps
    the functional collective's AsyncCollectiveTensor un-waited; autograd: backward is a
    reduce-scatter, summing every rank's contribution to these keys/values)."""
    return funcol.all_gather_single_autograd(x_BSE.transpose(0, 1).contiguous(), 0, group)


def _tokens_back(x_SBE: torch.Tensor) -> torch.Tensor:
    return x_SBE.transpose(0, 1)  # waits here, on first use


class ContextParallelAttention:
    """Self-attention over the full context from a sequence shard. A mixin placed in front
    of the model's attention class (class swap), so parameter names and TP hooks stay as
    they were; it needs ``wq``/``wk``/``wv``/``wo`` projections, ``head_dim`` and ``core``."""

    cp_group: object = None

    def forward(self, x_BSD, context_BLD=None, key_padding_mask_BL=None):
        if context_BLD is not None or key_padding_mask_BL is not None:
            raise ValueError("ContextParallelAttention is for unmasked self-attention")
        B, s, _ = x_BSD.shape  # s = S/cp tokens (after the TP gather, if any)
        k_full = _all_gather_tokens_async(self.wk(x_BSD), self.cp_group)  # K in flight
        v_full = _all_gather_tokens_async(self.wv(x_BSD), self.cp_group)  # V in flight
        q = self.wq(x_BSD).view(B, s, -1, self.head_dim).transpose(1, 2)   # (B, N, s, E)
        k = _tokens_back(k_full).reshape(B, -1, q.shape[1], self.head_dim).transpose(1, 2)
        v = _tokens_back(v_full).reshape(B, -1, q.shape[1], self.head_dim).transpose(1, 2)
        out = self.core(q, k, v, None)                                    # (B, N, s, E)
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


_CP_CLASSES: dict[type, type] = {}

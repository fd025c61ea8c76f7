"""Per-rank memory and communication of a layout: the one model behind
benchmarks/plan.py and ``python -m moviegen.info`` (through moviegen/planning.py).

Static memory is read from the sharded tensors themselves (``sharded_state_bytes``: the
model after the real ``parallelize``, on the meta device, under a fake process group of
any world size; rank 0 holds the largest FSDP shard). Activations and communication are
models of this code.

Activation model (bytes saved for backward per block, one sample of S tokens, b bytes
per activation element; s = S/(cp*tp) sequence-parallel tokens, g = S/cp tokens after
the TP gather, Dt = D/tp, Ft = F/tp, N heads, L text tokens). Derived op by op from
moviegen/model.py with the torch reference kernels (RMSNorm upcasts to fp32 and keeps
x32 and x32*rstd; the modulated norm also keeps its output for the (1+scale) mul):
  none       norms (8 + b) s D x 2 modulated + 8 s D cross; gated residuals 2b s D;
             sublayer inputs b g D x 3 (the gathered inputs of Q/K/V, cross Q, W1/W3);
             self-attention Q, out, out reshaped for O (3 b g Dt) + full-context K, V
             (2 b S Dt: the CP all-gathered ones) + logsumexp (4 g N/tp); cross Q, out,
             reshaped out (3 b g Dt) + text K, V (2 b L Dt); SwiGLU 4 b g Ft
  full       the block input (b s D)
  selective  the block input and the three row-parallel results after their reduce-
             scatter (4 b s D), Q, K, V, cross Q and both attention outputs (6 b g Dt),
             text K, V, W1 and W3 outputs (2 b g Ft), two logsumexps; see
             moviegen/parallel/activation_checkpoint.py
The peak is at the backward of the last block: the other blocks' saved tensors plus the
last block rematerialised in full. Transient (every mode): the full [S, D] position
table built before slicing its rows and the patch embedding's [S, D] output.
Checked against MemTracker's measured peak on TP 2 x CP 2 (tests/test_memory_model.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

from torch.distributed.tensor import DTensor

GiB = 2**30
GB = 1e9


# --------------------------------------------------------------------------- static
def sharded_state_bytes(model, n_layers: int | None = None, param_bytes_compute: int = 2,
                        master_bytes: int = 4, grad_bytes: int = 4, optim_states: int = 2) -> dict:
    """Parameter, gradient and AdamW bytes on this rank, from the local shards; plus the
    FSDP working set (largest block gathered in compute dtype x2 for prefetch, and its
    unsharded gradient in compute dtype + fp32 for the reduce-scatter).

    ``n_layers``: the depth to report for when ``model`` was built with fewer (identical)
    blocks: FSDP shards every block on its own, so each block's local share is the same
    and the block part scales exactly."""
    blocks = list(model.blocks.values())
    scale = (n_layers / len(blocks)) if n_layers else 1.0
    block_ids = {id(p) for b in blocks for p in b.parameters()}
    outside = sum(_local_numel(p) for p in model.parameters() if id(p) not in block_ids)
    inside = sum(_local_numel(p) for b in blocks for p in b.parameters())
    local = int(outside + round(inside * scale))
    block_unsharded = max(sum(_tp_local_numel(p) for p in b.parameters()) for b in blocks)
    return {
        "params_local": local,
        "param_bytes": local * master_bytes,
        "grad_bytes": local * grad_bytes,
        "optimizer_bytes": local * master_bytes * optim_states,
        "block_params_per_tp_rank": block_unsharded,
        "fsdp_buffer_bytes": block_unsharded * (2 * param_bytes_compute
                                                + param_bytes_compute + 4),
    }


def _local_numel(p) -> int:
    return p.to_local().numel() if isinstance(p, DTensor) else p.numel()


def _tp_local_numel(p) -> int:
    """Elements of one TP rank's slice (what FSDP gathers for this rank)."""
    if not isinstance(p, DTensor):
        return p.numel()
    n = p.numel()
    names = p.device_mesh.mesh_dim_names or ()
    for i, pl in enumerate(p.placements):
        if i < len(names) and names[i] == "tp" and not pl.is_replicate():
            n //= p.device_mesh.size(i)
    return n


def block_params_per_tp_rank(model) -> int:
    return sharded_state_bytes(model)["block_params_per_tp_rank"]


# --------------------------------------------------------------------------- activations
@dataclass
class Shape:
    S: int          # video tokens per sample
    D: int
    F: int
    N: int          # heads
    L: int          # text tokens
    layers: int
    tp: int = 1
    cp: int = 1
    b: int = 2      # bytes per activation element
    batch: int = 1  # samples per rank

    @property
    def s(self):
        return self.S // (self.cp * self.tp)

    @property
    def g(self):
        return self.S // self.cp


def block_saved_bytes(sh: Shape, mode: str) -> float:
    """Bytes one block keeps for its backward (between its forward and its backward)."""
    s, g, S, D, b = sh.s, sh.g, sh.S, sh.D, sh.b
    Dt, Ft, Nt, L = sh.D / sh.tp, sh.F / sh.tp, sh.N / sh.tp, sh.L
    if mode == "none":
        per = ((24 + 2 * b) * s * D + 2 * b * s * D + 3 * b * g * D
               + 3 * b * g * Dt + 2 * b * S * Dt + 4 * g * Nt
               + 3 * b * g * Dt + 2 * b * L * Dt + 4 * g * Nt
               + 4 * b * g * Ft)
    elif mode == "full":
        per = b * s * D
    elif mode == "selective":
        # block input + three sequence-sharded row-parallel results (after the
        # reduce-scatter; the matmul output itself when tp = 1) + Q, K, V, cross Q and
        # both attention outputs [S/cp, D/tp] + text K, V + W1, W3 + two logsumexps
        per = (4 * b * s * D + 6 * b * g * Dt + 2 * b * L * Dt + 2 * b * g * Ft
               + 8 * g * Nt)
    else:
        raise ValueError(f"activation checkpointing mode must be none, full or selective, "
                         f"got {mode!r}")
    return per * sh.batch


def transient_bytes(sh: Shape, table_bytes: int = 4) -> float:
    return (table_bytes * sh.S * sh.D + sh.b * sh.S * sh.D) * sh.batch


def activation_peak_bytes(sh: Shape, mode: str, table_bytes: int = 4,
                          full_blocks: int = 0) -> float:
    """Peak activation bytes of one training step. ``full_blocks`` (selective only): the
    first blocks recomputed fully (the memory-budget mode).

    The peak is at the backward of the last block: every other block's saved tensors,
    plus the last block rematerialised in full (what "none" keeps) while it runs."""
    k = full_blocks if mode == "selective" else 0
    per_block = [block_saved_bytes(sh, "full")] * k \
        + [block_saved_bytes(sh, mode)] * (sh.layers - k)
    return sum(per_block[:-1]) + block_saved_bytes(sh, "none") + transient_bytes(sh, table_bytes)


def full_blocks_for_budget(sh: Shape, budget_bytes: float, other_bytes: float = 0.0,
                           table_bytes: int = 4) -> int | None:
    """Fewest blocks to recompute fully (the rest selective) so that activations plus
    ``other_bytes`` fit ``budget_bytes``; None when even all-full does not fit."""
    for k in range(sh.layers + 1):
        if activation_peak_bytes(sh, "selective", table_bytes, k) + other_bytes <= budget_bytes:
            return k
    return None


def recompute_fraction(args, sh: Shape, mode: str, full_blocks: int = 0) -> float:
    """Extra forward FLOPs of the recomputation, as a fraction of the blocks' forward.

    full: the whole block again; selective under TP: the three row-parallel matmuls
    (O, cross O, W2), whose full-width outputs are not kept; no TP: nothing."""
    D, F = args.dim, args.ffn_dim
    per_token = 6 * D * D + 3 * D * F  # block matmul weights per video token (Q K V O, cross Q O, SwiGLU)
    attn = 4 * sh.S * D                # attention scores + values, FLOPs per token
    block = 2 * per_token + attn
    row = 2 * (2 * D * D + D * F) if sh.tp > 1 else 0
    k = full_blocks if mode == "selective" else (sh.layers if mode == "full" else 0)
    sel = (sh.layers - k) if mode == "selective" else 0
    return (k * block + sel * row) / (sh.layers * block)


# --------------------------------------------------------------------------- one layout
@contextmanager
def fake_world(world: int):
    """A process group of ``world`` ranks in this one process (torch's "fake" backend:
    collectives are no-ops, meshes and DTensors are real); this process is rank 0."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised; plan outside training")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def layout_dims(world: int, tp: int, cp: int, dp_replicate: int = 1):

    from moviegen.parallel.parallel_dims import ParallelDims
    return ParallelDims.from_config(SimpleNamespace(dp_replicate=dp_replicate, dp_shard=-1,
                                                    cp=cp, tp=tp), world)


def layout_memory(static: dict, args, dims, seq_len: int, text_len: int, ac: str,
                  full_blocks: int = 0, act_bytes: int = 2) -> dict:
    """Per-rank memory (GB = 1e9 bytes) of one layout: state from the sharded tensors
    (``sharded_state_bytes``), activations from the per-block model (bf16 activations
    and position tables), one sample per CP x TP group."""
    sh = Shape(S=seq_len, D=args.dim, F=args.ffn_dim, N=args.n_heads, L=text_len,
               layers=args.n_layers, tp=dims.tp, cp=dims.cp, b=act_bytes)
    act = activation_peak_bytes(sh, ac, table_bytes=act_bytes, full_blocks=full_blocks)
    row = {"params_per_rank": static["params_local"],
           "param_gb": static["param_bytes"] / GB, "grad_gb": static["grad_bytes"] / GB,
           "optimizer_gb": static["optimizer_bytes"] / GB,
           "fsdp_buffer_gb": static["fsdp_buffer_bytes"] / GB, "activation_gb": act / GB}
    row["total_gb"] = sum(row[k] for k in ("param_gb", "grad_gb", "optimizer_gb",
                                           "fsdp_buffer_gb", "activation_gb"))
    return row


def state_and_buffers_gb(static: dict) -> float:
    return (static["param_bytes"] + static["grad_bytes"] + static["optimizer_bytes"]
            + static["fsdp_buffer_bytes"]) / GB


# --------------------------------------------------------------------------- communication
def cp_block_bytes(sh: Shape, kv_ranks) -> float:
    """Bytes one rank sends in one block's self-attention forward for context parallel.

    ``kv_ranks`` (moviegen.parallel.context_parallel.window_exchange): "full" = full attention,
    all-gather K and V; 1 = windows on this rank's own frames, nothing; g = K and V of
    this rank's S/cp tokens sent to the g-1 other ranks of its window; None = the window
    fallback, all-gather Q, K and V. The backward sends as much again (reduce-scatter or
    all-to-all of the gradients)."""
    cp, Dt, b = sh.cp, sh.D / sh.tp, sh.b
    if kv_ranks == "full":
        return 2 * (cp - 1) / cp * sh.S * Dt * b
    if kv_ranks is None:
        return 3 * (cp - 1) / cp * sh.S * Dt * b
    return 2 * (kv_ranks - 1) * (sh.S / cp) * Dt * b


def comm_bytes_per_rank(sh: Shape, fsdp: int, dp_replicate: int, params_per_tp_rank: int,
                        mode: str, reshard_after_forward: bool = True,
                        param_bytes: int = 2, reduce_bytes: int = 4,
                        cp_kv_ranks: list | None = None) -> dict:
    """Bytes each rank sends per optimizer step (one sample per rank), by mechanism.
    ``cp_kv_ranks``: per block, as ``cp_block_bytes`` takes it (None: full attention)."""
    n, r, tp, cp = fsdp, dp_replicate, sh.tp, sh.cp
    P = params_per_tp_rank
    ag = (n - 1) / n * P * param_bytes
    fsdp_b = ag * (2 if reshard_after_forward else 1) + (n - 1) / n * P * reduce_bytes
    hsdp_b = 2 * (r - 1) / r * P / n * reduce_bytes
    layers, b, g, S, D, L = sh.layers, sh.b, sh.g, sh.S, sh.D, sh.L
    Dt = D / tp
    recompute = mode in ("full", "selective")
    # TP + SP per block: 3 gathers + 3 reduce-scatters of [g, D] forward, mirrored in
    # backward, plus the all-reduce of the text gradient (cross-attention K/V input).
    tp_one = (tp - 1) / tp * g * D * b
    tp_fwd = 6 * tp_one
    tp_b = layers * (2 * tp_fwd + 2 * (tp - 1) / tp * L * D * b
                     + (tp_fwd if mode == "full" else 3 * tp_one if mode == "selective" else 0))
    # CP, ours: all-gather K and V forward, reduce-scatter dK, dV backward (+ the gathers
    # again when the block is recomputed)
    cp_one = 2 * (cp - 1) / cp * S * Dt * b
    per_block = [cp_block_bytes(sh, k) for k in (cp_kv_ranks or ["full"] * layers)] \
        if cp > 1 else [0.0] * layers
    cp_b = sum(per_block) * (2 + (1 if recompute else 0))
    # for comparison: ring attention passes K/V chunks around the ring forward and
    # K/V plus dK/dV backward; Ulysses all-to-alls Q, K, V and the output, both ways
    ring_b = layers * cp_one * (3 + (1 if recompute else 0))
    a2a = (cp - 1) / cp * (S / cp) * Dt * b
    ulysses_b = layers * a2a * (8 + (4 if recompute else 0))
    return {"fsdp": fsdp_b + hsdp_b, "tp": tp_b * sh.batch,
            "cp": cp_b * sh.batch, "cp_block_forward": [x * sh.batch for x in per_block],
            "ring_attention": ring_b * sh.batch,
            "ulysses": ulysses_b * sh.batch}

"""Per-rank memory and communication of a layout: what benchmarks/plan.py prints.

Static memory is read from the sharded tensors themselves (``sharded_state_bytes``: the
model after the real ``parallelize``, on the meta device, under any process group - a
fake one at world size 6144). Activations and communication are models of this code.

Activation model (bytes saved for backward per block, one sample of S tokens, b bytes
per activation element; s = S/(cp*tp) sequence-parallel tokens, g = S/cp tokens after
the TP gather, Dt = D/tp, Ft = F/tp, N heads, L text tokens). Derived op by op from
moviegen/model.py with the torch reference kernels (RMSNorm upcasts to fp32 and keeps
x32 and x32*rstd; the modulated norm also keeps its bf16 output for the (1+scale) mul):
  norms           (8 + b) s D x 2 modulated + 8 s D cross            = (24 + 2b) s D
  gated residuals b s D x 2 (the gate multiplies the branch output)  =  2b s D
  sublayer inputs b g D x 3 (the gathered input of Q/K/V, cross Q, W1/W3)
  attention       self: Q, out, out reshaped for O (3 b g Dt) + full-context K and V
                  (2 b S Dt: the CP all-gathered ones) + logsumexp (4 g N/tp);
                  cross: Q, out, reshaped out (3 b g Dt) + text K/V (2 b L Dt)
  SwiGLU          W1 out, W3 out, silu(W1 out), product (4 b g Ft)
AC full keeps each block's input only (b s D) and recomputes one block during its
backward (+ one block of "none"). AC selective keeps matmul outputs (Q, K, V, O, cross
Q/O, W1, W3, W2), attention outputs and reduce-scatter outputs, and recomputes norms,
elementwise ops and all-gathers (+ the rest of one block during its backward).
Transient (every mode): the full [S, D] position table built before slicing its rows
(4 S D with fp32 tables) and the patch embedding's [S, D] output before sharding.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.tensor import DTensor

GiB = 2**30


# --------------------------------------------------------------------------- static
def sharded_state_bytes(model, param_bytes_compute: int = 2, master_bytes: int = 4,
                        grad_bytes: int = 4, optim_states: int = 2) -> dict:
    """Parameter, gradient and AdamW bytes on this rank, from the local shards; plus the
    FSDP working set (largest block gathered in compute dtype x2 for prefetch, and its
    unsharded gradient in compute dtype + fp32 for the reduce-scatter)."""
    local = 0
    block_unsharded = 0
    for name, p in model.named_parameters():
        n_local = p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        local += n_local
    for block in model.blocks.values():
        unsharded = 0
        for p in block.parameters():
            if isinstance(p, DTensor):
                tp_local = p.numel()
                for i, pl in enumerate(p.placements):
                    if p.device_mesh.mesh_dim_names and \
                            p.device_mesh.mesh_dim_names[i] == "tp" and not pl.is_replicate():
                        tp_local //= p.device_mesh.size(i)
                unsharded += tp_local
            else:
                unsharded += p.numel()
        block_unsharded = max(block_unsharded, unsharded)
    return {
        "params_local": local,
        "param_bytes": local * master_bytes,
        "grad_bytes": local * grad_bytes,
        "optimizer_bytes": local * master_bytes * optim_states,
        "block_params_per_tp_rank": block_unsharded,
        "fsdp_buffer_bytes": block_unsharded * (2 * param_bytes_compute
                                                + param_bytes_compute + 4),
    }


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
        rs = 3 * b * s * D if sh.tp > 1 else 0
        per = (b * s * D                               # block input
               + 3 * b * g * Dt + b * g * Dt + 4 * g * Nt + b * g * D   # self QKV, out, O
               + b * g * Dt + 2 * b * L * Dt + b * g * Dt + 4 * g * Nt + b * g * D  # cross
               + 2 * b * g * Ft + b * g * D           # W1, W3, W2
               + rs)
    else:
        raise ValueError(mode)
    return per * sh.batch


def transient_bytes(sh: Shape, table_bytes: int = 4) -> float:
    return (table_bytes * sh.S * sh.D + sh.b * sh.S * sh.D) * sh.batch


def activation_peak_bytes(sh: Shape, mode: str, table_bytes: int = 4) -> float:
    saved = sh.layers * block_saved_bytes(sh, mode)
    # the block being recomputed holds what its checkpoint did not keep
    recompute = (block_saved_bytes(sh, "none") - block_saved_bytes(sh, mode)
                 if mode != "none" else 0)
    return saved + recompute + transient_bytes(sh, table_bytes)


# --------------------------------------------------------------------------- communication
def comm_bytes_per_rank(sh: Shape, fsdp: int, dp_replicate: int, params_per_tp_rank: int,
                        mode: str, reshard_after_forward: bool = True,
                        param_bytes: int = 2, reduce_bytes: int = 4) -> dict:
    """Bytes each rank sends per optimizer step (one sample per rank), by mechanism."""
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
    cp_b = layers * cp_one * (2 + (1 if recompute else 0))
    # for comparison: ring attention passes K/V chunks around the ring forward and
    # K/V plus dK/dV backward; Ulysses all-to-alls Q, K, V and the output, both ways
    ring_b = layers * cp_one * (3 + (1 if recompute else 0))
    a2a = (cp - 1) / cp * (S / cp) * Dt * b
    ulysses_b = layers * a2a * (8 + (4 if recompute else 0))
    return {"fsdp": fsdp_b + hsdp_b, "tp": tp_b * sh.batch,
            "cp": cp_b * sh.batch, "ring_attention": ring_b * sh.batch,
            "ulysses": ulysses_b * sh.batch}

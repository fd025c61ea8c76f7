"""Spawn targets for tests/test_memory_model.py: one training step of a small fp32 model
on TP 2 x CP 2 (4 gloo ranks) per AC mode, measuring the activation peak with torch's
MemTracker and returning the loss and every gradient (full tensors) for comparison."""
from __future__ import annotations

import os

import torch

# Small, but with activations well above the parameters: 8 x 16 x 16 latent = 512 tokens
# (128 per rank), 4 blocks.
DIM, FFN, HEADS, LAYERS, TEXT_LEN, TEXT_DIM = 128, 384, 4, 4, 16, 32
LATENT = (16, 8, 32, 32)
DEBUG = bool(os.environ.get("MEMORY_RANKS_DEBUG"))


def model_args():
    from moviegen.models.transformer import ModelArgs
    return ModelArgs(dim=DIM, n_layers=LAYERS, n_heads=HEADS, ffn_dim=FFN, max_t=8, max_h=16,
                     max_w=16, text_dims={"byt5": TEXT_DIM}, time_freq_dim=64)


def tokens() -> int:
    C, T, H, W = LATENT
    return T * (H // 2) * (W // 2)


def _batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, *LATENT, generator=g)
    target = torch.randn(1, *LATENT, generator=g)
    t = torch.rand(1, generator=g)
    emb = {"byt5": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)}
    mask = {"byt5": torch.ones(1, TEXT_LEN, dtype=torch.bool)}
    return x, t, target, emb, mask


def _activation_peak(tracker) -> int:
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    peak = {str(k).split(".")[-1]: v for k, v in peak.items()}
    if DEBUG:
        print({k: round(v / 2**20, 3) for k, v in peak.items()})
    return peak["Total"] - peak.get("PARAM", 0) - peak.get("GRAD", 0) - peak.get("OPT", 0)


def step_per_mode(rank: int, world_size: int, modes: list[tuple[str, int]], layout: dict):
    """For each (ac, full_blocks): loss, gradients and the measured activation peak."""
    import torch.distributed as dist
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.tensor import DTensor

    from dist_helpers import sharded_copy
    from moviegen.config import ParallelConfig
    from moviegen.flow import flow_matching_loss
    from moviegen.parallel.tensor_parallel import finish_sequence_parallel_grads
    from moviegen.models.transformer import MovieGenTransformer
    from moviegen.parallel.state import canonical_name

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        args = model_args()
        torch.manual_seed(0)
        with torch.device("meta"):
            ref = MovieGenTransformer(args)
        ref.to_empty(device="cpu")
        ref.init_weights()
        with torch.no_grad():  # perturb the zero-initialised gates so every grad is non-zero
            for name, p in ref.named_parameters():
                if name.endswith("to_modulation.weight") or name.startswith("final_layer.proj"):
                    p.add_(torch.randn(p.shape) * 0.05)
        state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        x, t, target, emb, mask = _batch()
        out = []
        for ac, full_blocks in modes:
            cfg = ParallelConfig(dp_shard=1, cp=layout["cp"], tp=layout["tp"], ac=ac,
                                 ac_full_blocks=full_blocks, param_dtype="fp32")
            model, par, dims = sharded_copy(args, state, cfg)
            tracker = MemTracker()
            tracker.track_external(model)
            with tracker:
                sum_sq, count = flow_matching_loss(model(x, t, emb, mask), target)
                loss = sum_sq / count
                loss.backward()
            finish_sequence_parallel_grads(model)
            grads = {canonical_name(n): (p.grad.full_tensor() if isinstance(p.grad, DTensor)
                                         else p.grad).detach().clone()
                     for n, p in model.named_parameters()}
            out.append({"ac": ac, "full_blocks": full_blocks, "loss": loss.item(),
                        "peak_bytes": _activation_peak(tracker), "grads": grads})
            del model, par, tracker
        return out
    finally:
        dist.destroy_process_group()

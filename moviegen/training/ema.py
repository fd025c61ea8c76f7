"""Exponential moving average of the (possibly sharded) model parameters.

    ema = EMA(model, decay=0.9999)
    ...; optimizer.step(); ema.update(model)

The shadow copy of each parameter is a clone of the parameter itself, so with FSDP2 or
tensor parallelism it is a DTensor with the same placements: every rank keeps only its
shard, the update is local (no communication), and the checkpoint saves and reshards it
like the weights. ``full_state_dict()`` gathers it for the inference export
(``ema.safetensors``, which ``moviegen.sample --ema`` reads).

Names are the checkpoint's FQNs (activation-checkpoint and compile wrappers removed), so
EMA keys match ``model.state_dict()`` of the plain, unwrapped model.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from moviegen.parallel.state import canonical_name, gather_full_state_dict, model_tensors

class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.reset(model)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Shadow weights := the model's current parameters."""
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = {canonical_name(n): p.detach().clone().float()
                       for n, p in model.named_parameters() if p.requires_grad}

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n].detach() for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, shard by shard."""
        shadow = list(self.shadow.values())
        params = self._params(model)
        if params and params[0].dtype != shadow[0].dtype:
            params = [p.float() for p in params]
        try:
            torch._foreach_lerp_(shadow, params, 1.0 - self.decay)
        except (RuntimeError, NotImplementedError):  # mixed DTensor meshes in one list
            for s, p in zip(shadow, params):
                s.lerp_(p, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The model runs with the EMA weights inside the block (shard by shard, no
        communication); its own weights are back afterwards."""
        params = self._params(model)
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p, s in zip(params, self.shadow.values()):
                p.copy_(s)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k, t in self.shadow.items():
            if state[k] is not t:
                t.copy_(state[k])

    def full_state_dict(self, model: nn.Module, is_main: bool) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict with parameters replaced by EMA weights (CPU, in
        the parameters' dtype) on the main rank; None elsewhere. Collective."""
        dtypes = {canonical_name(n): p.dtype for n, p in model.named_parameters()}
        out = gather_full_state_dict(self.shadow.items(), is_main, dtypes)
        buffers = [(n, b) for n, b in model_tensors(model) if n not in self.shadow]
        rest = gather_full_state_dict(buffers, is_main)
        return {**out, **rest} if is_main else None

"""AdamW and its learning-rate schedule, from the ``train`` section (every model's)."""
from __future__ import annotations

import math

import torch


def lr_lambda(train_cfg):
    """Linear warmup, then constant or cosine down to ``min_lr_ratio`` at ``steps``."""
    t = train_cfg

    def fn(step: int) -> float:
        if t.warmup_steps > 0 and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "constant":
            return 1.0
        span = max(t.steps - t.warmup_steps, 1)
        progress = min(max(step - t.warmup_steps, 0) / span, 1.0)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay for matrices; not for norms, biases, position or modulation tables."""
    return not (p.ndim < 2 or "pos_embed" in name or "modulation" in name)


def match_trainable(names: list[str], patterns: list[str]) -> set[str]:
    """The parameter names that match any glob pattern (``fnmatch``: ``*`` also crosses
    dots); a pattern that matches nothing is an error, so a typo cannot freeze the model."""
    import fnmatch

    chosen: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"pattern {pattern!r} matches no parameter (names look like "
                             f"'{names[-1]}'; top-level parts: {', '.join(tops)})")
        chosen.update(hits)
    return chosen


def check_trainable(cfg) -> None:
    """Every train.trainable pattern names a parameter of the configured model (built on
    the meta device: no memory, no process group); a ConfigError naming the key if not."""
    if not cfg.train.trainable:
        return
    from moviegen.config.core import ConfigError
    from moviegen.models.transformer import MovieGenTransformer, resolve_model_args

    args = resolve_model_args(cfg.model, {e.name: 8 for e in cfg.text.encoders})
    with torch.device("meta"):
        names = [n for n, _ in MovieGenTransformer(args).named_parameters()]
    try:
        match_trainable(names, cfg.train.trainable)
    except ValueError as e:
        raise ConfigError(f"train.trainable: {e}", key="train.trainable") from None


def freeze_all_but(model: torch.nn.Module, patterns: list[str]) -> set[str]:
    """requires_grad=False on every parameter outside ``patterns`` (empty: all train).

    Applied to the plain model before it is sharded: FSDP2 then reduce-scatters no
    gradient for a frozen parameter and the optimizer (built over requires_grad
    parameters) keeps no state for it. Returns the trainable names."""
    names = [n for n, _ in model.named_parameters()]
    if not patterns:
        return set(names)
    chosen = match_trainable(names, patterns)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return chosen


def build_optimizer(model: torch.nn.Module, train_cfg, device: torch.device):
    """(AdamW, LambdaLR) over the trainable parameters.

    One group per (weight decay, device mesh): sharded parameters live on different meshes
    (FSDP only, or FSDP x TP), and a fused/foreach step works within one mesh."""
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = decays(name, p)
        mesh = getattr(p, "device_mesh", None)
        key = (wd, None if mesh is None else (tuple(mesh.mesh_dim_names or ()),
                                              tuple(mesh.mesh.flatten().tolist())))
        groups.setdefault(key, {"params": [], "weight_decay":
                                train_cfg.weight_decay if wd else 0.0})["params"].append(p)
    kwargs = dict(lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2))
    if device.type == "cuda":
        kwargs["fused"] = True
    opt = torch.optim.AdamW(list(groups.values()), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train_cfg))
    return opt, sched

"""What ``python -m moviegen.train`` and ``python -m moviegen.train_tae`` run: parse, build
the trainer (configuration and layout errors: one line, exit 2, nothing started), fit,
and say how it ended (preempted: exit 0 with a resume hint; K non-finite steps: exit 1)."""
from __future__ import annotations

import logging
import sys

from moviegen.config import ConfigError, parse_args
from moviegen.training.distributed import global_rank
from moviegen.training.fault import NonFiniteError


def run_training(trainer_cls, config_cls, argv: list[str] | None, description: str) -> dict:
    rank = global_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        cfg = parse_args(config_cls, argv, description, checks=trainer_cls.check_config)
        trainer = trainer_cls(cfg)  # checks the layout before any process group exists
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    try:
        history = trainer.fit()
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        trainer.close()
    if rank == 0:
        print(outcome_line(trainer, history))
    return history


def outcome_line(trainer, history: dict) -> str:
    """How the run ended, in one line: the validation number from first to last, or the
    resume hint after a preemption."""
    key, vals = trainer.val_key, history[trainer.val_key]
    if history["preempted"]:
        return (f"preempted at step {trainer.step}: checkpoint saved; run the same command "
                f"again to resume")
    if len(vals) == 1:
        (s1, v1), = vals
        return f"{key}: step {s1} {v1:.4f} (resumed from {history['resumed_from']})"
    if vals:
        (s0, v0), (s1, v1) = vals[0], vals[-1]
        return f"{key}: step {s0} {v0:.4f} -> step {s1} {v1:.4f}"
    return f"already at train.steps={trainer.cfg.train.steps}: nothing to train"

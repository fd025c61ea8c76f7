"""Average models: a weighted mean of exports or training checkpoints, as a new export.

    python -m moviegen.average --inputs runs/a/final runs/b/final --output runs/avg
    python -m moviegen.average --inputs runs/a/final --inputs runs/b/final --weights=[0.7,0.3] \\
        --ema --output runs/avg_ema
    python -m moviegen.average --inputs runs/a/checkpoints/step_00001000 \\
        --inputs runs/b/checkpoints/step_00001000 --output runs/avg

Movie Gen averages models fine-tuned with different data, hyper-parameters and
checkpoints to combine their strengths. Inputs of different shapes or model configs are
refused, naming the first mismatching tensor. Training checkpoints of any layout are read
one tensor at a time (no process gathers a whole model); their config comes from the
run's ``final/`` export. The output is an export: ``python -m moviegen.sample
--checkpoint OUTPUT`` and ``--train.init_from=OUTPUT`` read it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from moviegen.config import check, run_cli
from moviegen.training.averaging import AverageError, average


@dataclass
class AverageArgs:
    inputs: list[str]
    """Exports (<output_dir>/final) or checkpoints (<output_dir>/checkpoints/step_N):
    space-separated (--inputs A B), --inputs repeated, or a list (--inputs=[A,B])."""
    output: str
    """Export directory to write."""
    weights: Optional[list[float]] = None
    """One weight per input (normalised to sum to 1); default: equal."""
    ema: bool = False
    """Average the EMA weights (ema.safetensors / the checkpoint's ema state)."""

    def validate(self) -> None:
        check(len(self.inputs) >= 2, "inputs", "give at least two inputs")
        check(self.weights is None or len(self.weights) == len(self.inputs), "weights",
              f"{len(self.weights or [])} weights for {len(self.inputs)} inputs")


def run(a: AverageArgs) -> str:
    try:
        out = average(a.inputs, a.output, a.weights, a.ema)
    except AverageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"wrote {out} (mean of {len(a.inputs)} models)")
    return out


def main(argv=None) -> str:
    return run_cli(run, AverageArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()

"""Train the Movie Gen transformer with flow matching.

Single process (the tiny CPU demo):
    python -m moviegen.train --config launch/configs/tiny.yaml
    python -m moviegen.train --config launch/configs/tiny.yaml --train.steps=60 --output_dir=runs/x
All fields and their meaning:
    python -m moviegen.train --help

Several processes (any valid layout; NCCL on GPUs, gloo on CPU):
    torchrun --nproc_per_node=8 -m moviegen.train --config launch/configs/tiny.yaml \\
        --parallel.dp_shard=2 --parallel.cp=2 --parallel.tp=2
SLURM: sbatch launch/slurm/train.sbatch launch/configs/X.yaml
The layout is checked against the world size, the model and the data shapes before the
process group starts (the same error on every rank). Ranks of one CP x TP group read the
same samples; only data-parallel ranks differ. With ``--data.global_batch_size=N`` a step
sees the same N samples, noise and t on any layout (so the same losses as 1 process), and
a checkpoint resumes on any other layout.

Outputs in ``output_dir``: metrics.jsonl (one row per logged step: step, loss, lr,
grad_norm, step_time_s, tokens_per_s, tflops_per_device, mfu, max_mem_gb, data_wait_s, ...),
tensorboard/, checkpoints/ (``step_N`` directories and a ``latest`` pointer), ``final/``
(consolidated weights + config, read by ``python -m moviegen.sample``).

Resume and preemption: running again with the same ``output_dir`` resumes from
``checkpoints/latest`` and stops at ``train.steps``. SIGTERM or SIGUSR1 makes every rank
finish its step, save a checkpoint, write ``<output_dir>/preempted`` and exit 0.
A non-finite loss or gradient norm skips that update; ``checkpoint.max_consecutive_nonfinite``
in a row stop the run (exit 1) naming the steps.
"""
from __future__ import annotations

import sys

from moviegen.config import JobConfig
from moviegen.training.cli import run_training
from moviegen.training.diffusion import DiffusionTrainer


def main(argv: list[str] | None = None) -> dict:
    return run_training(DiffusionTrainer, JobConfig, argv, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

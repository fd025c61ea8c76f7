"""Train the temporal autoencoder (TAE) on video clips, with image steps interleaved.

Single process (CPU or one GPU):
    python -m moviegen.train_tae --config launch/configs/tae_tiny.yaml [--train.steps=300]
    python -m moviegen.train_tae --config launch/configs/tae_tiny.yaml --data.data_dir=DIR
torchrun, FSDP2 over all ranks (gloo on CPU, NCCL on GPUs):
    torchrun --nproc_per_node=2 -m moviegen.train_tae --config launch/configs/tae_tiny.yaml
SLURM: the same torchrun line inside an sbatch script (launch/slurm/), one task per node.
All fields and their meaning:
    python -m moviegen.train_tae --help

The transformer's trainer runs it (moviegen/training/trainer.py), with the same train.*,
checkpoint.* and metrics.* keys: checkpoints with exact resume (run the same command with
the same output_dir), SIGTERM/SIGUSR1 save-and-exit, the non-finite guard, metrics.jsonl +
TensorBoard + progress bar, and a loader that skips and counts undecodable files.

Loss = l1 * |x - x^| + mse * (x - x^)^2 + opl * OPL(mean, r) + kl * KL(q || N(0, I))
       [+ perceptual * VGG16-feature distance, only with local weights]
       [+ adversarial * hinge GAN term from a 2.5D patch discriminator trained from scratch]
Every ``data.image_every``-th step is an image step (Movie Gen: 1 image batch per 3 video
batches, image_every = 4). Clips come from ``data.data_dir`` (a folder of video files, or a
dataset with a manifest.jsonl); when it holds none, ``data.generate_if_missing`` synthetic
moving-shape clips are written there first (default folder: <output_dir>/data).

Writes ``<output_dir>/metrics.jsonl`` (loss, recon, l1, mse, opl, kl, lr, grad_norm,
step_time_s, data_wait_s, kind; rows with ``psnr`` in dB on the held-out clips at
validation steps), ``<output_dir>/tae.safetensors`` and ``tae_config.json`` (load with
``moviegen.models.tae.load_tae``; the config carries latent_shift / latent_scale measured on
the held-out clips, so ``tae.scale_latents(z)`` has zero mean and unit variance for the
diffusion model) and ``<output_dir>/recon.gif`` (a held-out clip | its reconstruction).
"""
from __future__ import annotations

import sys

from moviegen.config import TAEJobConfig
from moviegen.training.cli import run_training
from moviegen.training.tae import TAETrainer


def main(argv: list[str] | None = None) -> dict:
    return run_training(TAETrainer, TAEJobConfig, argv, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Samples while training (``train.sample_every``, ``train.sample_prompts``), as Open-Sora
and FastVideo write them: watch a run learn without stopping it.

Every ``sample_every`` steps the transformer generates the prompts (``sample_latents`` of
``moviegen.sampling.solver``, as ``moviegen.sample`` runs it, with the run's
flow.sample_steps and guidance, a fixed seed so steps compare), with the EMA weights when
EMA is on. Under FSDP, TP or CP the model's forward is a collective, so every rank runs
the sampler on the same noise; only rank 0 decodes and writes:
  <output_dir>/samples/step_N/sample_<i>.webm + .gif   decoded with data.tae_checkpoint
  <output_dir>/samples/step_N/latents.pt               when the run has no TAE
and TensorBoard ``samples/<i>`` (a video when moviepy is installed, else a strip of the
frames as one image).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

import torch

logger = logging.getLogger("moviegen.training")


def sample_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "samples", f"step_{step}")


def _decoder(tae_dir: str | None):
    if not tae_dir or not os.path.isfile(os.path.join(tae_dir, "tae.safetensors")):
        return None
    from moviegen.models.tae import load_tae

    return load_tae(tae_dir).eval()


@torch.no_grad()
def write_samples(trainer, writer, step: int) -> str | None:
    """Generates ``train.sample_prompts`` on every rank; rank 0 writes them. Returns the
    directory written (rank 0) or None."""
    from moviegen.sampling.solver import sample_latents

    cfg = trainer.cfg
    prompts = cfg.train.sample_prompts
    shape = trainer.last_batch_shape[1:]  # the shape this run trains on
    weights = trainer.ema.applied(trainer.model) if trainer.ema else contextlib.nullcontext()
    trainer.model.eval()
    with weights, trainer.autocast():
        latents = sample_latents(trainer.model, trainer.text_encoders, cfg, prompts, shape,
                           seed=cfg.train.seed, device=trainer.device)
    trainer.model.train()
    if not trainer.is_main:
        return None
    out = sample_dir(cfg.output_dir, step)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "prompts.json"), "w") as f:
        json.dump({"step": step, "ema": trainer.ema is not None, "prompts": prompts}, f,
                  indent=1)
    if not hasattr(trainer, "_sample_decoder"):
        trainer._sample_decoder = _decoder(cfg.data.tae_checkpoint)
    tae = trainer._sample_decoder
    if tae is None:
        torch.save({"latents": latents.float().cpu(), "prompts": prompts, "step": step},
                   os.path.join(out, "latents.pt"))
    else:
        from moviegen.data.video_io import write_gif, write_video

        videos = tae.decode_tiled(tae.unscale_latents(latents.float().cpu()))
        for i, video in enumerate(videos):
            write_video(os.path.join(out, f"sample_{i}.webm"), video, fps=cfg.data.fps)
            write_gif(os.path.join(out, f"sample_{i}.gif"), video, fps=cfg.data.fps)
            writer.add_video(f"samples/{i}", video, step, cfg.data.fps)
    logger.info("%s step %d: %d sample%s in %s%s", trainer.label, step, len(prompts),
                "s" if len(prompts) > 1 else "", out, " (EMA weights)" if trainer.ema else "")
    return out

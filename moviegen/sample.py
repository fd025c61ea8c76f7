"""Generate latents (and, with a TAE, a video) for a prompt from an exported checkpoint.

    python -m moviegen.sample --checkpoint runs/tiny/final \
        --prompt "a red blob moves from left to right" --output runs/tiny/sample.pt

Runs the first-order Euler solve on the linear-quadratic schedule with classifier-free
guidance. The latent shape defaults to the training data's; ``--frames/--height/--width``
set it in latent units. The FPS prefix is added as in training ("FPS-16 ...").
"""
from __future__ import annotations

import argparse
import os

import torch

from moviegen.export import load_inference
from moviegen.flow import euler_sample, guided_velocity, linear_quadratic_schedule
from moviegen.text_encoders import null_text
from moviegen.tokenizer import fps_prefix


@torch.no_grad()
def generate(model, encoders, cfg, prompts: list[str], latent_shape_CTHW, seed: int = 0,
             steps: int | None = None, guidance: float | None = None, device="cpu"):
    """Latents [B, C, T, H, W] for the prompts (captions get the FPS prefix)."""
    captions = [fps_prefix(p, cfg.data.fps) for p in prompts]
    embeds, masks = encoders.encode(captions)
    cond = (embeds, masks)
    uncond = (embeds, null_text(masks))
    scale = cfg.flow.guidance_scale if guidance is None else guidance
    fn = guided_velocity(model, cond, uncond, scale)
    schedule = linear_quadratic_schedule(steps or cfg.flow.sample_steps,
                                         cfg.flow.linear_steps_as_if)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((len(prompts), *latent_shape_CTHW), generator=g).to(device)
    return euler_sample(fn, x0, schedule)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="export directory (<output_dir>/final)")
    ap.add_argument("--prompt", required=True, action="append",
                    help="caption; repeat for a batch")
    ap.add_argument("--output", required=True, help=".pt file for latents")
    ap.add_argument("--frames", type=int, default=None, help="latent frames")
    ap.add_argument("--height", type=int, default=None, help="latent height")
    ap.add_argument("--width", type=int, default=None, help="latent width")
    ap.add_argument("--steps", type=int, default=None, help="Euler steps (default: config)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: config)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ema", action="store_true", help="use the EMA weights")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    model, cfg, encoders = load_inference(a.checkpoint, a.device, use_ema=a.ema)
    d = cfg.data
    shape = (cfg.model.in_channels, a.frames or d.latent_frames, a.height or d.latent_height,
             a.width or d.latent_width)
    latents = generate(model, encoders, cfg, a.prompt, shape, a.seed, a.steps, a.guidance, a.device)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    torch.save({"latents": latents.cpu(), "prompts": a.prompt}, a.output)
    print(f"wrote {a.output}: latents {tuple(latents.shape)}")
    return latents


if __name__ == "__main__":
    main()

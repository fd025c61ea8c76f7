"""Generate a video (or latents) for a prompt from an exported checkpoint.

    python -m moviegen.sample --checkpoint runs/demo/transformer/final \
        --prompt "a red circle moves from right to left" --output out.webm
    python -m moviegen.sample --checkpoint runs/tiny/final \
        --prompt "a red blob moves from left to right" --output latents.pt

An output ending in .webm/.mp4 is decoded with the run's TAE (kept in the export, or
``--tae DIR``; tiled in time) and written with a GIF preview beside it, plus the latents
as .pt; an output ending in .pt keeps only the latents.

Runs the first-order Euler solve on the linear-quadratic schedule with classifier-free
guidance. The latent shape defaults to the training data's; ``--frames/--height/--width``
set it in latent units. The FPS prefix is added as in training ("FPS-16 ...").
"""
from __future__ import annotations

import argparse
import os

import torch

from moviegen.training.export import default_latent_shape, load_inference
from moviegen.flow import euler_sample, guided_velocity, linear_quadratic_schedule
from moviegen.models.text_encoders import null_text
from moviegen.models.tokenizer import fps_prefix


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
    ap.add_argument("--output", required=True, help=".webm/.mp4 (decoded video) or .pt (latents)")
    ap.add_argument("--tae", default=None, help="TAE directory (default: the export's)")
    ap.add_argument("--fps", type=int, default=8, help="frame rate of the written video")
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
    C, T, H, W = default_latent_shape(a.checkpoint, cfg)
    shape = (C, a.frames or T, a.height or H, a.width or W)
    latents = generate(model, encoders, cfg, a.prompt, shape, a.seed, a.steps, a.guidance, a.device)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    stem, ext = os.path.splitext(a.output)
    torch.save({"latents": latents.cpu(), "prompts": a.prompt}, stem + ".pt")
    print(f"wrote {stem}.pt: latents {tuple(latents.shape)}")
    if ext in (".webm", ".mp4"):
        write_videos(latents, a.tae or cfg.data.tae_checkpoint, a.output, a.fps)
    elif ext != ".pt":
        raise SystemExit(f"--output: use .webm, .mp4 or .pt, not '{ext}'")
    return latents


def write_videos(latents, tae_dir: str | None, output: str, fps: int):
    """Decodes (tiled in time) and writes one video + GIF per prompt; returns
    [(path, video [3, T, H, W] in [-1, 1])]."""
    from moviegen.models.tae import load_tae
    from moviegen.data.video_io import write_gif, write_video

    if not tae_dir:
        raise SystemExit("no TAE to decode with: this run trained on latents without one; "
                         "pass --tae DIR or write .pt")
    tae = load_tae(tae_dir)
    with torch.no_grad():
        videos = tae.decode_tiled(tae.unscale_latents(latents.float()))
    stem, ext = os.path.splitext(output)
    paths = []
    for i, video in enumerate(videos):
        path = output if len(videos) == 1 else f"{stem}_{i}{ext}"
        write_video(path, video, fps=fps)
        write_gif(os.path.splitext(path)[0] + ".gif", video, fps=fps)
        print(f"wrote {path} ({video.shape[1]} frames) and its .gif preview")
        paths.append((path, video))
    return paths


if __name__ == "__main__":
    main()

"""Generate a video (or latents) for a prompt from an exported checkpoint.

    python -m moviegen.sample --checkpoint runs/demo/transformer/final \
        --prompt "a red circle moves from right to left" --output out.webm
    python -m moviegen.sample --checkpoint runs/tiny/final \
        --prompt "a red blob moves from left to right" --output latents.pt

An output ending in .webm/.mp4 is decoded with the run's TAE (kept in the export, or
``--tae DIR``; tiled in time) and written with a GIF preview beside it; an output ending
in .pt keeps the latents. Every argument (the extension, the TAE and its channels, the
prompts) is checked before sampling starts.

Runs the first-order Euler solve on the linear-quadratic schedule with classifier-free
guidance. The latent shape defaults to the training data's; ``--frames/--height/--width``
set it in latent units. The FPS prefix is added as in training ("FPS-16 ...").
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from moviegen.config import ConfigError, check, run_cli
from moviegen.training.export import default_latent_shape, load_inference
from moviegen.flow import euler_sample, guided_velocity, linear_quadratic_schedule
from moviegen.models.text_encoders import null_text
from moviegen.models.tokenizer import fps_prefix


@torch.no_grad()
def generate(model, encoders, cfg, prompts: list[str], latent_shape_CTHW, seed: int = 0,
             steps: int | None = None, guidance: float | None = None, device="cpu",
             progress: bool = False):
    """Latents [B, C, T, H, W] for the prompts (captions get the FPS prefix).
    ``progress``: a bar over the Euler steps (on a terminal only)."""
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
    if progress:
        from moviegen.training.metrics import ProgressBar

        bar, guided = ProgressBar(len(schedule) - 1, 0, True, desc="sample"), fn

        def fn(x, t_B):
            v = guided(x, t_B)
            bar.update(1)
            return v

        try:
            return euler_sample(fn, x0, schedule)
        finally:
            bar.close()
    return euler_sample(fn, x0, schedule)


@dataclass
class SampleArgs:
    checkpoint: str
    """Export directory of a run (<output_dir>/final)."""
    prompt: list[str]
    """Caption; repeat --prompt for a batch."""
    output: str
    """.webm or .mp4 (decoded with the TAE, plus a .gif preview) or .pt (latents only)."""
    tae: Optional[str] = None
    """TAE directory to decode with (default: the one kept in the export)."""
    fps: int = 8
    """Frame rate of the written video."""
    frames: Optional[int] = None
    """Latent frames (default: the shape the run trained on)."""
    height: Optional[int] = None
    """Latent height (default: the shape the run trained on)."""
    width: Optional[int] = None
    """Latent width (default: the shape the run trained on)."""
    steps: Optional[int] = None
    """Euler steps (default: the run's flow.sample_steps)."""
    guidance: Optional[float] = None
    """Classifier-free guidance scale (default: the run's flow.guidance_scale)."""
    seed: int = 0
    """Noise seed."""
    ema: bool = False
    """Use the EMA weights (ema.safetensors)."""
    device: str = "cpu"
    """cpu or cuda."""

    def validate(self) -> None:
        ext = os.path.splitext(self.output)[1].lower()
        check(ext in VIDEO_EXTS + (".pt",), "output",
              f"'{self.output}': use .webm, .mp4 (a decoded video) or .pt (latents)")
        check(all(p.strip() for p in self.prompt), "prompt", "a prompt is empty")
        check(os.path.isfile(os.path.join(self.checkpoint, "config.yaml")), "checkpoint",
              f"'{self.checkpoint}' is not an export directory (no config.yaml; point it at "
              f"<output_dir>/final)")
        weights = "ema.safetensors" if self.ema else "model.safetensors"
        check(os.path.isfile(os.path.join(self.checkpoint, weights)), "ema" if self.ema
              else "checkpoint", f"no {weights} in '{self.checkpoint}'"
              + (" (this run kept no EMA weights)" if self.ema else ""))
        for k in ("frames", "height", "width", "steps"):
            v = getattr(self, k)
            check(v is None or v >= 1, k, "must be >= 1")
        check(self.tae is None or os.path.isfile(os.path.join(self.tae, "tae.safetensors")),
              "tae", f"no tae.safetensors in '{self.tae}'")


VIDEO_EXTS = (".webm", ".mp4")


def _check_decoder(a: SampleArgs, cfg, channels: int) -> Optional[str]:
    """The TAE directory to decode with (None for .pt), checked before any sampling."""
    if not a.output.lower().endswith(VIDEO_EXTS):
        return None
    tae_dir = a.tae or cfg.data.tae_checkpoint
    if not tae_dir or not os.path.isfile(os.path.join(tae_dir, "tae.safetensors")):
        raise ConfigError("output: this run has no TAE to decode with (it trained on latents "
                          "without one): pass --tae DIR or write .pt", key="output")
    with open(os.path.join(tae_dir, "tae_config.json")) as f:
        tae_cfg = json.load(f)
    from moviegen.models.tae import TAE_PRESETS

    latent = tae_cfg.get("latent_channels") or TAE_PRESETS[tae_cfg["preset"]]["latent_channels"]
    if latent != channels:
        raise ConfigError(f"tae: {tae_dir} decodes {latent}-channel latents; this model makes "
                          f"{channels}-channel latents (model.in_channels)", key="tae")
    return tae_dir


def run(a: SampleArgs):
    from moviegen.training.export import load_export_config

    cfg = load_export_config(a.checkpoint)
    try:
        tae_dir = _check_decoder(a, cfg, cfg.model.in_channels)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    model, cfg, encoders = load_inference(a.checkpoint, a.device, use_ema=a.ema)
    C, T, H, W = default_latent_shape(a.checkpoint, cfg)
    shape = (C, a.frames or T, a.height or H, a.width or W)
    latents = generate(model, encoders, cfg, a.prompt, shape, a.seed, a.steps, a.guidance,
                       a.device, progress=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    if tae_dir is None:
        torch.save({"latents": latents.cpu(), "prompts": a.prompt}, a.output)
        print(f"wrote {a.output}: latents {tuple(latents.shape)}")
    else:
        write_videos(latents, tae_dir, a.output, a.fps)
    return latents


def main(argv=None):
    return run_cli(run, SampleArgs, argv, __doc__, config_file=False)


def write_videos(latents, tae_dir: str | None, output: str, fps: int):
    """Decodes (tiled in time) and writes one video + GIF per prompt; returns
    [(path, video [3, T, H, W] in [-1, 1])]."""
    from moviegen.models.tae import load_tae
    from moviegen.data.video_io import write_gif, write_video

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

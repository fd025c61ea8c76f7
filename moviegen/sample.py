"""Generate a video (or latents) for a prompt from an exported checkpoint, from text
alone or from given frames.

    python -m moviegen.sample --checkpoint runs/demo/transformer/final \
        --prompt "a red circle moves from right to left" --output out.webm
    python -m moviegen.sample --checkpoint runs/tiny/final \
        --prompt "a red blob moves from left to right" --output latents.pt
    # image-to-video: the image is the first frame
    python -m moviegen.sample --checkpoint DIR --prompt "..." --image first.png --output out.webm
    # a video extended by 3 clips, each conditioned on the end of the one before
    python -m moviegen.sample --checkpoint DIR --prompt "..." --video in.webm --task extend \
        --num_extensions 3 --output longer.webm
    # frame interpolation (its latent frames become every 2nd) and 2x spatial upsampling
    python -m moviegen.sample ... --video in.webm --task interpolate --output slow.webm
    python -m moviegen.sample --checkpoint UPSAMPLER --video low.webm --task upsample ...
    # a text-to-video model (no conditioning channels) conditioned at sampling time:
    # reconstruction guidance of weight W (Video Diffusion Models); W = 0 is replacement
    python -m moviegen.sample ... --video in.webm --task extend --reconstruction_guidance 4

An output ending in .webm/.mp4 is decoded with the run's TAE (kept in the export, or
``--tae DIR``; tiled in time) and written with a GIF preview beside it; an output ending
in .pt keeps the latents. Every argument (the extension, the input files, the TAE and its
channels, the prompts, whether the model can take the conditioning) is checked before
sampling starts.

Runs the first-order Euler solve on the linear-quadratic schedule with classifier-free
guidance. The latent shape of a clip defaults to the training data's; ``--frames/--height/
--width`` set it in latent units, and inputs are resized to it. A clip longer than the
model's temporal position table is sampled in overlapping windows whose velocities are
blended (Movie Gen's upsampler inference; ``--window_frames``, ``--window_overlap``).
The FPS prefix is added as in training ("FPS-16 ..."). The solver is in
``moviegen.sampling.solver``, the tasks in ``moviegen.sampling.tasks``.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from moviegen.config import ConfigError, check, run_cli
from moviegen.conditioning import TASKS
from moviegen.sampling.tasks import InputError, check_input_file
from moviegen.training.export import default_latent_shape, load_inference


@dataclass
class SampleArgs:
    checkpoint: str
    """Export directory of a run (<output_dir>/final)."""
    prompt: list[str]
    """Caption; several make a batch (--prompt "a" "b", or --prompt repeated)."""
    output: str
    """.webm or .mp4 (decoded with the TAE, plus a .gif preview) or .pt (latents only)."""
    image: Optional[str] = None
    """Image-to-video: this image (.png, .jpg, ...) is the first frame."""
    video: Optional[str] = None
    """Input video (.webm, .mp4, ...) for --task extend, interpolate or upsample."""
    task: Optional[str] = None
    """t2v, i2v, extend, interpolate or upsample (default: i2v with --image, extend with
    --video, else t2v)."""
    num_extensions: Optional[int] = None
    """Clips appended after the task's result, each conditioned on the end of the video
    so far (default: 1 for --task extend, else 0)."""
    context_frames: Optional[int] = None
    """Latent frames of the video so far that each extension starts from (default: half
    a clip)."""
    keyframe_every: int = 2
    """--task interpolate: the input's latent frames become every n-th latent frame."""
    reconstruction_guidance: Optional[float] = None
    """Condition a model at sampling time instead of through its conditioning channels:
    replacement of the given frames plus reconstruction guidance of this weight (Video
    Diffusion Models); 0 = replacement alone. Works for a text-to-video model."""
    tae: Optional[str] = None
    """TAE directory to decode with (default: the one kept in the export)."""
    fps: int = 8
    """Frame rate of the written video."""
    frames: Optional[int] = None
    """Latent frames of a clip (default: the shape the run trained on); longer than the
    position tables samples in sliding windows."""
    height: Optional[int] = None
    """Latent height (default: the shape the run trained on)."""
    width: Optional[int] = None
    """Latent width (default: the shape the run trained on)."""
    window_frames: Optional[int] = None
    """Sliding window length in latent frames (default: the temporal position table)."""
    window_overlap: Optional[int] = None
    """Latent frames two windows share and blend (default: 4/14 of the window, as Movie
    Gen's 14 and 4)."""
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

    @property
    def resolved_task(self) -> str:
        return self.task or ("i2v" if self.image else "extend" if self.video else "t2v")

    @property
    def extensions(self) -> int:
        if self.num_extensions is not None:
            return self.num_extensions
        return int(self.resolved_task == "extend")

    def validate(self) -> None:
        ext = os.path.splitext(self.output)[1].lower()
        check(ext in VIDEO_OUTPUT_EXTS + (".pt",), "output",
              f"'{self.output}': use .webm, .mp4 (a decoded video) or .pt (latents)")
        check(all(p.strip() for p in self.prompt), "prompt", "a prompt is empty")
        check(os.path.isfile(os.path.join(self.checkpoint, "config.yaml")), "checkpoint",
              f"'{self.checkpoint}' is not an export directory (no config.yaml; point it at "
              f"<output_dir>/final)")
        weights = "ema.safetensors" if self.ema else "model.safetensors"
        check(os.path.isfile(os.path.join(self.checkpoint, weights)), "ema" if self.ema
              else "checkpoint", f"no {weights} in '{self.checkpoint}'"
              + (" (this run kept no EMA weights)" if self.ema else ""))
        for k in ("frames", "height", "width", "steps", "window_frames", "context_frames",
                  "keyframe_every"):
            v = getattr(self, k)
            check(v is None or v >= 1, k, "must be >= 1")
        for k in ("num_extensions", "window_overlap", "reconstruction_guidance"):
            v = getattr(self, k)
            check(v is None or v >= 0, k, "must be >= 0")
        check(self.tae is None or os.path.isfile(os.path.join(self.tae, "tae.safetensors")),
              "tae", f"no tae.safetensors in '{self.tae}'")
        task = self.resolved_task
        check(task in TASKS, "task", f"'{task}': use one of {', '.join(TASKS)}")
        check(not (self.image and self.video), "image", "give --image or --video, not both")
        check(task != "i2v" or self.image is not None, "image", "--task i2v needs --image")
        check(task not in ("extend", "interpolate", "upsample") or self.video is not None,
              "video", f"--task {task} needs --video")
        check(task != "t2v" or not (self.image or self.video), "task",
              "t2v takes no --image/--video (drop --task t2v)")
        check(self.video is None or task in ("extend", "interpolate", "upsample"), "task",
              f"--video goes with --task extend, interpolate or upsample, not {task}")
        check(not (task == "upsample" and self.reconstruction_guidance is not None),
              "reconstruction_guidance", "upsample needs an upsampler trained with "
              "conditioning channels; it has no sampling-time alternative")
        for kind in ("image", "video"):
            path = getattr(self, kind)
            if path is not None:
                try:
                    check_input_file(path, kind)
                except InputError as e:
                    raise ConfigError(str(e), key=kind) from None


VIDEO_OUTPUT_EXTS = (".webm", ".mp4")


def _check_decoder(a: SampleArgs, cfg, channels: int) -> Optional[str]:
    """The TAE directory (None when no pixels go in or out), checked before sampling."""
    if not a.output.lower().endswith(VIDEO_OUTPUT_EXTS) and not (a.image or a.video):
        return None
    tae_dir = a.tae or cfg.data.tae_checkpoint
    if not tae_dir or not os.path.isfile(os.path.join(tae_dir, "tae.safetensors")):
        why = "decode" if a.output.lower().endswith(VIDEO_OUTPUT_EXTS) else "encode --image/--video"
        raise ConfigError(f"tae: this run has no TAE to {why} with (it trained on latents "
                          "without one): pass --tae DIR" + (" or write .pt" if why == "decode"
                                                            else ""), key="tae")
    with open(os.path.join(tae_dir, "tae_config.json")) as f:
        tae_cfg = json.load(f)
    from moviegen.models.tae import TAE_PRESETS

    latent = tae_cfg.get("latent_channels") or TAE_PRESETS[tae_cfg["preset"]]["latent_channels"]
    if latent != channels:
        raise ConfigError(f"tae: {tae_dir} decodes {latent}-channel latents; this model makes "
                          f"{channels}-channel latents (model.in_channels)", key="tae")
    return tae_dir


def _check_conditioning(a: SampleArgs, cfg, clip_frames: int, window: int) -> str:
    """The conditioning method for this model and task, or a one-line error."""
    task, n_ext = a.resolved_task, a.extensions
    needs_given = task != "t2v" or n_ext > 0
    cond_channels = getattr(cfg.model, "cond_channels", 0)
    if task == "upsample" and not cond_channels:
        raise ConfigError("checkpoint: --task upsample needs an upsampler (a model trained "
                          "with conditioning channels)", key="checkpoint")
    if needs_given and a.reconstruction_guidance is None and not cond_channels:
        what = f"--task {task}" if task != "t2v" else "--num_extensions"
        raise ConfigError(
            f"checkpoint: this model has no conditioning channels (model.cond_channels = 0: "
            f"trained for text-to-video only), so {what} cannot condition it explicitly; pass "
            f"--reconstruction_guidance W to condition it at sampling time (0 = replacement)",
            key="checkpoint")
    k = a.context_frames or max(1, clip_frames // 2)
    check(not n_ext or k < clip_frames, "context_frames",
          f"{k} must be fewer than the {clip_frames} latent frames of a clip")
    table = cfg.model.max_latent_frames * cfg.model.patch_size[0]
    check(window <= table, "window_frames", f"{window} is longer than the model's temporal "
          f"position table ({table} latent frames)")
    check(a.window_overlap is None or a.window_overlap < window, "window_overlap",
          f"{a.window_overlap} must be fewer than the window's {window} latent frames")
    return "explicit" if a.reconstruction_guidance is None else (
        "reconstruction_guidance" if a.reconstruction_guidance > 0 else "replacement")


def run(a: SampleArgs):
    from moviegen.sampling.solver import Sampler
    from moviegen.sampling.tasks import Request, run_request
    from moviegen.training.export import load_export_config

    cfg = load_export_config(a.checkpoint)
    C, T, H, W = default_latent_shape(a.checkpoint, cfg)
    shape = (C, a.frames or T, a.height or H, a.width or W)
    pt = cfg.model.patch_size[0]
    window = a.window_frames or cfg.model.max_latent_frames * pt
    try:
        tae_dir = _check_decoder(a, cfg, cfg.model.in_channels)
        method = _check_conditioning(a, cfg, shape[1], window)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    model, cfg, encoders = load_inference(a.checkpoint, a.device, use_ema=a.ema)
    tae = None
    if tae_dir is not None:
        from moviegen.models.tae import load_tae

        tae = load_tae(tae_dir).eval()
    sampler = Sampler(model, encoders, cfg, a.steps, a.guidance, method,
                      a.reconstruction_guidance or 0.0, window, a.window_overlap, a.device,
                      progress=True)
    task = a.resolved_task
    result = run_request(sampler, tae, Request(
        a.prompt, task, a.image, a.video, shape, a.extensions, a.context_frames,
        a.keyframe_every, a.seed))
    latents = result.latents
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    if not a.output.lower().endswith(VIDEO_OUTPUT_EXTS):
        torch.save({"latents": latents.cpu(), "prompts": a.prompt, "task": task,
                    "joins": result.joins}, a.output)
        print(f"wrote {a.output}: latents {tuple(latents.shape)}")
    else:
        write_videos(latents, tae, a.output, a.fps)
    return latents


def main(argv=None):
    return run_cli(run, SampleArgs, argv, __doc__, config_file=False)


def write_videos(latents, tae, output: str, fps: int):
    """Decodes (tiled in time) and writes one video + GIF per prompt; returns
    [(path, video [3, T, H, W] in [-1, 1])]. ``tae``: a TAE or its directory."""
    from moviegen.data.video_io import write_gif, write_video
    from moviegen.sampling.tasks import decode

    if isinstance(tae, str):
        from moviegen.models.tae import load_tae

        tae = load_tae(tae)
    videos = decode(tae, latents)
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

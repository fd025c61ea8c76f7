"""The embedded default, end to end on a CPU: video files in, a generated video out.

    python -m moviegen.demo [--output_dir runs/demo] [--quick]

Stages (each timed; the summary goes to <output_dir>/demo_summary.json):
  1. data        real VP9 .webm clips of moving coloured shapes (moviegen.data.synthetic);
                 one colour/direction pairing is held out of training entirely
  2. tae         train the tiny temporal autoencoder (moviegen.train_tae), report its
                 PSNR on held-out clips
  3. precompute  TAE latents + text embeddings as sharded safetensors (moviegen.precompute)
  4. transformer train the flow-matching transformer on them (moviegen.train,
                 launch/configs/demo.yaml)
  5. sample      generate the held-out caption, decode with the TAE (tiled), write
                 .webm + .gif, and measure where the shape goes, frame by frame
  6. plot        the loss curves as a PNG

``--quick`` shrinks every stage (a smoke run of the whole path, about a minute).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch

from moviegen.config import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAE_CONFIG = os.path.join(ROOT, "launch", "configs", "tae_tiny.yaml")
DEMO_CONFIG = os.path.join(ROOT, "launch", "configs", "demo.yaml")

DEMO_COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square")
HELD_OUT = ("red", "from right to left")  # never in training, in any shape
PROMPT = f"a {HELD_OUT[0]} circle moves {HELD_OUT[1]}"

FULL = dict(videos=240, tae_steps=800, steps=2000)
QUICK = dict(videos=24, tae_steps=10, steps=20)


def stage_data(out: str, n_videos: int) -> str:
    from moviegen.data import synthetic

    return synthetic.generate(os.path.join(out, "data"), num_videos=n_videos, num_images=n_videos // 8,
                              seed=0, val_fraction=0.1, min_duration=2.0, max_duration=2.0,
                              short_sides=(48,), frame_rates=(8,), colors=list(DEMO_COLORS),
                              shapes=list(SHAPES), aspect_ratios=["1:1"],
                              exclude=[f"{HELD_OUT[0]}+{HELD_OUT[1]}"])


def stage_tae(out: str, manifest: str, steps: int) -> dict:
    from moviegen import train_tae
    from moviegen.training.metrics import read_metrics

    tae_dir = os.path.join(out, "tae")
    train_tae.main(["--config", TAE_CONFIG, f"--output_dir={tae_dir}",
                    f"--data.data_dir={os.path.dirname(manifest)}", f"--train.steps={steps}",
                    f"--train.val_every={max(steps // 4, 1)}", "--data.generate_if_missing=0",
                    # full 48 px frames of a fixed palette: no crops, no colour shuffling
                    "--data.height=48", "--data.width=48", "--data.augment=false"])
    psnr = [r["psnr"] for r in read_metrics(tae_dir) if r.get("psnr") is not None]
    return {"dir": tae_dir, "psnr_db": psnr[-1] if psnr else None}


def job_overrides(out: str, manifest: str, steps: int) -> list[str]:
    return [f"--output_dir={os.path.join(out, 'transformer')}",
            f"--data.precomputed_dir={os.path.join(out, 'latents')}",
            f"--data.tae_checkpoint={os.path.join(out, 'tae')}",
            f"--data.video.manifest={manifest}", f"--train.steps={steps}",
            f"--train.val_every={max(steps // 8, 1)}", "--train.progress_bar=false"]


def stage_precompute(overrides: list[str]) -> dict:
    from moviegen import precompute

    return precompute.main(["--config", DEMO_CONFIG, *overrides])


def stage_transformer(overrides: list[str]) -> dict:
    from moviegen import train

    history = train.main(["--config", DEMO_CONFIG, *overrides])
    (_, v0), (s1, v1) = history["val_loss"][0], history["val_loss"][-1]
    return {"val_loss_start": v0, "val_loss_end": v1, "steps": s1}


def shape_track(video_CTHW: torch.Tensor, colour: str) -> list[tuple[float, float]]:
    """(x, y) centre, as fractions of the frame, of the pixels close to ``colour``."""
    from moviegen.data.synthetic import COLORS

    rgb = (video_CTHW.clamp(-1, 1) + 1) * 127.5  # [3, T, H, W] in 0..255
    target = torch.tensor(COLORS[colour], dtype=rgb.dtype).view(3, 1, 1, 1)
    dist = (rgb - target).norm(dim=0)  # [T, H, W]
    _, T, H, W = rgb.shape
    ys = (torch.arange(H, dtype=rgb.dtype) + 0.5) / H
    xs = (torch.arange(W, dtype=rgb.dtype) + 0.5) / W
    track = []
    for t in range(T):
        w = (dist[t] < 90).to(rgb.dtype)
        if w.sum() < 1:
            track.append((float("nan"), float("nan")))
            continue
        track.append((float((w * xs[None, :]).sum() / w.sum()), float((w * ys[:, None]).sum() / w.sum())))
    return track


def motion_of(track) -> str:
    pts = np.array([p for p in track if not np.isnan(p[0])])
    if len(pts) < 2:
        return "no shape found"
    dx, dy = pts[-1] - pts[0]
    if max(abs(dx), abs(dy)) < 0.1:
        return "static"
    if abs(dx) >= abs(dy):
        return "from left to right" if dx > 0 else "from right to left"
    return "from top to bottom" if dy > 0 else "from bottom to top"


def stage_sample(out: str, prompts: list[str]) -> dict:
    from moviegen.training.export import default_latent_shape, load_inference
    from moviegen.sample import generate, write_videos

    final = os.path.join(out, "transformer", "final")
    model, cfg, encoders = load_inference(final)
    latents = generate(model, encoders, cfg, prompts, default_latent_shape(final, cfg), seed=0)
    results = []
    for i, (prompt, (path, video)) in enumerate(zip(prompts, write_videos(
            latents, cfg.data.tae_checkpoint, os.path.join(out, "sample.webm"), fps=8))):
        colour = prompt.split()[1]
        track = shape_track(video, colour)
        results.append({"prompt": prompt, "video": path, "gif": os.path.splitext(path)[0] + ".gif",
                        "seen_in_training": prompt != PROMPT, "motion": motion_of(track),
                        "expected": prompt.split(" moves ")[1],
                        "track_xy": [[round(x, 3), round(y, 3)] for x, y in track]})
    return {"samples": results}


def plot_losses(out: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moviegen.training.metrics import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name, key in ((axes[0], "tae", "loss"), (axes[1], "transformer", "loss")):
        rows = read_metrics(os.path.join(out, name))
        train = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if train:
            ax.plot(*zip(*train), label="train loss")
        val_key = "psnr" if name == "tae" else "val_loss"
        val = [(r["step"], r[val_key]) for r in rows if r.get(val_key) is not None]
        if val and name == "transformer":
            ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set_title("TAE" if name == "tae" else "transformer (flow matching)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


@dataclass
class DemoArgs:
    output_dir: str = "runs/demo"
    """Where every stage writes (emptied first: the demo always starts fresh)."""
    quick: bool = False
    """A smoke run of every stage (about a minute)."""


def main(argv=None) -> dict:
    return run_cli(run, DemoArgs, argv, __doc__, config_file=False)


def run(a: DemoArgs) -> dict:
    size = FULL if not a.quick else QUICK
    out = a.output_dir
    if os.path.exists(out):
        shutil.rmtree(out)  # the demo always starts fresh
    os.makedirs(out)
    times, summary = {}, {"held_out_caption": PROMPT}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"[demo] {name}: {times[name]} s", flush=True)
        return result

    t_all = time.perf_counter()
    manifest = timed("data", stage_data, out, size["videos"])
    summary["tae"] = timed("tae", stage_tae, out, manifest, size["tae_steps"])
    overrides = job_overrides(out, manifest, size["steps"])
    summary["precompute"] = timed("precompute", stage_precompute, overrides)
    summary["transformer"] = timed("transformer", stage_transformer, overrides)
    prompts = [PROMPT, "a red circle moves from left to right", "a blue square moves from right to left",
               "a green circle moves from top to bottom"]
    summary.update(timed("sample", stage_sample, out, prompts))
    png = os.path.join(out, "loss.png")
    timed("plot", plot_losses, out, png)
    times["total"] = round(time.perf_counter() - t_all, 1)
    summary["loss_plot"] = png
    summary["wall_times_s"] = times
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    brief = {k: v for k, v in summary.items() if k not in ("precompute", "samples")}
    brief["samples"] = [{k: s[k] for k in ("prompt", "seen_in_training", "expected", "motion", "video")}
                        for s in summary["samples"]]
    print(json.dumps(brief, indent=2))
    return summary


if __name__ == "__main__":
    main()

"""The embedded default: train the tiny model on CPU, sample it, plot the loss.

    python -m moviegen.demo [--output_dir runs/demo] [--steps N]

Stages (each timed, wall times printed and written to <output_dir>/demo_summary.json):
  1. train the tiny transformer on caption-dependent synthetic latents
     (launch/configs/tiny.yaml)
  2. sample latents for captions, check the sampled colour against the caption
  3. write the loss curve as a PNG
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from moviegen.config import load_config
from moviegen.train import Trainer

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch", "configs", "tiny.yaml")


def plot_losses(output_dir: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moviegen.metrics import read_metrics

    rows = read_metrics(output_dir)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def colour_accuracy(final_dir: str, latent_shape) -> dict:
    """Samples one latent per caption combination and reads back the blob's colour."""
    from moviegen.export import load_inference
    from moviegen.latent_synthetic import COLOURS, DIRECTION_NAMES, caption_for, colour_signature
    from moviegen.sample import generate

    model, cfg, encoders = load_inference(final_dir)
    combos = [(c, d) for c in COLOURS for d in DIRECTION_NAMES]
    latents = generate(model, encoders, cfg, [caption_for(c, d) for c, d in combos],
                       latent_shape, seed=0)
    sigs = torch.stack([colour_signature(c, latent_shape[0]) for c in COLOURS])
    hits = 0
    for lat, (colour, _) in zip(latents, combos):
        energy = torch.einsum("kc,cthw->k", sigs, lat)
        hits += COLOURS[int(energy.argmax())] == colour
    return {"captions": len(combos), "colour_correct": hits}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="runs/demo")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    a = ap.parse_args(argv)
    overrides = [f"--output_dir={a.output_dir}"]
    if a.steps is not None:
        overrides.append(f"--train.steps={a.steps}")
    cfg = load_config(CONFIG, overrides)
    if os.path.exists(os.path.join(a.output_dir, "metrics.jsonl")):
        os.remove(os.path.join(a.output_dir, "metrics.jsonl"))  # the demo starts fresh
    times = {}
    t0 = time.perf_counter()
    history = Trainer(cfg).fit()
    times["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shape = (cfg.model.in_channels, cfg.data.latent_frames, cfg.data.latent_height, cfg.data.latent_width)
    acc = colour_accuracy(os.path.join(a.output_dir, "final"), shape)
    times["sample_s"] = time.perf_counter() - t0
    png = os.path.join(a.output_dir, "loss.png")
    plot_losses(a.output_dir, png)
    (s0, v0), (s1, v1) = history["val_loss"][0], history["val_loss"][-1]
    summary = {"val_loss_start": v0, "val_loss_end": v1, "val_loss_ratio": v1 / v0,
               "steps": s1, **acc, "wall_times_s": times, "loss_plot": png}
    with open(os.path.join(a.output_dir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

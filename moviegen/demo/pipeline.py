"""The embedded default, end to end on a CPU: video files in, a generated video out.

    python -m moviegen.demo [--output_dir runs/demo] [--quick]

It prints its stages and their expected cost first, a progress bar per stage on a
terminal (a line per logged step otherwise), a result line per stage and the paths it
wrote. Stages (each timed; the summary goes to <output_dir>/demo_summary.json):
  1. data        real VP9 .webm clips of moving coloured shapes (moviegen.data.synthetic);
                 one colour/direction pairing is held out of training entirely
  2. tae         train the tiny temporal autoencoder (moviegen.train_tae), report its
                 PSNR on held-out clips
  3. precompute  TAE latents + text embeddings as sharded safetensors (moviegen.precompute)
  4. transformer train the flow-matching transformer on them (moviegen.train,
                 launch/configs/demo.yaml)
  5. sample      generate the held-out caption and three seen ones, decode with the TAE
                 (tiled), write .webm + .gif, and judge each (moviegen.demo.judge): the
                 colour nearest to the shape's pixels (and that fraction), where the
                 shape goes frame by frame, and its outline (circle or square)
  6. conditioned the same transformer (trained with text-to-video, image-to-video and
                 extension tasks) from the first frame of a clip of the held-out caption
                 (image-to-video), and that clip extended to twice its length; judged
                 like the samples, a strip of frames as a PNG (moviegen.demo.conditioned)
  7. plot        the loss and PSNR curves as a PNG

Threads: on a shared or busy machine use OMP_NUM_THREADS=1 (scripts/quickstart.sh
sets it unless it is set): 2 threads fighting other processes for 2 cores ran the
transformer 8x slower.

``--quick`` shrinks every stage (a smoke run of the whole path, about a minute).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import torch

from moviegen.config import run_cli
from moviegen.demo.scene import DEMO_COLORS, DEMO_SHAPES, HELD_OUT_PAIRING, HELD_OUT_PROMPT
from moviegen.demo.scene import SAMPLE_PROMPTS
from moviegen.training.metrics import format_duration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAE_CONFIG = os.path.join(ROOT, "launch", "configs", "tae_tiny.yaml")
DEMO_CONFIG = os.path.join(ROOT, "launch", "configs", "demo.yaml")

FULL = dict(videos=240, tae_steps=800, steps=2000)
QUICK = dict(videos=24, tae_steps=10, steps=20)


def stage_data(out: str, n_videos: int) -> str:
    from moviegen.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        os.path.join(out, "data"), num_videos=n_videos, num_images=n_videos // 8, seed=0,
        val_fraction=0.1, min_duration=2.0, max_duration=2.0, short_sides=(48,),
        frame_rates=(8,), colors=list(DEMO_COLORS), shapes=list(DEMO_SHAPES),
        aspect_ratios=["1:1"], exclude=["+".join(HELD_OUT_PAIRING)])


def stage_tae(out: str, manifest: str, steps: int) -> dict:
    from moviegen import train_tae
    from moviegen.training.metrics import read_metrics

    tae_dir = os.path.join(out, "tae")
    train_tae.main(["--config", TAE_CONFIG, f"--output_dir={tae_dir}",
                    f"--data.data_dir={os.path.dirname(manifest)}", f"--train.steps={steps}",
                    f"--train.val_every={max(steps // 4, 1)}", "--data.generate_if_missing=0",
                    f"--train.log_every={max(steps // 10, 1)}",
                    # full 48 px frames of a fixed palette: no crops, no colour shuffling
                    "--data.height=48", "--data.width=48", "--data.augment=false"])
    psnr = [r["psnr"] for r in read_metrics(tae_dir) if r.get("psnr") is not None]
    return {"dir": tae_dir, "psnr_db": psnr[-1] if psnr else None}


def job_overrides(out: str, manifest: str, steps: int) -> list[str]:
    return [f"--output_dir={os.path.join(out, 'transformer')}",
            f"--data.precomputed_dir={os.path.join(out, 'latents')}",
            f"--data.tae_checkpoint={os.path.join(out, 'tae')}",
            f"--data.video.manifest={manifest}", f"--train.steps={steps}",
            f"--train.val_every={max(steps // 8, 1)}", f"--train.log_every={max(steps // 10, 1)}"]


def stage_precompute(overrides: list[str]) -> dict:
    from moviegen import precompute

    return precompute.main(["--config", DEMO_CONFIG, *overrides])


def stage_transformer(overrides: list[str]) -> dict:
    from moviegen import train

    history = train.main(["--config", DEMO_CONFIG, *overrides])
    (_, v0), (s1, v1) = history["val_loss"][0], history["val_loss"][-1]
    return {"val_loss_start": v0, "val_loss_end": v1, "steps": s1,
            "dir": os.path.dirname(overrides[0].split("=", 1)[1]) + "/transformer"}


def stage_sample(out: str, prompts: list[str], seed: int = 0) -> dict:
    from moviegen.demo.judge import judge, verdict_line
    from moviegen.sample import write_videos
    from moviegen.sampling.solver import sample_latents
    from moviegen.training.export import default_latent_shape, load_inference

    final = os.path.join(out, "transformer", "final")
    model, cfg, encoders = load_inference(final)
    latents = sample_latents(model, encoders, cfg, prompts, default_latent_shape(final, cfg), seed=seed,
                       progress=True)
    results = []
    for prompt, (path, video) in zip(prompts, write_videos(
            latents, cfg.data.tae_checkpoint, os.path.join(out, "sample.webm"), fps=8)):
        v = judge(video, prompt, DEMO_COLORS)
        held = prompt == HELD_OUT_PROMPT
        print(f"[demo]   {'held out ' if held else 'seen     '} '{prompt}': "
              f"{verdict_line(prompt, v)}", flush=True)
        results.append({"prompt": prompt, "video": path,
                        "gif": os.path.splitext(path)[0] + ".gif", "seen_in_training": not held,
                        "ok": v["colour"]["ok"] and v["motion"]["ok"], **v})
    return {"samples": results}


def plot_losses(out: str, png: str) -> str:
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
        if val and name == "tae":
            twin = ax.twinx()
            twin.plot(*zip(*val), "s-", color="tab:red", label="held-out PSNR")
            twin.set_ylabel("held-out PSNR (dB)", color="tab:red")
            twin.legend(loc="upper right")
        ax.set_ylabel("loss (log scale)")
        ax.set_title("TAE" if name == "tae" else "transformer (flow matching)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


@dataclass
class DemoArgs:
    output_dir: str = "runs/demo"
    """Where every stage writes (emptied first: the demo always starts fresh)."""
    quick: bool = False
    """A smoke run of every stage (about a minute)."""


def main(argv=None) -> dict:
    return run_cli(run, DemoArgs, argv, __doc__, config_file=False)


# (name, what it does, expected seconds: full, quick) on 2 idle cores, 2 threads
# (benchmarks/results/demo_cpu.md)
STAGES = (
    ("data", "write {videos} VP9 clips of coloured shapes ({held} held out)", 5, 3),
    ("tae", "train the tiny temporal autoencoder, {tae_steps} steps", 690, 15),
    ("precompute", "TAE latents + text embeddings of every clip", 10, 8),
    ("transformer", "train the flow-matching transformer, {steps} steps", 280, 15),
    ("sample", "generate 4 captions (one held out), decode, judge colour/motion/shape", 10, 10),
    ("conditioned", "held-out caption from a first frame, and a clip of it extended 2x", 15, 10),
    ("plot", "loss and PSNR curves as a PNG", 3, 3),
)


def _plan(size: dict, quick: bool) -> str:
    threads = torch.get_num_threads()
    total = sum(st[3 if quick else 2] for st in STAGES)
    lines = [f"[demo] {len(STAGES)} stages, about {format_duration(total)} (min:s) on an idle "
             f"machine; torch uses {threads} thread{'s' if threads > 1 else ''} "
             f"(OMP_NUM_THREADS)"]
    for i, (name, what, full, fast) in enumerate(STAGES, 1):
        what = what.format(held="'{} ... {}'".format(*HELD_OUT_PAIRING), **size)
        lines.append(f"[demo]   {i}. {name:<12}{what:<74} ~{format_duration(fast if quick else full)}")
    return "\n".join(lines)


def _result(name: str, result, out: str) -> str:
    if name == "data":
        return f"manifest {result}"
    if name == "tae":
        return f"held-out PSNR {result['psnr_db']:.1f} dB -> {result['dir']}"
    if name == "precompute":
        n = result["index"]
        n = " + ".join(f"{v} {k}" for k, v in n.items()) if isinstance(n, dict) else n
        return (f"{n} samples ({result['train']['written']} + {result['val']['written']} "
                f"shards) -> {os.path.join(out, 'latents')}")
    if name == "transformer":
        return (f"validation loss {result['val_loss_start']:.3f} -> {result['val_loss_end']:.3f} "
                f"in {result['steps']} steps -> {result['dir']}/final")
    if name == "sample":
        ok = sum(s["ok"] for s in result["samples"])
        return f"{ok}/{len(result['samples'])} samples right in colour and motion"
    if name == "conditioned":
        i2v, ext = result["i2v"], result["extend"]
        mark = lambda ok: "right" if ok else "WRONG"  # noqa: E731
        return (f"i2v first frame {i2v['first_frame_psnr_db']:.1f} dB, motion "
                f"{mark(i2v['moves_as_captioned'])}; extension {ext['frames_in']} -> "
                f"{ext['frames_out']} frames, seam {ext['seam_psnr_db']:.1f} dB, motion "
                f"{mark(ext['moves_as_captioned'])} -> {result['strip']}")
    return f"-> {result}"


def run(a: DemoArgs) -> dict:
    size = FULL if not a.quick else QUICK
    out = a.output_dir
    if os.path.exists(out):
        shutil.rmtree(out)  # the demo always starts fresh
    os.makedirs(out)
    times, summary = {}, {"held_out_caption": HELD_OUT_PROMPT, "threads": torch.get_num_threads()}
    print(_plan(size, a.quick), flush=True)
    index = {name: i for i, (name, *_) in enumerate(STAGES, 1)}

    def timed(name, fn, *args):
        print(f"[demo {index[name]}/{len(STAGES)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn(*args)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"[demo {index[name]}/{len(STAGES)}] {name} done in "
              f"{format_duration(times[name])}: {_result(name, result, out)}", flush=True)
        return result

    t_all = time.perf_counter()
    manifest = timed("data", stage_data, out, size["videos"])
    summary["tae"] = timed("tae", stage_tae, out, manifest, size["tae_steps"])
    overrides = job_overrides(out, manifest, size["steps"])
    summary["precompute"] = timed("precompute", stage_precompute, overrides)
    summary["transformer"] = timed("transformer", stage_transformer, overrides)
    prompts = list(SAMPLE_PROMPTS)
    summary.update(timed("sample", stage_sample, out, prompts))
    from moviegen.demo.conditioned import stage_conditioned

    summary.update(timed("conditioned", stage_conditioned, out, HELD_OUT_PROMPT,
                           DEMO_COLORS))
    png = os.path.join(out, "loss.png")
    timed("plot", plot_losses, out, png)
    times["total"] = round(time.perf_counter() - t_all, 1)
    summary["loss_plot"] = png
    summary["wall_times_s"] = times
    summary_path = os.path.join(out, "demo_summary.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    held = next(s for s in summary["samples"] if not s["seen_in_training"])
    print(f"[demo] finished in {format_duration(times['total'])}. Held-out '{HELD_OUT_PROMPT}': "
          f"colour {held['colour']['seen']} ({100 * held['colour']['fraction']:.0f}%), "
          f"motion {held['motion']['seen']} -> {'right' if held['ok'] else 'WRONG'}")
    print("[demo] wrote:")
    for path in (*(s["video"] for s in summary["samples"]), summary["i2v"]["video"],
                 summary["extend"]["video"], summary["strip"], png, summary_path,
                 os.path.join(out, "tae"), os.path.join(out, "transformer", "final")):
        print(f"[demo]   {path}")
    return summary


if __name__ == "__main__":
    main()

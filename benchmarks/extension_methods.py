"""Video extension three ways on the same clips: how well does the new clip continue?

    python benchmarks/extension_methods.py --checkpoint runs/demo/transformer/final \
        [--manifest runs/demo/data/manifest.jsonl] [--clips 8] [--weights 1 4 16]

Each held-out clip of the manifest (split val; the clips are real VP9 files) is encoded
with the run's TAE and extended to at least twice its length, every extension
conditioned on the last ``--context_frames`` latent frames so far, by:
  explicit                   the model's conditioning channels (only when the export has
                             model.cond_channels > 0)
  replacement                the same model run without conditioning; the given frames
                             are overwritten along the flow path before every step
  reconstruction guidance W  replacement plus the gradient of the model's reconstruction
                             of the given frames (Video Diffusion Models, Ho et al. 2022)
and decoded. Reported per method, over the clips (same noise seed for every method):
  seam PSNR         between the last frame before each join and the first after it (the
                    worst join of a clip; higher = smoother), against the median PSNR of
                    every other pair of neighbouring frames in the same result
  moves as captioned  the whole result's motion (moviegen.demo.judge) is the caption's
  s / clip          sampling wall time
Prints a table and writes JSON (``--output``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clips_of(manifest: str, split: str, n: int) -> list[tuple[str, str]]:
    root = os.path.dirname(os.path.abspath(manifest))
    rows = [json.loads(line) for line in open(manifest) if line.strip()]
    rows = [r for r in rows if r.get("type", "video") == "video" and r.get("split") == split]
    if not rows:
        raise SystemExit(f"manifest: no {split} videos in {manifest}")
    return [(os.path.join(root, r["path"]), r["caption"]) for r in rows[:n]]


def extend_clip(sampler, tae, video_CTHW, caption, clip_shape, context, extensions, seed):
    """(decoded video [3, T, H, W], pixel frame of each join)."""
    from moviegen.sampling.solver import extend
    from moviegen.sampling.tasks import encode

    C, T, H, W = clip_shape
    cs, ct = tae.spatial_compression, tae.temporal_compression
    z = encode(tae, video_CTHW, H * cs, W * cs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents, joins = extend(
            lambda given, mask, i: sampler.clip([caption], clip_shape, g, given, mask),
            z, extensions, T, context)
        video = tae.decode_tiled(tae.unscale_latents(latents.float()))[0]
    return video, [j * ct for j in joins]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="export directory (<output_dir>/final)")
    p.add_argument("--manifest", default=None,
                   help="clips manifest (default: the run's data.video.manifest)")
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--weights", type=float, nargs="*", default=[1.0, 4.0, 16.0],
                   help="reconstruction guidance weights")
    p.add_argument("--context_frames", type=int, default=None,
                   help="latent frames each extension starts from (default half a clip)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/bench/extension_methods.json")
    a = p.parse_args(argv)

    from moviegen.data.video_io import read_video
    from moviegen.demo.judge import continuity, motion_of, shape_mask, track
    from moviegen.models.tae import load_tae, psnr
    from moviegen.sampling.solver import Sampler
    from moviegen.training.export import default_latent_shape, load_inference

    model, cfg, encoders = load_inference(a.checkpoint)
    tae = load_tae(cfg.data.tae_checkpoint).eval()
    clip_shape = tuple(default_latent_shape(a.checkpoint, cfg))
    T = clip_shape[1]
    context = a.context_frames or max(1, T // 2)
    extensions = -(-T // (T - context))  # at least T new latent frames: twice the clip
    manifest = a.manifest or cfg.data.video.manifest
    clips = clips_of(manifest, a.split, a.clips)
    methods = [("explicit", 0.0)] if getattr(cfg.model, "cond_channels", 0) else []
    methods += [("replacement", 0.0)] + [("reconstruction_guidance", w) for w in a.weights]
    print(f"{len(clips)} {a.split} clips of {manifest}; clip {T} latent frames, "
          f"{extensions} extension(s) from the last {context}; torch threads "
          f"{torch.get_num_threads()}", flush=True)

    truth = [float(np.median([psnr(v[:, i - 1], v[:, i]) for i in range(1, v.shape[1])]))
             for v in (read_video(path) for path, _ in clips)]
    results = []
    for method, w in methods:
        sampler = Sampler(model, encoders, cfg, a.steps, method=method, weight=w)
        seams, rest, moves, secs = [], [], [], []
        for k, (path, caption) in enumerate(clips):
            t0 = time.perf_counter()
            video, joins = extend_clip(sampler, tae, read_video(path), caption, clip_shape,
                                       context, extensions, a.seed + k)
            secs.append(time.perf_counter() - t0)
            c = continuity(video, joins)
            seams.append(c["seam_psnr_db"])
            rest.append(c["consecutive_psnr_db"])
            moves.append(motion_of(track(shape_mask(video))) == caption.split(" moves ")[1])
        name = method if method != "reconstruction_guidance" else f"reconstruction guidance {w:g}"
        row = {"method": method, "weight": w, "name": name,
               "seam_psnr_db": round(float(np.mean(seams)), 2),
               "seam_psnr_db_per_clip": seams,
               "consecutive_psnr_db": round(float(np.mean(rest)), 2),
               "moves_as_captioned": int(sum(moves)), "clips": len(clips),
               "s_per_clip": round(float(np.mean(secs)), 2)}
        results.append(row)
        print(f"  {name}: seam {row['seam_psnr_db']:.2f} dB, moves {row['moves_as_captioned']}"
              f"/{len(clips)}, {row['s_per_clip']:.1f} s/clip", flush=True)

    print()
    print("| method | seam PSNR (dB) | neighbouring frames elsewhere (dB) | moves as captioned "
          "| s / clip |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['seam_psnr_db']:.2f} | {r['consecutive_psnr_db']:.2f} | "
              f"{r['moves_as_captioned']}/{r['clips']} | {r['s_per_clip']:.1f} |")
    print(f"| (the real clips) | | {float(np.mean(truth)):.2f} | | |")
    out = {"checkpoint": a.checkpoint, "manifest": manifest, "split": a.split,
           "clips": len(clips), "clip_latent_frames": T, "context_frames": context,
           "extensions": extensions, "steps": a.steps or cfg.flow.sample_steps,
           "guidance_scale": cfg.flow.guidance_scale, "threads": torch.get_num_threads(),
           "real_clip_neighbouring_psnr_db": round(float(np.mean(truth)), 2),
           "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.output}")
    return out


if __name__ == "__main__":
    main()

"""How a given pixel frame maps to a latent frame: image-to-video's conditioning choice.

W.A.L.T's causal encoder codes a video's first frame on its own, so an image's latent is
exactly a video's first latent. Our TAE pads symmetrically in time: a video's latent
frame 0 summarises several pixel frames. Image-to-video can therefore be given either
  video latent   the clip's latent frame 0 in training (at sampling time only an image
                 exists: its latent, alone or as a still clip, is all one can give), or
  image latent   the first frame encoded alone, in training and at sampling time alike
                 (what moviegen.conditioning does when pixels or precomputed
                 first_frame_latents are there).
For held-out clips this prints, per route, the PSNR of the first frame decoded from what
is given against the real first frame, and how far the latent an image yields at
sampling time is from the latent the model saw in training (relative L2), then writes
JSON:

    python benchmarks/first_frame_latents.py --tae runs/demo/tae \
        --manifest runs/demo/data/manifest.jsonl --output benchmarks/results/first_frame_latents.json
"""
from __future__ import annotations

import argparse
import json
import os

import torch


def measure(tae, clip_B3THW: torch.Tensor) -> dict:
    """Numbers for one clip [1, 3, T, H, W] in [-1, 1]."""
    from moviegen.models.tae import psnr

    frame0 = clip_B3THW[:, :, :1]
    T = clip_B3THW.shape[2]
    with torch.no_grad():
        z_clip = tae.encode(clip_B3THW)            # the video's latents
        z_image = tae.encode(frame0)               # the first frame alone: one latent frame
        z_still = tae.encode(frame0.expand(-1, -1, T, -1, -1))  # the image as a still clip
        from_clip = tae.decode(z_clip, num_frames=T)[:, :, :1]
        from_image = tae.decode(z_image, num_frames=1)
        # video-latent route at sampling time: only an image exists; its still clip's
        # latent frame 0 replaces the one the model was trained on
        from_still = tae.decode(z_still, num_frames=T)[:, :, :1]

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    return {"psnr_first_frame_from_video_latents_db": float(psnr(from_clip, frame0)),
            "psnr_first_frame_from_image_latent_db": float(psnr(from_image, frame0)),
            "psnr_first_frame_from_still_clip_latents_db": float(psnr(from_still, frame0)),
            "rel_l2_image_latent_vs_video_latent0": rel(z_image[:, :, 0], z_clip[:, :, 0]),
            "rel_l2_still_latent0_vs_video_latent0": rel(z_still[:, :, 0], z_clip[:, :, 0])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tae", required=True, help="a trained TAE directory (train_tae output)")
    p.add_argument("--manifest", required=True, help="manifest.jsonl of the clips")
    p.add_argument("--num", type=int, default=8, help="clips (held-out split first)")
    p.add_argument("--output", default=None, help="JSON file to write")
    args = p.parse_args(argv)

    from moviegen.data.video_io import read_video
    from moviegen.models.tae import load_tae

    torch.manual_seed(0)
    tae = load_tae(args.tae).eval()
    rows = [json.loads(line) for line in open(args.manifest) if line.strip()]
    rows = sorted((r for r in rows if r.get("type", "video") == "video"),
                  key=lambda r: r.get("split") != "val")[:args.num]
    base = os.path.dirname(os.path.abspath(args.manifest))
    per_clip = []
    for r in rows:
        clip = read_video(os.path.join(base, r["path"]))[None]  # [1, 3, T, H, W]
        T = clip.shape[2] - clip.shape[2] % tae.temporal_compression or clip.shape[2]
        per_clip.append(measure(tae, clip[:, :, :T]))
    keys = list(per_clip[0])
    mean = {k: sum(c[k] for c in per_clip) / len(per_clip) for k in keys}
    print(f"{len(per_clip)} clips, TAE {args.tae} (temporal compression "
          f"{tae.temporal_compression})")
    print("| measure | mean |\n|---|---|")
    for k in keys:
        print(f"| {k} | {mean[k]:.3f} |")
    out = {"tae": args.tae, "clips": len(per_clip), "mean": mean, "per_clip": per_clip}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

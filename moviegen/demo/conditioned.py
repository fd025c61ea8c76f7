"""The demo's conditioned stage: the held-out caption from a given first frame, and a clip
of it extended to twice its length, both by the demo's one transformer (trained with
text-to-video, image-to-video and extension tasks; launch/configs/demo.yaml).

A clip of the held-out pairing is drawn the way moviegen.data.synthetic draws its data
and written as a real VP9 file (the pairing never occurs in training). Then, through the
same calls as ``python -m moviegen.sample`` (moviegen.sampling.tasks):
  i2v     its first frame as a PNG -> ``--image``: ``first_frame_psnr_db`` (decoded first
          frame vs the given one), the shape's track and whether it moves as captioned
  extend  the clip -> ``--video --task extend``, extended until it has at least twice its
          frames (each new clip starts from the last half of the one before):
          ``seam_psnr_db`` (the worst join, frames on either side) against
          ``consecutive_psnr_db`` (neighbouring frames elsewhere), the track, the motion
          of the whole result
and a strip of frames of each as one PNG (``conditioned.png``).

The demo runs it as its stage 6; on its own it measures the transformer of an existing
demo directory again (writing <output_dir>/conditioned*, the results in conditioned.json):

    python -m moviegen.demo.conditioned --output_dir runs/demo
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

STRIP_SCALE = 2  # 48 px frames drawn at 96 px


def held_out_clip(path: str, caption: str, frames: int = 16, size: int = 48,
                  fps: int = 8) -> str:
    """Writes a clip showing ``caption`` ("a <colour> <shape> moves <direction>") as the
    synthetic data would (the same drawing, speed and VP9 encoding)."""
    from moviegen.data.synthetic import COLORS, DIRECTIONS, draw_shape, write_webm

    words = caption.split()
    colour, shape, direction = words[1], words[2], caption.split(" moves ")[1]
    (x0, y0), (x1, y1) = DIRECTIONS[direction]
    clip = np.stack([draw_shape(size, size, shape, COLORS[colour],
                                (x0 + (x1 - x0) * k / (frames - 1),
                                 y0 + (y1 - y0) * k / (frames - 1)), 0.3 * size)
                     for k in range(frames)])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_webm(path, clip, fps)
    return path


def _row(frames_CTHW: torch.Tensor, every: int, marks=()) -> np.ndarray:
    """uint8 [h, w, 3]: every ``every``-th frame side by side, a white bar before each
    frame index in ``marks``."""
    from moviegen.data.video_io import to_uint8_frames

    frames = to_uint8_frames(frames_CTHW)
    tiles = []
    for i in range(0, frames.shape[0], every):
        tile = frames[i].repeat(STRIP_SCALE, 0).repeat(STRIP_SCALE, 1)
        if any(i <= m < i + every for m in marks):
            tile = tile.copy()
            tile[:, :3] = 255
        tiles.append(np.pad(tile, ((0, 0), (0, 2), (0, 0))))
    return np.concatenate(tiles, axis=1)


def write_strip(path: str, rows: list[tuple[str, np.ndarray]]) -> str:
    """One PNG: a label above each row of frames."""
    from PIL import Image, ImageDraw

    label_h, pad = 14, 6
    width = max(r.shape[1] for _, r in rows)
    height = sum(r.shape[0] + label_h + pad for _, r in rows)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, row in rows:
        draw.text((2, y + 1), label, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(row), (0, y + label_h))
        y += row.shape[0] + label_h + pad
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


def stage_conditioned(out: str, prompt: str, palette: tuple[str, ...], seed: int = 0) -> dict:
    from moviegen.data.video_io import read_video, write_gif, write_video
    from moviegen.demo.judge import continuity, judge, verdict_line
    from moviegen.models.tae import load_tae, psnr
    from moviegen.sampling.solver import Sampler
    from moviegen.sampling.tasks import Request, decode, read_image, run_request
    from moviegen.training.export import default_latent_shape, load_inference

    final = os.path.join(out, "transformer", "final")
    model, cfg, encoders = load_inference(final)
    tae = load_tae(cfg.data.tae_checkpoint).eval()
    shape = tuple(default_latent_shape(final, cfg))
    work = os.path.join(out, "conditioned")
    clip_path = held_out_clip(os.path.join(work, "held_out_clip.webm"), prompt,
                              size=shape[2] * tae.spatial_compression, fps=int(cfg.data.fps))
    clip = read_video(clip_path)
    first_png = os.path.join(work, "first_frame.png")
    from PIL import Image

    from moviegen.data.video_io import to_uint8_frames

    Image.fromarray(to_uint8_frames(clip[:, :1])[0]).save(first_png)
    sampler = Sampler(model, encoders, cfg, progress=True)

    i2v = decode(tae, run_request(sampler, tae, Request(
        [prompt], "i2v", image=first_png, clip_shape_CTHW=shape, seed=seed)).latents)[0]
    v = judge(i2v, prompt, palette)
    given = read_image(first_png)[:, 0]
    result_i2v = {"given_frame": first_png, "frames": i2v.shape[1],
                  "first_frame_psnr_db": round(psnr(i2v[:, 0], given), 2),
                  "track_xy": v["track_xy"], "moves_as_captioned": v["motion"]["ok"],
                  "motion": v["motion"]["seen"], "colour": v["colour"]["seen"]}
    print(f"[demo]   i2v from the held-out clip's first frame: first frame "
          f"{result_i2v['first_frame_psnr_db']:.1f} dB vs the given one; "
          f"{verdict_line(prompt, v)}", flush=True)

    T, context = shape[1], max(1, shape[1] // 2)
    t_in = -(-clip.shape[1] // tae.temporal_compression)
    n_ext = -(-t_in // (T - context))  # at least t_in new latent frames: twice the clip
    res = run_request(sampler, tae, Request([prompt], "extend", video=clip_path,
                                            clip_shape_CTHW=shape, num_extensions=n_ext,
                                            context_frames=context, seed=seed))
    ext = decode(tae, res.latents)[0]
    joins = [j * tae.temporal_compression for j in res.joins]
    v2 = judge(ext, prompt, palette)
    result_ext = {"clip": clip_path, "frames_in": clip.shape[1], "frames_out": ext.shape[1],
                  "extensions": n_ext, "context_latent_frames": context, "joins": joins,
                  **continuity(ext, joins), "track_xy": v2["track_xy"],
                  "moves_as_captioned": v2["motion"]["ok"], "motion": v2["motion"]["seen"],
                  "colour": v2["colour"]["seen"]}
    print(f"[demo]   extend the held-out clip {clip.shape[1]} -> {ext.shape[1]} frames: seam "
          f"{result_ext['seam_psnr_db']:.1f} dB (neighbouring frames elsewhere "
          f"{result_ext['consecutive_psnr_db']:.1f} dB); {verdict_line(prompt, v2)}",
          flush=True)

    for name, video in (("i2v", i2v), ("extend", ext)):
        path = os.path.join(work, f"{name}.webm")
        write_video(path, video, fps=cfg.data.fps)
        write_gif(os.path.splitext(path)[0] + ".gif", video, fps=int(cfg.data.fps))
        (result_i2v if name == "i2v" else result_ext)["video"] = path
    every = 2
    strip = write_strip(os.path.join(out, "conditioned.png"), [
        (f"given first frame, then image-to-video: '{prompt}' (every {every}nd frame)",
         np.concatenate([_row(clip[:, :1], 1), _row(i2v, every)], axis=1)),
        ("the held-out clip (real VP9 file)", _row(clip, every)),
        (f"extended {clip.shape[1]} -> {ext.shape[1]} frames (white bar: first frame of "
         f"each new clip)", _row(ext, every, joins)),
    ])
    return {"i2v": result_i2v, "extend": result_ext, "strip": strip}


@dataclass
class ConditionedArgs:
    output_dir: str = "runs/demo"
    """A demo directory with transformer/final (trained with the conditioning tasks)."""
    seed: int = 0
    """Noise seed."""

    def validate(self) -> None:
        from moviegen.config import check

        final = os.path.join(self.output_dir, "transformer", "final")
        check(os.path.isfile(os.path.join(final, "config.yaml")), "output_dir",
              f"no demo transformer export in '{final}' (run python -m moviegen.demo first)")


def run(a: ConditionedArgs) -> dict:
    from moviegen.demo.scene import DEMO_COLORS, HELD_OUT_PROMPT

    result = stage_conditioned(a.output_dir, HELD_OUT_PROMPT, DEMO_COLORS, a.seed)
    with open(os.path.join(a.output_dir, "conditioned.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "track_xy"}
                      if isinstance(v, dict) else v for k, v in result.items()}, indent=1))
    return result


def main(argv=None) -> dict:
    from moviegen.config import run_cli

    return run_cli(run, ConditionedArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()

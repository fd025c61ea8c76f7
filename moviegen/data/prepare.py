"""Probe videos and images into a manifest, filter them, and assign buckets.

    python -m moviegen.data.prepare --input DIR --output manifest.jsonl
    python -m moviegen.data.prepare --input rows.jsonl --output manifest.jsonl \\
        --preset 256px                      # Movie Gen filter: 4-16 s, min side 256
    python -m moviegen.data.prepare --input DIR --output m.jsonl --min_duration 4 \\
        --max_duration 16 --min_side 256 --workers 8

--input is a folder (every video/image in it, captions from a .txt beside each file) or a
.jsonl whose rows have at least "path" and "caption" (optional "split"). Each file is
probed with PyAV (codec, size, fps, frame count) or PIL (images). A malformed input row
stops the run with its line number and field; a missing or unreadable file is reported
and left out; rows failing the filter (shorter side, duration range, too short for the
shortest bucket) are counted per reason. The summary is printed as JSON.

The filter and buckets come from the preset (default: the tiny VideoDataConfig, which
keeps the 1-3 s synthetic clips) with the flags on top.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Optional

import numpy as np

from moviegen.config.core import check, run_cli
from moviegen.data.buckets import assign_buckets, make_buckets
from moviegen.data.config import VideoDataConfig, moviegen_256px, moviegen_768px
from moviegen.data.manifest import (IMAGE_EXTS, VIDEO_EXTS, Manifest, ManifestError, iter_jsonl,
                                    guess_type, write_rows)

PRESETS = {"tiny": VideoDataConfig, "256px": moviegen_256px, "768px": moviegen_768px}


def probe(path: str) -> dict:
    """Media fields of one file; raises ValueError/OSError (with a reason) if unreadable."""
    if not os.path.exists(path):
        raise FileNotFoundError("missing file")
    if os.path.getsize(path) == 0:
        raise ValueError("zero-byte file")
    kind = guess_type(path)
    if kind == "image":
        from PIL import Image
        with Image.open(path) as im:
            im.verify()
            w, h = im.size
        return {"type": "image", "width": int(w), "height": int(h)}
    import av
    with av.open(path) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate:
            raise ValueError("unknown frame rate")
        frames = sum(1 for pkt in c.demux(s) if pkt.size)
        w, h, codec = s.codec_context.width, s.codec_context.height, s.codec_context.name
    if frames == 0 or not w or not h:
        raise ValueError(f"no decodable frames (frames={frames}, size={w}x{h})")
    fps = float(rate)
    return {"type": "video", "codec": codec, "width": int(w), "height": int(h),
            "fps": round(fps, 6), "frames": int(frames), "duration": round(frames / fps, 6)}


def _probe_job(args):
    idx, path = args
    try:
        return idx, probe(path), None
    except Exception as e:  # noqa: BLE001 - reported per file, the run goes on
        return idx, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def read_input_rows(path: str) -> list[dict]:
    """Rows of an input .jsonl; only path/caption are required. Errors name the line."""
    out = []
    base = os.path.dirname(os.path.abspath(path))
    for _, where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise ManifestError(f"{where}: row must be a JSON object")
        for name in ("path", "caption"):
            if name not in row:
                raise ManifestError(f"{where}: missing field '{name}'")
            if not isinstance(row[name], str) or not row[name]:
                raise ManifestError(f"{where}: field '{name}' must be a non-empty string, "
                                    f"got {row[name]!r}")
        if row.get("split", "train") not in ("train", "val"):
            raise ManifestError(f"{where}: field 'split' must be 'train' or 'val', "
                                f"got {row.get('split')!r}")
        p = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
        out.append({"abs": p, "caption": row["caption"], "split": row.get("split", "train")})
    return out


def scan_dir(root: str, require_captions: bool = True
             ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Media files under `root` with captions from sidecar .txt files (without
    ``require_captions``, a file with no sidecar gets an empty caption)."""
    rows, problems = [], []
    for d, _, files in os.walk(root):
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTS + IMAGE_EXTS:
                continue
            p = os.path.join(d, name)
            txt = os.path.splitext(p)[0] + ".txt"
            if not require_captions and not os.path.isfile(txt):
                rows.append({"abs": p, "caption": "", "split": "train"})
                continue
            if not os.path.isfile(txt):
                problems.append((p, "no caption (.txt beside the file)"))
                continue
            with open(txt, encoding="utf-8") as f:
                caption = " ".join(f.read().split())
            if not caption:
                problems.append((p, "empty caption"))
                continue
            rows.append({"abs": p, "caption": caption, "split": "train"})
    rows.sort(key=lambda r: r["abs"])
    return rows, problems


def prepare(input_path: str, output: str, cfg: VideoDataConfig, workers: int = 1,
            require_captions: bool = True) -> dict:
    if os.path.isdir(input_path):
        rows, unreadable = scan_dir(input_path, require_captions)
    else:
        rows, unreadable = read_input_rows(input_path), []
    jobs = [(i, r["abs"]) for i, r in enumerate(rows)]
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = list(pool.imap(_probe_job, jobs, chunksize=16))
    else:
        results = [_probe_job(j) for j in jobs]
    out_dir = os.path.dirname(os.path.abspath(output))
    probed = []
    for idx, info, err in results:
        r = rows[idx]
        if err is not None:
            unreadable.append((r["abs"], err))
            continue
        rel = os.path.relpath(r["abs"], out_dir)
        probed.append({"path": rel if not rel.startswith("..") else r["abs"],
                       "caption": r["caption"], **info, "split": r["split"]})
    for p, why in unreadable:
        print(f"prepare: left out {p}: {why}", file=sys.stderr)

    kept, filtered = [], Counter()
    if probed:
        m = _to_manifest(probed, out_dir)
        buckets = make_buckets(cfg)
        ids = assign_buckets(cfg, m, buckets)
        for row, b, short, dur in zip(probed, ids, np.minimum(m.width, m.height), m.duration):
            if b >= 0:
                kept.append({**row, "bucket": buckets[b].name})
            elif short < cfg.min_side:
                filtered[f"shorter side < {cfg.min_side}"] += 1
            elif row["type"] == "image":
                filtered["images disabled"] += 1
            elif not cfg.min_duration_s <= dur <= cfg.max_duration_s:
                filtered[f"duration outside {cfg.min_duration_s}-{cfg.max_duration_s} s"] += 1
            else:
                filtered["too short for the shortest bucket / videos disabled"] += 1
    write_rows(output, kept)
    return {"output": output, "kept": len(kept), "unreadable": len(unreadable),
            "unreadable_files": [list(x) for x in unreadable],
            "filtered": dict(filtered), "buckets": dict(Counter(r["bucket"] for r in kept))}


def _to_manifest(rows: list[dict], root: str) -> Manifest:
    img = np.array([r["type"] == "image" for r in rows])
    num = lambda k, d, dt: np.array([r.get(k, d) for r in rows], dt)  # noqa: E731
    return Manifest(source="<prepare>", root=root, paths=[r["path"] for r in rows],
                    captions=[r["caption"] for r in rows], is_image=img,
                    width=num("width", 0, np.int64), height=num("height", 0, np.int64),
                    fps=num("fps", 0.0, np.float64), frames=num("frames", 1, np.int64),
                    duration=num("duration", 0.0, np.float64),
                    is_val=np.array([r["split"] == "val" for r in rows]))


@dataclass
class PrepareArgs:
    input: str
    """A folder of media (captions from a .txt beside each file), or a .jsonl of rows."""
    output: str
    """manifest.jsonl to write."""
    preset: str = "tiny"
    """Filter and bucket preset: tiny (the CPU demo's), 256px or 768px (Movie Gen's)."""
    min_side: Optional[int] = None
    """Drop files whose shorter side is below this (pixels)."""
    min_duration: Optional[float] = None
    """Drop videos shorter than this (seconds)."""
    max_duration: Optional[float] = None
    """Drop videos longer than this (seconds)."""
    fps: Optional[float] = None
    """Target sampling frame rate of the buckets."""
    durations: Optional[list[float]] = None
    """Bucket durations in seconds."""
    workers: int = 1
    """Probe processes."""

    def validate(self) -> None:
        check(os.path.exists(self.input), "input", f"'{self.input}' does not exist")
        check(self.preset in PRESETS, "preset",
              f"'{self.preset}' is not one of {', '.join(sorted(PRESETS))}")
        check(self.workers >= 1, "workers", "must be >= 1")


def main(argv=None) -> None:
    def run(a: PrepareArgs) -> None:
        cfg = PRESETS[a.preset]()
        for flag, name in (("min_side", "min_side"), ("min_duration", "min_duration_s"),
                           ("max_duration", "max_duration_s"), ("fps", "fps"),
                           ("durations", "durations")):
            if getattr(a, flag) is not None:
                setattr(cfg, name, getattr(a, flag))
        try:
            cfg.validate()
            summary = prepare(a.input, a.output, cfg, a.workers)
        except (ManifestError, ValueError) as e:
            sys.exit(f"prepare: {e}")
        print(json.dumps(summary, indent=1))

    run_cli(run, PrepareArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()

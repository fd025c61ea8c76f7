"""Probe videos and images into a manifest, filter them, and assign buckets.

    python -m moviegen.data.prepare --input DIR --output manifest.jsonl
    python -m moviegen.data.prepare --input rows.jsonl --output manifest.jsonl \\
        --preset 256px                      # Movie Gen filter: 4-16 s, min side 256
    python -m moviegen.data.prepare --input DIR --output m.jsonl --min_duration 4 \\
        --max_duration 16 --min_side 256 --workers 8

--input is a folder (every video/image in it: .mp4, .mkv, .webm, .mov, .avi, .mpg, .ts,
...; captions from a .txt or .json beside each file) or a .jsonl whose rows have at least
"path" and "caption" (optional "split"). Each file is probed with PyAV (codec, container,
pixel format, rotation, size, frame count and duration from presentation timestamps, so
variable-frame-rate clips get their true length) or PIL (images). ``--val_fraction 0.25``
marks a stable quarter of the files "val" (a hash of the path). A malformed input row
stops the run with its line number and field; a missing or unreadable file, a caption
that is not UTF-8 (file and byte offset) and every filtered row are named with the
reason in ``<output>.report.json`` beside the manifest. The summary is printed as JSON.

The filter and buckets come from the preset (default: the tiny VideoDataConfig, which
keeps the 1-3 s synthetic clips) with the flags on top.
"""
from __future__ import annotations

import hashlib
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
        pts = sorted(float(pkt.pts * pkt.time_base) for pkt in c.demux(s)
                     if pkt.size and pkt.pts is not None)
        ctx = s.codec_context
        w, h, codec, pix_fmt = ctx.width, ctx.height, ctx.name, ctx.pix_fmt
        container = c.format.name.split(",")[0]
        rotation = int(s.metadata.get("rotate", 0) or 0)
    frames = len(pts)
    if frames == 0 or not w or not h:
        raise ValueError(f"no decodable frames (frames={frames}, size={w}x{h})")
    fps = float(rate)
    # Duration from presentation timestamps (a variable-frame-rate clip's frames / average
    # rate is wrong); fps is then frames per second of that span
    steps = np.diff(pts)
    span = pts[-1] - pts[0] + (float(np.median(steps)) if len(steps) else 1.0 / fps)
    vfr = bool(len(steps) > 1 and steps.max() > 1.5 * max(steps.min(), 1e-9))
    if vfr:
        fps = frames / span
    return {"type": "video", "codec": codec, "container": container, "pix_fmt": pix_fmt,
            "rotation": rotation, "vfr": vfr, "width": int(w), "height": int(h),
            "fps": round(fps, 6), "frames": int(frames), "duration": round(span, 6)}


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


def read_caption(media_path: str) -> str | None:
    """The caption beside a media file: ``<stem>.txt`` (the whole text) or ``<stem>.json``
    (its "caption" field); None when there is neither. A file that is not UTF-8 raises
    ValueError naming the file and the byte offset."""
    stem = os.path.splitext(media_path)[0]
    for ext in (".txt", ".json"):
        path = stem + ext
        if not os.path.isfile(path):
            continue
        raw = open(path, "rb").read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"caption {path} is not UTF-8 (byte {e.start}: "
                             f"{raw[e.start:e.start + 1]!r}); re-encode it as UTF-8") from None
        if ext == ".json":
            try:
                text = json.loads(text)["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"caption {path}: expected a JSON object with a 'caption' "
                                 f"string ({type(e).__name__})") from None
            if not isinstance(text, str):
                raise ValueError(f"caption {path}: 'caption' must be a string")
        return " ".join(text.split())
    return None


def scan_dir(root: str, require_captions: bool = True
             ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Media files under `root` with captions from sidecar .txt/.json files (without
    ``require_captions``, a file with no sidecar gets an empty caption). Files that are
    left out are returned with the reason."""
    rows, problems = [], []
    for d, _, files in os.walk(root):
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTS + IMAGE_EXTS:
                continue
            p = os.path.join(d, name)
            try:
                caption = read_caption(p)
            except ValueError as e:
                problems.append((p, str(e)))
                continue
            if caption is None and require_captions:
                problems.append((p, "no caption (.txt or .json beside the file)"))
                continue
            if require_captions and not caption:
                problems.append((p, "empty caption"))
                continue
            rows.append({"abs": p, "caption": caption or "", "split": "train"})
    rows.sort(key=lambda r: r["abs"])
    return rows, problems


def val_split(rel_path: str, val_fraction: float) -> str:
    """"val" for a stable ``val_fraction`` of paths (a hash of the path, not the order):
    adding files never moves an existing one between splits."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha1(rel_path.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def prepare(input_path: str, output: str, cfg: VideoDataConfig, workers: int = 1,
            require_captions: bool = True, val_fraction: float = 0.0) -> dict:
    """Probes, filters and writes the manifest; a report beside it
    (``<output>.report.json``) names every file left out and why."""
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
        split = r["split"]
        if val_fraction > 0 and os.path.isdir(input_path):
            split = val_split(os.path.relpath(r["abs"], input_path), val_fraction)
        probed.append({"path": rel if not rel.startswith("..") else r["abs"],
                       "caption": r["caption"], **info, "split": split})
    for p, why in unreadable:
        print(f"prepare: left out {p}: {why}", file=sys.stderr)

    kept, filtered, dropped = [], Counter(), []
    if probed:
        m = _to_manifest(probed, out_dir)
        buckets = make_buckets(cfg)
        ids = assign_buckets(cfg, m, buckets)
        for row, b, short, dur in zip(probed, ids, np.minimum(m.width, m.height), m.duration):
            if b >= 0:
                kept.append({**row, "bucket": buckets[b].name})
                continue
            if short < cfg.min_side:
                why = f"shorter side < {cfg.min_side}"
            elif row["type"] == "image":
                why = "images disabled"
            elif not cfg.min_duration_s <= dur <= cfg.max_duration_s:
                why = f"duration outside {cfg.min_duration_s}-{cfg.max_duration_s} s"
            else:
                why = "too short for the shortest bucket / videos disabled"
            filtered[why] += 1
            dropped.append([os.path.join(out_dir, row["path"]), why])
    write_rows(output, kept)
    summary = {"output": output, "kept": len(kept),
               "val": sum(r["split"] == "val" for r in kept), "unreadable": len(unreadable),
               "unreadable_files": [list(x) for x in unreadable],
               "filtered": dict(filtered), "buckets": dict(Counter(r["bucket"] for r in kept)),
               "report": report_path(output)}
    with open(report_path(output), "w", encoding="utf-8") as f:
        json.dump({**summary, "filtered_files": dropped}, f, indent=1, ensure_ascii=False)
    return summary


def report_path(manifest: str) -> str:
    return os.path.splitext(manifest)[0] + ".report.json"


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
    val_fraction: float = 0.0
    """Fraction of the files marked "val" (chosen by a hash of the path: stable when
    files are added); 0 keeps the input's splits (all "train" for a folder)."""

    def validate(self) -> None:
        check(os.path.exists(self.input), "input", f"'{self.input}' does not exist")
        check(self.preset in PRESETS, "preset",
              f"'{self.preset}' is not one of {', '.join(sorted(PRESETS))}")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")


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
            summary = prepare(a.input, a.output, cfg, a.workers, val_fraction=a.val_fraction)
        except (ManifestError, ValueError) as e:
            sys.exit(f"prepare: {e}")
        print(json.dumps(summary, indent=1))

    run_cli(run, PrepareArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()

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
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Optional

import numpy as np

from moviegen.config.core import check, run_cli
from moviegen.data.buckets import assign_buckets, make_buckets
from moviegen.config.video import VideoDataConfig, moviegen_256px, moviegen_768px
from moviegen.data.curate import Curation, clips_of
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
    idx, path, cur = args
    try:
        info = probe(path)
        if cur is not None and info["type"] == "video" and cur.changes_clips:
            info["clips"] = clips_of(path, info, cur)
        return idx, info, None
    except Exception as e:  # noqa: BLE001 - reported per file, the run goes on
        return idx, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _file_key(path: str) -> str:
    st = os.stat(path) if os.path.exists(path) else None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}" if st else path


class ProbeCache:
    """Probe results of earlier runs (``<output>.probe.jsonl``), keyed by path, size and
    modification time: a rerun probes only new or changed files (resumable)."""

    def __init__(self, path: str, curation):
        self.path, self.tag = path, repr(curation)
        self.entries: dict[str, dict] = {}
        if os.path.isfile(path):
            for _, _, row in iter_jsonl(path):
                if row.get("curation") == self.tag:
                    self.entries[row["key"]] = row
        self._f = open(path, "a", encoding="utf-8")

    def get(self, path: str):
        e = self.entries.get(_file_key(path))
        return None if e is None else (e["info"], e["error"])

    def put(self, path: str, info, error) -> None:
        self._f.write(json.dumps({"key": _file_key(path), "curation": self.tag, "info": info,
                                  "error": error}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


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
            require_captions: bool = True, val_fraction: float = 0.0,
            curation: Curation | None = None) -> dict:
    """Probes (and curates), filters and writes the manifest; a report beside it
    (``<output>.report.json``) names every file left out and why. Probe results are
    cached beside the output, so a rerun only probes new or changed files."""
    t_start = time.perf_counter()
    cur = curation or Curation()
    if os.path.isdir(input_path):
        rows, unreadable = scan_dir(input_path, require_captions)
    else:
        rows, unreadable = read_input_rows(input_path), []
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    cache = ProbeCache(os.path.splitext(output)[0] + ".probe.jsonl", cur)
    results, jobs = [], []
    for i, r in enumerate(rows):
        hit = cache.get(r["abs"])
        if hit is not None:
            results.append((i, *hit))
        else:
            jobs.append((i, r["abs"], cur))
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            fresh = list(pool.imap(_probe_job, jobs, chunksize=4))
    else:
        fresh = [_probe_job(j) for j in jobs]
    for idx, info, err in fresh:
        cache.put(rows[idx]["abs"], info, err)
    cache.close()
    results = sorted(results + fresh, key=lambda x: x[0])
    out_dir = os.path.dirname(os.path.abspath(output))
    probed, dropped = [], []
    for idx, info, err in results:
        r = rows[idx]
        if err is not None:
            unreadable.append((r["abs"], err))
            continue
        rel = os.path.relpath(r["abs"], out_dir)
        split = r["split"]
        if val_fraction > 0 and os.path.isdir(input_path):
            split = val_split(os.path.relpath(r["abs"], input_path), val_fraction)
        base = {"path": rel if not rel.startswith("..") else r["abs"],
                "caption": r["caption"], **{k: v for k, v in info.items() if k != "clips"},
                "split": split}
        aspect = info["width"] / info["height"]
        if not cur.min_aspect <= aspect <= cur.max_aspect:
            dropped.append([r["abs"], f"aspect ratio {aspect:.3f} outside "
                                      f"[{cur.min_aspect}, {cur.max_aspect}]"])
            continue
        for clip in info.get("clips", [None]):
            if clip is not None and "dropped" in clip:
                dropped.append([r["abs"], clip["dropped"]])
            else:
                probed.append({**base, **(clip or {})})
    for p, why in unreadable:
        print(f"prepare: left out {p}: {why}", file=sys.stderr)

    kept, filtered = [], Counter(why.split(":")[0].split(" (")[0] for _, why in dropped)
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
               "report": report_path(output), "files": len(rows), "probed_now": len(jobs),
               "seconds": round(time.perf_counter() - t_start, 3),
               "files_per_s": round(len(jobs) / max(time.perf_counter() - t_start, 1e-9), 2)}
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
    trim_start_s: float = 0.0
    """Drop the first seconds of every video (Movie Gen: unstable starts)."""
    scene_threshold: float = 0.0
    """Cut multi-shot videos where sampled frames differ by more than this (mean |grey
    difference|, 0-255; e.g. 30); 0: off."""
    min_motion: float = 0.0
    """Drop clips whose median frame difference is below this (near-static; e.g. 1.0)."""
    min_clip_s: float = 0.5
    """Shortest clip kept after trimming and cuts, seconds."""
    min_aspect: float = 0.0
    """Drop files whose width / height is below this (0: no bound)."""
    max_aspect: float = math.inf
    """Drop files whose width / height is above this."""

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
            cur = Curation(trim_start_s=a.trim_start_s, scene_threshold=a.scene_threshold,
                           min_motion=a.min_motion, min_clip_s=a.min_clip_s,
                           min_aspect=a.min_aspect, max_aspect=a.max_aspect)
            summary = prepare(a.input, a.output, cfg, a.workers, val_fraction=a.val_fraction,
                              curation=cur)
        except (ManifestError, ValueError) as e:
            sys.exit(f"prepare: {e}")
        print(json.dumps(summary, indent=1))

    run_cli(run, PrepareArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()

"""The manifest: one JSON object per line, one line per video or image.

Row fields (``python -m moviegen.data.prepare`` writes them; the loader reads them):

    path      str    file path, relative to the manifest's folder or absolute
    caption   str    what is seen ("a red circle moves from left to right")
    type      str    "video" or "image" (optional: guessed from the extension)
    width     int    pixels
    height    int    pixels
    fps       number frames per second             (videos only)
    frames    int    number of frames              (videos only)
    duration  number seconds                        (videos only; frames / fps)
    split     str    "train" or "val" (optional, default "train")
    vfr       bool   variable frame rate (optional): frames are then picked by timestamp
    clip_start number seconds into the file where this clip starts (optional, default 0:
                     a curated multi-shot video gives one row per single-shot clip)
    codec     str    video codec as probed ("h264", "vp9", "mpeg2video", ...; optional): each
                     row goes to a decoder that reads it on this device
    bucket    str    informational; the loader re-assigns buckets from its own config

Loading is columnar: one ``json.loads`` over the whole file and numpy columns, so a
million-row manifest loads in seconds; a Parquet copy beside a large manifest
(manifest_cache.py, rebuilt whenever the manifest changes) makes later loads faster still. Only when that fast path finds something wrong
does it re-read row by row to name the offending line and field (:class:`ManifestError`).
No file is opened here; a missing or broken file is found, logged and skipped at decode.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from moviegen.data import manifest_cache

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_EXTS = (".webm", ".mkv", ".mp4", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".m2v",
              ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".3gp", ".ogv")
_NUMERIC = {"width": int, "height": int, "fps": float, "frames": int, "duration": float}
_VIDEO_ONLY = ("fps", "frames", "duration")


class ManifestError(ValueError):
    """A malformed manifest row; the message names file, line and field."""


def guess_type(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def validate_row(row, where: str) -> dict:
    """Checks one parsed row; returns it with "type" and "split" filled in.

    `where` is "manifest.jsonl:12", used as the prefix of every error message.
    """
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: row must be a JSON object, got {type(row).__name__}")
    for name in ("path", "caption"):
        if name not in row:
            raise ManifestError(f"{where}: missing field '{name}'")
        if not isinstance(row[name], str):
            raise ManifestError(f"{where}: field '{name}' must be a string, "
                                f"got {type(row[name]).__name__}")
    if not row["path"]:
        raise ManifestError(f"{where}: field 'path' is empty")
    kind = row.get("type") or guess_type(row["path"])
    if kind not in ("video", "image"):
        raise ManifestError(f"{where}: field 'type' must be 'video' or 'image' "
                            f"(got {row.get('type')!r} for {row['path']!r})")
    needed = ("width", "height") + (_VIDEO_ONLY if kind == "video" else ())
    for name in needed:
        if name not in row:
            raise ManifestError(f"{where}: missing field '{name}' (needed for a {kind})")
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ManifestError(f"{where}: field '{name}' must be a number, "
                                f"got {type(value).__name__} {value!r}")
        if _NUMERIC[name] is int and float(value) != int(value):
            raise ManifestError(f"{where}: field '{name}' must be an integer, got {value!r}")
        if not value > 0:
            raise ManifestError(f"{where}: field '{name}' must be > 0, got {value!r}")
    split = row.get("split", "train")
    if split not in ("train", "val"):
        raise ManifestError(f"{where}: field 'split' must be 'train' or 'val', got {split!r}")
    out = dict(row)
    out["type"], out["split"] = kind, split
    return out


def iter_jsonl(path: str):
    """(line number, "path:line", parsed row) for each non-blank line of a .jsonl file;
    a line that is not JSON raises ManifestError naming it."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
            yield lineno, where, row


def read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, validated row) for each non-blank line; slow, exact errors."""
    return [(lineno, validate_row(row, where)) for lineno, where, row in iter_jsonl(path)]


def write_rows(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass
class Manifest:
    """Columnar manifest. Row i of every column is line i (blank lines not counted)."""

    source: str
    root: str
    paths: list
    captions: list
    is_image: np.ndarray   # bool [N]
    width: np.ndarray      # int64 [N]
    height: np.ndarray     # int64 [N]
    fps: np.ndarray        # float64 [N] (0 for images)
    frames: np.ndarray     # int64 [N] (1 for images)
    duration: np.ndarray   # float64 [N] (0 for images)
    is_val: np.ndarray     # bool [N]
    codecs: list = None    # str per row ("" when not probed)
    vfr: np.ndarray = None  # bool [N]: variable frame rate (frames picked by timestamp)
    clip_start: np.ndarray = None  # float64 [N] seconds into the file (0: from the start)

    def __post_init__(self):
        if self.clip_start is None:
            self.clip_start = np.zeros(len(self.paths), np.float64)
        if self.codecs is None:
            self.codecs = [""] * len(self.paths)
        if self.vfr is None:
            self.vfr = np.zeros(len(self.paths), bool)

    def __len__(self) -> int:
        return len(self.paths)

    def resolve(self, i: int) -> str:
        p = self.paths[i]
        return p if os.path.isabs(p) else os.path.join(self.root, p)


def load_manifest(path: str, cache: bool | None = None) -> Manifest:
    """Reads a manifest.jsonl into numpy columns; ManifestError names a bad line.

    ``cache``: read/write the Parquet copy beside it (manifest_cache.py); None does so
    for manifests of at least manifest_cache.CACHE_MIN_BYTES.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    if cache is None:
        cache = os.path.getsize(path) >= manifest_cache.CACHE_MIN_BYTES
    if cache:
        version = manifest_cache.stamp(path)
        cols = manifest_cache.read_cache(path, version)
        if cols is not None:
            return Manifest(source=path, root=root, **cols)
    cols = _parse_jsonl(path)
    if cache:
        manifest_cache.write_cache(path, version, cols)
    return Manifest(source=path, root=root, **cols)


def _parse_jsonl(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if ln.strip()]
    try:
        cols = _fast_columns(lines)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        cols = None
    if cols is None:
        # Something is off: the row-by-row reader finds and names it (or returns clean
        # rows for what the fast path could not handle, e.g. types guessed from paths).
        rows = [r for _, r in read_rows(path)]
        cols = _columns_from_rows(rows)
    return cols


def _fast_columns(lines: list[str]) -> dict | None:
    rows = json.loads("[" + ",".join(lines) + "]")
    if not all(type(r) is dict for r in rows):
        return None
    paths = [r["path"] for r in rows]
    captions = [r["caption"] for r in rows]
    types = [r.get("type") for r in rows]
    splits = [r.get("split", "train") for r in rows]
    if not (all(type(p) is str and p for p in paths) and all(type(c) is str for c in captions)):
        return None
    kinds = np.asarray(types, dtype=object)
    is_image = kinds == "image"
    if not np.all(is_image | (kinds == "video")):
        return None
    splits_arr = np.asarray(splits, dtype=object)
    is_val = splits_arr == "val"
    if not np.all(is_val | (splits_arr == "train")):
        return None
    cols = {}
    for name in ("width", "height"):
        col = np.asarray([r[name] for r in rows])
        if col.dtype.kind not in "iu" or col.ndim != 1 or np.any(col <= 0):
            return None
        cols[name] = col.astype(np.int64)
    vid = [r for r, img in zip(rows, is_image) if not img]
    for name in _VIDEO_ONLY:
        col = np.asarray([r[name] for r in vid])
        kind_ok = "iu" if _NUMERIC[name] is int else "iuf"
        if col.size and (col.dtype.kind not in kind_ok or col.ndim != 1
                         or not np.all(col > 0)):
            return None
        full = np.zeros(len(rows), np.float64 if _NUMERIC[name] is float else np.int64)
        full[~is_image] = col
        cols[name] = full
    cols["frames"][is_image] = 1
    codecs = [r.get("codec") or "" for r in rows]
    if not all(type(c) is str for c in codecs):
        return None
    vfr = np.asarray([r.get("vfr", False) for r in rows])
    if vfr.dtype != bool:
        return None
    clip_start = np.asarray([r.get("clip_start", 0.0) for r in rows], np.float64)
    return dict(paths=paths, captions=captions, is_image=is_image, is_val=is_val,
                codecs=codecs, vfr=vfr, clip_start=clip_start, **cols)


def _columns_from_rows(rows: list[dict]) -> dict:
    is_image = np.array([r["type"] == "image" for r in rows], bool)
    get = lambda name, default, dt: np.array(  # noqa: E731
        [r.get(name, default) if r["type"] == "video" or name in ("width", "height")
         else default for r in rows], dt)
    frames = get("frames", 1, np.int64)
    return dict(
        paths=[r["path"] for r in rows], captions=[r["caption"] for r in rows],
        is_image=is_image, width=get("width", 0, np.int64), height=get("height", 0, np.int64),
        fps=get("fps", 0.0, np.float64), frames=frames,
        duration=get("duration", 0.0, np.float64),
        is_val=np.array([r["split"] == "val" for r in rows], bool),
        codecs=[str(r.get("codec") or "") for r in rows],
        vfr=np.array([bool(r.get("vfr", False)) for r in rows], bool),
        clip_start=np.array([float(r.get("clip_start", 0.0)) for r in rows], np.float64))

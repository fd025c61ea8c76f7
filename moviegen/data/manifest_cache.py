"""A columnar (Parquet) copy of a manifest.jsonl, kept beside it, so a large manifest is
read in a fraction of the time parsing its JSON takes (see benchmarks/dataloader.py:
parsing a 10^6-row JSONL is most of the time to the first batch).

The copy is ``.<manifest name>.parquet`` in the manifest's folder. It is used only while
its recorded stamp (the manifest's size, mtime in ns and a CRC of its first and last
64 KiB) matches the manifest; any edit of the manifest makes the next load parse the
JSONL again and rewrite the copy. Writing goes through a temporary file and a rename, so
ranks that load the same manifest at once never read half a file. A folder that cannot
be written, or a missing pyarrow, only means no cache: loading still works.
"""
from __future__ import annotations

import logging
import os
import zlib

import numpy as np

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"
# below this size parsing the JSONL takes milliseconds: no file is left beside it
CACHE_MIN_BYTES = 1 << 20
_STR = ("paths", "captions", "codecs")
_NUM = {"is_image": bool, "width": np.int64, "height": np.int64, "fps": np.float64,
        "frames": np.int64, "duration": np.float64, "is_val": bool, "vfr": bool,
        "clip_start": np.float64}


def cache_path(manifest: str) -> str:
    d, name = os.path.split(os.path.abspath(manifest))
    return os.path.join(d, f".{name}.parquet")


def stamp(manifest: str) -> str:
    """What identifies this version of the manifest (taken before it is read)."""
    st = os.stat(manifest)
    crc = 0
    with open(manifest, "rb") as f:
        crc = zlib.crc32(f.read(65536), crc)
        if st.st_size > 65536:
            f.seek(max(65536, st.st_size - 65536))
            crc = zlib.crc32(f.read(65536), crc)
    return f"v{CACHE_VERSION}:{st.st_size}:{st.st_mtime_ns}:{crc:08x}"


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        return None
    return pyarrow


def read_cache(manifest: str, expected_stamp: str) -> dict | None:
    """The manifest's columns from its cache, or None (no cache, stale, unreadable)."""
    pa = _pyarrow()
    path = cache_path(manifest)
    if pa is None or not os.path.isfile(path):
        return None
    try:
        pf = pa.parquet.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        if meta.get(b"moviegen_manifest_stamp", b"").decode() != expected_stamp:
            return None
        table = pf.read()
    except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt from the JSONL
        logger.warning("moviegen.data: ignoring unreadable manifest cache %s (%s: %s)",
                       path, type(e).__name__, e)
        return None
    cols = {n: table.column(n).to_pylist() for n in _STR}
    for n, dt in _NUM.items():
        cols[n] = table.column(n).to_numpy().astype(dt, copy=False)
    return cols


def write_cache(manifest: str, manifest_stamp: str, cols: dict) -> None:
    """Writes the cache; a folder that is not writable leaves no cache (logged)."""
    pa = _pyarrow()
    if pa is None:
        return
    path = cache_path(manifest)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        arrays = {n: pa.array(cols[n], pa.string()) for n in _STR}
        arrays.update({n: pa.array(np.asarray(cols[n], dt)) for n, dt in _NUM.items()})
        table = pa.table(arrays).replace_schema_metadata(
            {"moviegen_manifest_stamp": manifest_stamp})
        pa.parquet.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - no cache is never a reason to fail loading
        logger.info("moviegen.data: no manifest cache beside %s (%s: %s)", manifest,
                    type(e).__name__, e)
        try:
            os.remove(tmp)
        except OSError:
            pass

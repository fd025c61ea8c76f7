"""The Parquet copy of a manifest: same rows as the JSONL, rebuilt when the manifest
changes, ignored when damaged, absent where the folder is read-only."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from moviegen.data import manifest_cache  # noqa: E402
from moviegen.data.manifest import load_manifest, write_rows  # noqa: E402

_COLS = ("is_image", "width", "height", "fps", "frames", "duration", "is_val", "vfr",
         "clip_start")


def _rows(n, caption="a red circle"):
    rows = []
    for i in range(n):
        if i % 5 == 4:
            rows.append({"path": f"img_{i}.png", "caption": f"{caption} ü {i}", "width": 40,
                         "height": 30, "split": "val" if i % 10 == 9 else "train"})
        else:
            rows.append({"path": f"/abs/clip_{i}.mp4", "caption": f"{caption} {i}",
                         "type": "video", "width": 64 + i, "height": 48, "fps": 23.976,
                         "frames": 16 + i, "duration": (16 + i) / 23.976,
                         "codec": ["h264", "vp9", ""][i % 3], "vfr": i % 7 == 0,
                         "clip_start": 0.5 * (i % 3)})
    return rows


def _same(a, b):
    assert a.paths == b.paths and a.captions == b.captions and a.codecs == b.codecs
    assert a.root == b.root and a.source == b.source
    for name in _COLS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_cache_gives_identical_rows_and_is_used(tmp_path, monkeypatch):
    path = str(tmp_path / "manifest.jsonl")
    write_rows(path, _rows(50))
    plain = load_manifest(path, cache=False)
    assert not os.path.exists(manifest_cache.cache_path(path))
    first = load_manifest(path, cache=True)        # parses the JSONL, writes the copy
    assert os.path.isfile(manifest_cache.cache_path(path))
    _same(plain, first)

    def no_parse(p):
        raise AssertionError("JSONL parsed although the cache is fresh")
    monkeypatch.setattr("moviegen.data.manifest._parse_jsonl", no_parse)
    _same(plain, load_manifest(path, cache=True))   # from the copy only


@pytest.mark.parametrize("change", ["append", "same_size_edit"])
def test_cache_rebuilt_when_manifest_changes(tmp_path, change):
    path = str(tmp_path / "manifest.jsonl")
    write_rows(path, _rows(30))
    load_manifest(path, cache=True)
    st = os.stat(path)
    if change == "append":
        with open(path, "a") as f:
            f.write(json.dumps(_rows(31)[30]) + "\n")
    else:  # same length, and the old mtime put back: only the content CRC differs
        write_rows(path, _rows(30, caption="a red square"))
        assert os.path.getsize(path) == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    m = load_manifest(path, cache=True)
    _same(load_manifest(path, cache=False), m)
    assert len(m) == (31 if change == "append" else 30)
    # and the rewritten copy now serves the new version
    stamp = manifest_cache.stamp(path)
    assert manifest_cache.read_cache(path, stamp) is not None


def test_damaged_cache_is_ignored_and_replaced(tmp_path, caplog):
    path = str(tmp_path / "manifest.jsonl")
    write_rows(path, _rows(20))
    load_manifest(path, cache=True)
    with open(manifest_cache.cache_path(path), "wb") as f:
        f.write(b"PAR1 not really")
    _same(load_manifest(path, cache=False), load_manifest(path, cache=True))
    assert "unreadable manifest cache" in caplog.text
    assert manifest_cache.read_cache(path, manifest_cache.stamp(path)) is not None


def test_unwritable_cache_path_loads_without_cache(tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO)
    path = str(tmp_path / "manifest.jsonl")
    write_rows(path, _rows(10))
    os.mkdir(manifest_cache.cache_path(path))  # the rename onto it fails (even as root)
    assert len(load_manifest(path, cache=True)) == 10
    assert "no manifest cache beside" in caplog.text
    assert sorted(os.listdir(tmp_path)) == [".manifest.jsonl.parquet", "manifest.jsonl"]


def test_small_manifests_leave_no_file_by_default(tmp_path, monkeypatch):
    path = str(tmp_path / "manifest.jsonl")
    write_rows(path, _rows(10))
    load_manifest(path)
    assert os.listdir(tmp_path) == ["manifest.jsonl"]
    monkeypatch.setattr(manifest_cache, "CACHE_MIN_BYTES", 1)
    load_manifest(path)
    assert os.path.isfile(manifest_cache.cache_path(path))

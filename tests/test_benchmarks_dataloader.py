"""The data benchmark end to end in its smoke size: real encodes, the real loader, the
CPU-decoder comparison, the Parquet first-batch path, JSON and markdown written."""
import json
import subprocess
import sys

import pytest

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

pytest.importorskip("pyarrow")


@pytest.mark.timeout(600)
def test_dataloader_benchmark_quick_writes_json_and_table(tmp_path):
    out = tmp_path / "d.json"
    r = subprocess.run([sys.executable, "benchmarks/dataloader.py", "--quick", "--codecs",
                        "h264", "vp9", "--output", str(out)],
                       capture_output=True, text=True, timeout=550)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = {(row["codec"], row["size"], row["workers"]): row for row in res["throughput"]}
    assert set(rows) == {("h264", 256, 1), ("vp9", 256, 1)}
    for row in rows.values():
        assert row["cpu"]["clips_per_s"] > 0 and row["cpu"]["batch_shape"][2:] == [32, 192, 336]
    # DALI's CPU decoder has no H.264: never measured on those rows
    assert "dali" not in rows[("h264", 256, 1)]
    assert res["machine"]["cores_usable"] >= 1 and len(res["machine"]["load_avg_1min_before_after"]) == 2
    dec = res["cpu_decoders"]
    assert set(dec["per_set"]) == {"h264_256", "vp9_256"}
    assert dec["torchcodec"]["available"] or dec["torchcodec"]["error"]
    for per in dec["per_set"].values():  # the colour-conversion control beside PyAV
        assert per["pyav_default_rgb"]["s_per_clip"] > 0 and per["pyav"]["s_per_clip"] > 0
    fb = res["first_batch"]
    assert fb["rows"] == 20_000 and fb["jsonl"]["first_batch_shape"] == fb["parquet"]["first_batch_shape"]
    md = (tmp_path / "d.md").read_text()
    assert "| h264 | 448x256 | 32x192x336 | 1 |" in md and "DALI CPU has no H.264" in md
    assert "Parquet copy" in md and "usable cores" in md and "swscale default RGB" in md

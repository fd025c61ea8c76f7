import json
import pytest
import subprocess
import sys

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow


def test_throughput_benchmark_runs_and_reports(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/throughput.py", "--iters", "1", "--warmup", "1",
                        "--ac", "none,full", "--output", str(tmp_path / "t.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [row["ac"] for row in rows] == ["none", "full"]
    for row in rows:
        assert "error" not in row and row["tokens_per_s"] > 0 and row["mfu"] is None
    assert "| tiny | 2 | 96 |" in (tmp_path / "t.md").read_text()

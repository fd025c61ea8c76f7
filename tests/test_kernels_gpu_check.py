"""``bash benchmarks/gpu_check.sh OUT --dry_run``: the GPU check's steps at toy sizes on CPU
(correctness under the Triton interpreter, the training-step benchmark) write their files."""
import json
import os
import shutil
import subprocess

import pytest

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

pytest.importorskip("triton", reason="triton is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(240)
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_passes_and_writes_each_part(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), str(tmp_path),
                           "--dry_run"], capture_output=True, text=True, timeout=230,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "check rc=0" in summary and "throughput rc=0" in summary
    check = json.loads((tmp_path / "check" / "check.json").read_text())
    assert check["failures"] == 0 and any("+LSE" in line for line in check["lines"])
    rows = json.loads((tmp_path / "throughput" / "throughput.json").read_text())["rows"]
    assert {r["ac"] for r in rows} == {"none", "selective", "full"}
    assert all("error" not in r for r in rows)
    assert (tmp_path / "check" / "check.md").exists()

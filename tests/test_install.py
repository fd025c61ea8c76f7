"""The installed environment: our code answers only to ``moviegen``. Hugging Face's
``kernels`` distribution (which transformers 5 requires) owns the top-level name
``kernels``; from the repository root and from any other folder, ``import kernels`` must
never reach this checkout, and transformers must import."""
import importlib.metadata
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = (
    "import importlib.util, json, os\n"
    "spec = importlib.util.find_spec('kernels')\n"
    "origin = spec.origin if spec else None\n"
    "import transformers, moviegen.kernels\n"
    "print(json.dumps({'kernels': origin, 'ours': moviegen.kernels.__file__}))\n"
)


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_import_kernels_never_reaches_this_checkout(cwd, tmp_path):
    import json
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = ROOT if cwd == "root" else str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert os.path.realpath(found["ours"]).startswith(os.path.join(ROOT, "moviegen", "kernels"))
    if found["kernels"] is not None:  # Hugging Face's kernels is installed (transformers 5)
        origin = os.path.realpath(found["kernels"])
        assert not origin.startswith(os.path.join(ROOT, "moviegen") + os.sep), found
        assert not origin.startswith(os.path.join(ROOT, "kernels") + os.sep), found
        dist = importlib.metadata.distribution("kernels")
        installed = {os.path.realpath(dist.locate_file(f)) for f in dist.files or []}
        assert origin in installed, f"{origin} is not a file of the 'kernels' distribution"


@pytest.mark.slow
def test_the_distribution_installs_only_the_moviegen_namespace(tmp_path):
    """A wheel built from this checkout holds nothing at the top level but moviegen (and
    its metadata), so a non-editable install cannot write into another package's folder."""
    import zipfile
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = list(tmp_path.glob("moviegen-*.whl"))
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"moviegen"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "moviegen/kernels/choices.json" in names
    assert any(n.startswith("moviegen/parallel/") for n in names)

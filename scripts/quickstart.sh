#!/usr/bin/env bash
# Set up this checkout on a fresh machine, then run the demo or the tests.
#   bash scripts/quickstart.sh demo    # set-up + the embedded default (tiny CPU demo)
#   bash scripts/quickstart.sh test    # set-up + the whole test suite (what CI runs)
# Extra arguments are passed on (to the demo, or to pytest).
#
# torch: installed as torch==2.13.0 only when no torch is importable. An existing torch
# (a cluster container's CUDA build) is left alone, and an unpinned torch is never
# requested: on a CPU machine that would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
what="${1:-}"
shift || true
case "$what" in demo|test) ;; *) echo "usage: bash scripts/quickstart.sh demo|test [args...]" >&2; exit 2;; esac

pip_install() { "$PY" -m pip install --disable-pip-version-check --no-input --quiet "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] no torch found: installing torch==2.13.0"
  pip_install "torch==2.13.0"
fi
echo "[setup] installing moviegen with the data and dev extras"
pip_install -e ".[data,dev]"
"$PY" - <<'PYEOF'
import torch
print(f"[setup] torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
PYEOF

if [ "$what" = test ] && [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # CI only: a real single-node SLURM for tests/test_launch_slurm.py (skipped without it)
  echo "[setup] CI: installing Debian's slurm-wlm for the SLURM launch test"
  bash scripts/install_slurm.sh || echo "[setup] SLURM install failed: its test will be skipped"
fi

# Threads, unless OMP_NUM_THREADS is set: the tests run many processes, one thread each;
# the demo is one process and uses every core (on 2 cores its TAE steps take about half
# the time of one thread). Beside other work, more threads than free cores slow torch down
# many times over: then run it with OMP_NUM_THREADS=1.
if [ "$what" = demo ]; then
  threads="$(nproc 2>/dev/null || echo 1)"
else
  threads=1
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
if [ "$what" = demo ]; then
  echo "[setup] OMP_NUM_THREADS=$OMP_NUM_THREADS"
  exec "$PY" -m moviegen.demo "$@"
else
  exec "$PY" -m pytest -q "$@"
fi

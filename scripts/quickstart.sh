#!/usr/bin/env bash
# Set up this checkout in a virtual environment of its own, then run the demo or the tests.
#   bash scripts/quickstart.sh demo             # set-up + the embedded default (tiny CPU demo)
#   bash scripts/quickstart.sh test             # set-up + the whole test suite (what CI runs)
#   bash scripts/quickstart.sh test -m "not slow"   # the fast inner loop (extra args go to pytest)
#   bash scripts/quickstart.sh test --latest    # the newest versions setup.py allows, in .venv-latest
# Extra arguments are passed on (to the demo, or to pytest).
#
# Where things go: a virtual environment in the checkout (.venv, or .venv-latest with --latest;
# MOVIEGEN_VENV=DIR to choose), made from $PYTHON (default python3) and reused while the lock
# and setup.py are unchanged. The machine's Python is never modified. MOVIEGEN_ISOLATED=1
# (what CI sets) ignores the base interpreter's packages, its torch included.
# What is installed: requirements/lock-cpu-py311.txt, exactly (bash scripts/lock.sh writes it),
# then this checkout in editable mode; with --latest, the newest versions setup.py allows.
# torch: when $PYTHON already has a torch (a cluster container's CUDA build), the environment
# sees it (--system-site-packages) and no torch is installed or replaced. Otherwise torch
# 2.13.0's CPU build is installed (from pip's configured sources, else PyTorch's CPU index);
# an unpinned torch is never requested: on a CPU machine that pulls several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BASE_PY="${PYTHON:-python3}"
LOCK=requirements/lock-cpu-py311.txt
TORCH_CPU="torch==2.13.0+cpu"

what="${1:-}"
shift || true
case "$what" in demo|test) ;; *)
  echo "usage: bash scripts/quickstart.sh demo|test [--latest] [args...]" >&2; exit 2;; esac
latest=0
args=()
for a in "$@"; do
  if [ "$a" = --latest ]; then latest=1; else args+=("$a"); fi
done
[ "${MOVIEGEN_LATEST:-0}" = 1 ] && latest=1
if [ "$latest" = 1 ]; then VENV="${MOVIEGEN_VENV:-.venv-latest}"; else VENV="${MOVIEGEN_VENV:-.venv}"; fi

if ! command -v "$BASE_PY" >/dev/null 2>&1; then
  echo "[setup] PYTHON=$BASE_PY: no such interpreter" >&2; exit 2
fi
base_has_torch=0
# MOVIEGEN_ISOLATED=1 (CI): never see the base interpreter's packages, torch included
if [ "${MOVIEGEN_ISOLATED:-0}" != 1 ]; then
  "$BASE_PY" -c "import torch" >/dev/null 2>&1 && base_has_torch=1
fi

# The stamp says what the environment was built from; a change rebuilds the installs.
stamp_of() {
  { echo "latest=$latest base_torch=$base_has_torch base=$("$BASE_PY" -c 'import sys; print(sys.prefix, sys.version)')"
    cat setup.py "$LOCK"; } | sha256sum | cut -d' ' -f1
}
want="$(stamp_of)"
if [ "$latest" = 1 ]; then want="$want-$(date +%Y-%m-%d)"; fi  # --latest: re-resolve daily

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$base_has_torch" = 1 ]; then
    echo "[setup] creating $VENV from $BASE_PY (its torch is kept: --system-site-packages)"
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    echo "[setup] creating $VENV from $BASE_PY"
    "$BASE_PY" -m venv "$VENV"
  fi
fi
PY="$ROOT/$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check --no-input --quiet "$@"; }

if [ "$(cat "$VENV/.moviegen-stamp" 2>/dev/null || true)" != "$want" ]; then
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing $TORCH_CPU into $VENV"
    pip_install "$TORCH_CPU" || {
      echo "[setup] not found in pip's configured sources: trying PyTorch's CPU index"
      pip_install "$TORCH_CPU" --extra-index-url https://download.pytorch.org/whl/cpu; }
  fi
  if [ "$latest" = 1 ]; then
    echo "[setup] installing the newest versions setup.py allows into $VENV"
    pip_install --upgrade --upgrade-strategy eager -e ".[data,float8,dev]"
  else
    echo "[setup] installing $LOCK into $VENV"
    # torch comes from the step above (or the base interpreter); everything else exactly
    # as locked, without resolving anything again
    grep -v -E '^torch==' "$LOCK" > "$VENV/lock-without-torch.txt"
    pip_install --no-deps -r "$VENV/lock-without-torch.txt"
    pip_install --no-deps --no-build-isolation -e .
  fi
  "$PY" -m pip check --disable-pip-version-check >/dev/null || {
    echo "[setup] warning: pip check reports conflicts:" >&2
    "$PY" -m pip check --disable-pip-version-check >&2 || true; }
  echo "$want" > "$VENV/.moviegen-stamp"
fi
"$PY" - <<'PYEOF'
import importlib.metadata as md
import torch
tf = md.version("transformers")
print(f"[setup] torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"transformers {tf}")
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
export PATH="$ROOT/$VENV/bin:$PATH"  # torchrun, sbatch scripts and subprocesses use this env
if [ "$what" = demo ]; then
  echo "[setup] OMP_NUM_THREADS=$OMP_NUM_THREADS"
  exec "$PY" -m moviegen.demo "${args[@]+"${args[@]}"}"
else
  exec "$PY" -m pytest -q "${args[@]+"${args[@]}"}"
fi

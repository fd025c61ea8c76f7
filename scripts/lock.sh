#!/usr/bin/env bash
# Write requirements/lock-cpu-py311.txt: the exact versions (direct and transitive) that
# `bash scripts/quickstart.sh demo|test` installs on a CPU machine with Python 3.11.
#
#   bash scripts/lock.sh            # resolve the newest versions setup.py allows, write the lock
#   bash scripts/lock.sh --check    # resolve again and fail if the lock would change
#
# The resolver is uv (`uv pip compile`), installed into .venv-tools/ of this checkout (never
# the machine's Python). Input: setup.py with the data, float8 and dev extras, plus torch
# 2.13.0's CPU build, so that torch's own dependencies are locked too. The CPU wheel comes
# from TORCH_CPU_WHEELS: a folder or page of wheels (--find-links; default /opt/wheels where
# it exists) or else PyTorch's CPU index (https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=requirements/lock-cpu-py311.txt
PY="${PYTHON:-python3}"
if [ ! -x .venv-tools/bin/uv ]; then
  "$PY" -m venv .venv-tools
  .venv-tools/bin/python -m pip install --disable-pip-version-check --quiet "uv>=0.9"
fi
torch_src=()
if [ -n "${TORCH_CPU_WHEELS:-}" ]; then
  torch_src=(--find-links "$TORCH_CPU_WHEELS")
elif [ -d /opt/wheels ]; then
  torch_src=(--find-links /opt/wheels)
else
  torch_src=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
target="$OUT"
if [ "${1:-}" = --check ]; then target="$(mktemp)"; fi
# uv reads pip's find-links only from its own flags; PyPI is the index.
.venv-tools/bin/uv pip compile setup.py requirements/torch-cpu.in \
  --extra data --extra float8 --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --index-url https://pypi.org/simple "${torch_src[@]}" \
  --no-emit-find-links --no-emit-index-url \
  --custom-compile-command "bash scripts/lock.sh" \
  --output-file "$target" --quiet
if [ "${1:-}" = --check ]; then
  if ! diff -u <(grep -v '^#' "$OUT") <(grep -v '^#' "$target"); then
    echo "lock: $OUT is out of date with setup.py or today's releases: run bash scripts/lock.sh" >&2
    exit 1
  fi
  echo "lock: $OUT is current"
else
  echo "lock: wrote $OUT ($(grep -c '==' "$OUT") packages)"
fi

#!/usr/bin/env bash
# Installs a single-node SLURM (Debian's slurm-wlm: slurmctld, slurmd, sbatch, ...) so that
# tests/test_launch_slurm.py can run launch/slurm/train.sbatch for real. Needs root and
# apt (Debian/Ubuntu). About 30 s here. The test writes its own slurm.conf in a temporary
# directory (auth/none, no munge daemon, no cgroups) and stops its daemons afterwards.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
    echo "SLURM already installed: $(slurmctld -V)"
    exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm
slurmctld -V

#!/usr/bin/env bash
# Train on one node with torchrun.
#
#   launch/torchrun.sh CONFIG [--section.key=value ...]
#   NPROC=8 launch/torchrun.sh my_stage1.yaml --parallel.tp=2   # a copy of
#       launch/configs/stage1_t2i_256.yaml with its data and text encoder folders filled in
#   NPROC=2 launch/torchrun.sh launch/configs/tiny.yaml --train.steps=20   # CPU, gloo
#
# Environment:
#   NPROC         processes (default: the visible GPUs, else 1)
#   MAX_RESTARTS  torchrun restarts after a worker dies (default 3); each restart resumes
#                 from <output_dir>/checkpoints/latest
#   MASTER_PORT   rendezvous port (default: a free one, --standalone)
#
# SIGTERM/SIGUSR1 sent to torchrun are forwarded to every worker, which finishes its
# step, saves a checkpoint and exits 0; running the same command again resumes.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
CONFIG=$1
shift

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ -z "${NPROC:-}" ]]; then
    NPROC=$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
# One intra-op thread per rank unless asked otherwise (torchrun does the same for nproc > 1).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# torch 2.13's torchrun reuses one TCPStore across restarts with no per-attempt prefix:
# restarted workers can read a dead peer's address and fail to connect (gloo
# "connectFullMesh ... Connection refused"). Opting out gives every attempt its own store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}

RDZV=(--standalone)
if [[ -n "${MASTER_PORT:-}" ]]; then
    RDZV=(--rdzv-backend=c10d --rdzv-endpoint="127.0.0.1:${MASTER_PORT}" --nnodes=1)
fi

exec torchrun "${RDZV[@]}" \
    --nproc-per-node="$NPROC" \
    --max-restarts="${MAX_RESTARTS:-3}" \
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    -m moviegen.train --config "$CONFIG" "$@"

#!/usr/bin/env bash
# One GPU check, one call (about 8 minutes on one H100/H200):
#
#   bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine
#   bash benchmarks/gpu_check.sh OUT_DIR --dry_run   # CPU, toy sizes, Triton interpreter
#
# Parts, each writing its JSON + markdown under OUT_DIR as soon as it finishes (a timeout
# loses one part, not all); OUT_DIR/summary.txt lists each part's exit code and seconds:
#   1 check       bf16/fp16 outputs, LSE and every gradient of every kernel vs float64
#   2 kernels     memory-bound kernels vs the copy bandwidth of the same run; attention
#                 fwd/bwd TFLOP/s at 8k and 73,728 tokens vs every SDPA backend
#   3 throughput  the 30B-width 2-block training step at 73,728 tokens, AC none/selective/full
# The dry run executes parts 1 and 3 at toy sizes on CPU; part 2 needs CUDA timers and is
# only started on a GPU.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry_run]}
DRY=0
[[ "${2:-}" == "--dry_run" ]] && DRY=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
cd "$ROOT"
: > "$OUT/summary.txt"

part() {  # part NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
  return 0
}

if [[ $DRY == 1 ]]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=1
  part check 120 python benchmarks/kernel_bench.py --check --dry_run --out_dir "$OUT/check"
  part throughput 120 python benchmarks/throughput.py --model tiny --seq_len 32 --batch 2 \
    --ac none,selective,full --kernels torch --warmup 1 --iters 1 --output "$OUT/throughput/throughput.json"
else
  unset TRITON_INTERPRET
  part check 120 python benchmarks/kernel_bench.py --check --out_dir "$OUT/check"
  part kernels 240 python benchmarks/kernel_bench.py --seqs 8192,73728 --attn_tokens 73728 \
    --no_compile --out_dir "$OUT/kernels"
  part throughput 240 python benchmarks/throughput.py --model 30b --n_layers 2 --seq_len 73728 \
    --ac none,selective,full --kernels torch,auto --warmup 1 --iters 3 --output "$OUT/throughput/throughput.json"
fi
! grep -v "rc=0 " "$OUT/summary.txt"

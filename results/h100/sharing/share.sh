#!/bin/bash
# Does sharing one GPU among sweep workers raise throughput? 3 runs of one model (3 learning rates),
# 1000 iterations each, with each count of workers on the GPU in turn, from empty compile caches:
#   bash results/h100/sharing/share.sh DIR [MODEL [SHARES]]       (default: sparse, "3 1")
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${1:-/tmp/share}
model=${2:-sparse}
shares=${3:-3 1}
mkdir -p "$out"
args="--stage=sweep --models_to_test=$model --learning_rates=1e-3,2e-3,3e-3 --seeds=1337 --max_iters=1000
  --lr_decay_iters=1000 --eval_interval=500 --eval_iters=50 --wandb_log=False"
timed() { local name=$1; shift; local t=$EPOCHREALTIME; "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$out/walls.txt"; }
for share in $shares; do  # each from empty compile caches
  TORCHINDUCTOR_CACHE_DIR=/tmp/cache_$share TRITON_CACHE_DIR=/tmp/cache_$share/triton \
    timed "runs_per_gpu_$share" python train_runner.py $args --runs_per_gpu=$share --sweep_dir="$out/share_$share"
done

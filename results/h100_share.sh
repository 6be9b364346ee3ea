#!/bin/bash
# Does sharing one GPU among sweep workers raise throughput? 3 runs of the sparse baby GPT (a launch-bound
# model: a graph break per layer), 1000 iterations each, with 3 workers on the GPU and then with 1:
#   bash results/h100_share.sh DIR
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${1:-/tmp/share}
mkdir -p "$out"
args="--stage=sweep --models_to_test=sparse --learning_rates=1e-3,2e-3,3e-3 --seeds=1337 --max_iters=1000
  --lr_decay_iters=1000 --eval_interval=500 --eval_iters=50 --wandb_log=False"
timed() { local name=$1; shift; local t=$EPOCHREALTIME; "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$out/walls.txt"; }
for share in 3 1; do  # each from empty compile caches
  TORCHINDUCTOR_CACHE_DIR=/tmp/cache_$share TRITON_CACHE_DIR=/tmp/cache_$share/triton \
    timed "runs_per_gpu_$share" python train_runner.py $args --runs_per_gpu=$share --sweep_dir="$out/share_$share"
done

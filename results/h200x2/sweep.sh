#!/bin/bash
# The sweep on one GPU and on two, from cold compile caches: 2 models x 2 learning rates, 1500 iterations each.
#   bash results/h200x2/sweep.sh DIR [one_gpu two_gpus]      (the names pick steps, both by default)
# SWEEP_ARGS replaces the sweep's arguments, e.g. a heavier sweep whose training outweighs compilation:
#   SWEEP_ARGS="--stage=sweep --models_to_test=vanilla,rope,sparse,linear --learning_rates=1e-3,2e-3 --seeds=1337 \
#     --wandb_log=False" bash results/h200x2/sweep.sh /tmp/sweep8 one_gpu     # then two_gpus, in a second call
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
out=${1:-/tmp/sweep}
shift
steps=${*:-one_gpu two_gpus}
mkdir -p "$out"
args=${SWEEP_ARGS:-"--stage=sweep --models_to_test=vanilla,rope --learning_rates=1e-3,2e-3 --seeds=1337 --max_iters=1500 --lr_decay_iters=1500 --wandb_log=False"}
timed() { local name=$1; shift; local t=$EPOCHREALTIME; "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$out/walls.txt"; }
for step in $steps; do  # each from empty compile caches
  if [ "$step" = one_gpu ]; then export CUDA_VISIBLE_DEVICES=0; else unset CUDA_VISIBLE_DEVICES; fi
  TORCHINDUCTOR_CACHE_DIR=/tmp/cache_$step TRITON_CACHE_DIR=/tmp/cache_$step/triton \
    timed "sweep_$step" python train_runner.py $args --sweep_dir="$out/sweep_$step"
done

#!/bin/bash
# DDP on the 2 H200s of one host against one of them, at the same global batch (2 x 64 sequences of 256),
# then each family for 100 iterations under DDP, uncompiled, to show that each one trains there:
#   bash results/h200x2/ddp.sh DIR [one_gpu two_gpus linear sparse delta gated_delta delta_product nsa]
# (logs and each run's files go to DIR; the names pick steps, all of them by default)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
out=${1:-/tmp/ddp}
shift
steps=${*:-one_gpu two_gpus linear sparse delta gated_delta delta_product nsa}
mkdir -p "$out"
args="--gradient_accumulation_steps=2 --wandb_log=False"
two="torchrun --standalone --nproc_per_node=2 train_runner.py"
timed() { local name=$1; shift; local t=$EPOCHREALTIME; "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$out/walls.txt"; }
for step in $steps; do
  case $step in
    one_gpu) timed one_gpu timeout 220 python train_runner.py config/train_shakespeare_char.py $args --out_dir="$out/one_gpu" ;;
    two_gpus) timed two_gpus timeout 220 $two config/train_shakespeare_char.py $args --out_dir="$out/two_gpus" ;;
    *) # flash-linear-attention's kernels autotune on their first calls: minutes before the first step
      timed "family_$step" timeout 240 $two "config/train_shakespeare_char_$step.py" $args --compile=False \
        --max_iters=100 --eval_interval=50 --eval_iters=20 --log_interval=25 --out_dir="$out/family_$step" ;;
  esac
done

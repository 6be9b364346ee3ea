#!/bin/bash
# DDP on the 2 H200s of one host against one of them, at the same global batch (2 x 64 sequences of 256):
#   bash results/h200x2/ddp.sh DIR        (logs and each run's files go to DIR)
# then every family for 100 iterations under DDP, uncompiled, to show each one trains there.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
out=${1:-/tmp/ddp}
mkdir -p "$out"
args="--gradient_accumulation_steps=2 --wandb_log=False"
two="torchrun --standalone --nproc_per_node=2 train_runner.py"
timed() { local name=$1; shift; local t=$EPOCHREALTIME; "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$out/walls.txt"; }
timed one_gpu timeout 220 python train_runner.py config/train_shakespeare_char.py $args --out_dir="$out/one_gpu"
timed two_gpus timeout 220 $two config/train_shakespeare_char.py $args --out_dir="$out/two_gpus"
for f in linear sparse delta gated_delta delta_product nsa; do
  timed "family_$f" timeout 90 $two "config/train_shakespeare_char_$f.py" $args --compile=False --max_iters=100 \
    --eval_interval=50 --eval_iters=20 --log_interval=25 --out_dir="$out/family_$f"
done

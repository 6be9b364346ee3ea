#!/bin/bash
# What this session changed that only a GPU can check, in one device call (about 8 minutes):
#   bash results/h100/checks.sh DIR
# 1. the GPU tests of NSA (its Triton path and compiled selection)
# 2. NSA at paper sizes, one layer fwd+bwd, T = 256 ... 65,536: flex+triton beside flex (the issue's
#    target: faster than causal SDPA's 26.7 ms at 65,536); T=256 ... 16,384 and linear ran in the first run
# 3. DeltaNet and Gated DeltaProduct on the PyTorch form under CUDA graphs, 300 iterations alone
# Each step has its own time limit and log in DIR; a step that fails does not stop the others.
set -uo pipefail
dir=${1:-/tmp/checks}
mkdir -p "$dir"
source "$(dirname "$0")/step.sh"
# limits from the first run (3225576): FlexAttention's and the CUDA-graphed models' compiles take over a minute
step gpu_tests 220 python -m pytest -v -m gpu --durations=0 tests/test_nsa.py
nsa="--stage=bench_layer --models=nsa --n_head=16 --n_kv_head=1 --head_size=44 --select_count=16 --window=512
     --cmp_block=64 --cmp_stride=64 --select_block=64 --use_fla=False --trials=5"
step nsa_triton 90 python train_runner.py $nsa --use_triton=True --seq_lens=65536 --out_dir="$dir/nsa_triton"
for cfg in delta delta_product; do
  step "speed_$cfg" 100 python train_runner.py "config/train_shakespeare_char_$cfg.py" --use_fla=False \
    --compile_mode=reduce-overhead --max_iters=300 --eval_iters=5 --eval_interval=300 --wandb_log=False \
    --out_dir="$dir/speed_$cfg"
done

#!/bin/bash
# The delta layer since 4639b3c (one fused input projection; convolutions and output norm recomputed in
# the backward: 433 MiB less kept at 65,536 tokens, counted on a CPU in results/cpu/delta_kept) and FLA's
# DeltaNet kernels as a PyTorch operator (no graph break), on the GPU, in one device call of under 9 minutes:
#   bash results/h100/delta/kept.sh DIR
# 1. the GPU tests of the delta family (the operator against torch's opcheck, compiled = eager, also
#    under CUDA graphs; FLA = the PyTorch form)
# 2. ours eager and compiled beside FLA's own layer at 16,384 and 65,536 (before: 1,420 against 1,274 MiB
#    and 12.5 against 12.4 ms at 65,536, results/h100/delta/conv_ab)
# 3. the whole model's training step at 65,536 (before: delta 11,142 MiB, delta_product 31,633 MiB;
#    results/h100/bakeoff/bench_memory.md)
# 4. the baby DeltaNet on FLA, 300 iterations alone, compiled (before: 46.5 ms/iter; 53.5 in conv_ab), and
#    under CUDA graphs, which the operator makes possible (the issue's target: 40). At 5656c55 its config
#    had short convolutions, dropout 0.2 and weight decay 0.1; since b20bf9d it is the tuned recipe.
set -uo pipefail
dir=${1:-/tmp/delta_kept}
mkdir -p "$dir"
source "$(dirname "$0")/../step.sh"
step gpu_tests 130 python -m pytest -v -m gpu --durations=0 tests/test_delta.py
step layer_vs_fla 120 python results/h100/delta/layer_vs_fla.py "$dir/layer_vs_fla" 16384,65536
step memory 50 python train_runner.py --stage=bench_memory --models=delta,delta_product --seq_lens=65536 --trials=3 \
  --out_dir="$dir/memory"
speed="--max_iters=300 --eval_iters=5 --eval_interval=300 --log_interval=25 --wandb_log=False"
step train_speed 110 python train_runner.py config/train_shakespeare_char_delta.py --compile_mode=default $speed \
  --out_dir="$dir/train_speed"
step train_speed_graphs 120 python train_runner.py config/train_shakespeare_char_delta.py --compile_mode=reduce-overhead \
  $speed --out_dir="$dir/train_speed_graphs"

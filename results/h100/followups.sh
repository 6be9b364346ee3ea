#!/bin/bash
# The GPU checks left open, in one device call of about 9.5 minutes:
#   bash results/h100/followups.sh DIR
# 1. NSA flex+triton at T=65,536 under variants of model_nsa's constants (results/h100/nsa/variants.py):
#    its profile (2026-11-23) spent 19.6 of 47 ms of GPU time in FlexAttention's backward, whose dK/dV
#    runs one program per key tile and K/V head: 8 programs for the compressed keys of one K/V head
# 2. the NSA GPU tests of the paths those constants touch
# 3. Gated DeltaNet's tuned recipe timed alone under CUDA graphs (compile_mode=reduce-overhead), 300
#    iterations, in what is left of the call (its compile took over 150 s on a fresh machine)
set -uo pipefail
dir=${1:-/tmp/followups}
mkdir -p "$dir"
source "$(dirname "$0")/step.sh"
start=$SECONDS
for v in "base 0 0 1024" "repeat_cmp 1 0 1024" "repeat_both 1 1 1024" "repeat_cmp_rows4096 1 0 4096"; do
  set -- $v
  step "nsa_$1" 75 python results/h100/nsa/variants.py "$dir/nsa" $v --seq_lens=65536
done
step nsa_tests 120 python -m pytest -v -m gpu tests/test_nsa.py -k "fast_path_equals or triton_path_is_causal"
step speed_gated_delta_graphs $((565 - (SECONDS - start))) python train_runner.py config/train_shakespeare_char_gated_delta.py \
  --compile_mode=reduce-overhead --max_iters=300 --eval_iters=5 --eval_interval=300 --log_interval=25 --wandb_log=False \
  --out_dir="$dir/speed_gated_delta_graphs"

#!/bin/bash
# The GPU checks that this session's calls left unfinished (results/h100/checks.sh ran out of each step's
# time), in one device call of about 9 minutes:
#   bash results/h100/followups.sh DIR
# 1. NSA flex+triton at T=65,536, profiled: where its 62.2 ms go (profile_nsa_65536.txt)
# 2. the NSA GPU tests checks.sh's limit cut off: FLA's kernels and graph decoding
# 3. Gated DeltaNet's tuned recipe (no short convolutions) and DeltaNet timed alone, 300 iterations
#    each; a fresh machine compiles the PyTorch form's step for about 90 s
set -uo pipefail
dir=${1:-/tmp/followups}
mkdir -p "$dir"
source "$(dirname "$0")/step.sh"
step nsa_profile 90 python train_runner.py --stage=bench_layer --models=nsa --n_head=16 --n_kv_head=1 --head_size=44 \
  --select_count=16 --window=512 --cmp_block=64 --cmp_stride=64 --select_block=64 --use_fla=False --use_triton=True \
  --seq_lens=65536 --trials=5 --profile=True --out_dir="$dir/nsa_profile"
step nsa_tests 150 python -m pytest -v -m gpu tests/test_nsa.py -k "fla_kernels or graph_decoding"
speed="--max_iters=300 --eval_iters=5 --eval_interval=300 --wandb_log=False"
step speed_gated_delta 150 python train_runner.py config/train_shakespeare_char_gated_delta.py $speed --out_dir="$dir/speed_gated_delta"
step speed_delta 130 python train_runner.py config/train_shakespeare_char_delta.py $speed --out_dir="$dir/speed_delta"

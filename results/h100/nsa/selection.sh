#!/bin/bash
# NSA's selection in Triton (selection_triton, written 2026-11-23 without a GPU), in one device call of
# about 6 minutes:
#   bash results/h100/nsa/selection.sh DIR
# 1. the Triton path's GPU tests: the selection against selection_for_flex at paper sizes, the selected
#    branch, the flex+triton layer against the reference, causality
# 2. one layer forward + backward at paper sizes on flex+triton, T = 16,384 and 65,536 (before: 8.43 and
#    30.34 ms; issue 6's target is causal SDPA's 26.65 ms at 65,536), then profiled at 65,536
# 3. the same at 65,536 with the dK/dV kernel's steps of 64 rows instead of SLC_ROWS = 128: compiled for
#    sm_90 on a CPU, ptxas reports 404 bytes of register spills at 128 rows and none at 64
# Each step has its own time limit and log in DIR; a step that fails does not stop the others.
set -uo pipefail
dir=${1:-/tmp/nsa_selection}
mkdir -p "$dir"
source "$(dirname "$0")/../step.sh"
step gpu_tests 150 python -m pytest -v -m gpu --durations=0 -k triton tests/test_nsa.py
nsa="--stage=bench_layer --models=nsa --n_head=16 --n_kv_head=1 --head_size=44 --select_count=16 --window=512
     --cmp_block=64 --cmp_stride=64 --select_block=64 --use_fla=False --use_triton=True"
step bench 90 python train_runner.py $nsa --seq_lens=16384,65536 --trials=5 --out_dir="$dir/bench"
step profile 60 python train_runner.py $nsa --seq_lens=65536 --trials=3 --profile=True --out_dir="$dir/profile"
step rows64 60 python -c "import runpy, sys, model_nsa; model_nsa.SLC_ROWS = 64; sys.argv = ['train_runner.py', *sys.argv[1:]]
runpy.run_path('train_runner.py', run_name='__main__')" $nsa --seq_lens=65536 --trials=5 --out_dir="$dir/rows64"

#!/bin/bash
# What the last session changed that only a GPU can check, in one device call (about 9.5 minutes):
#   bash results/h100/delta/checks.sh DIR
# 1. the delta family's GPU tests: FLA's causal_conv1d against our ShortConv + SiLU, and the whole FLA path
#    (whose q/k/v convolutions now run in that kernel) against the PyTorch form
# 2. DeltaNet's baby config on FLA under torch.compile, 200 iterations: the convolution inside a compiled graph
# 3. DeltaNet's layer against FLA's own at T = 16,384 and 65,536 (results/h100/delta: 14.3 ms against 11.6 at
#    65,536 before, the convolutions and casts the difference); FLA's autotuning on a fresh machine takes minutes
# Each step has its own time limit and log in DIR; a step that fails does not stop the others.
set -uo pipefail
dir=${1:-/tmp/checks}
mkdir -p "$dir"
source "$(dirname "$0")/../step.sh"
step gpu_tests 170 python -m pytest -v -m gpu --durations=0 tests/test_delta.py
step delta_compiled 150 python train_runner.py config/train_shakespeare_char_delta.py --max_iters=200 --eval_iters=5 \
  --eval_interval=200 --log_interval=25 --wandb_log=False --out_dir="$dir/delta_compiled"
step layer_vs_fla 260 python results/h100/delta/layer_vs_fla.py "$dir/layer_vs_fla" 16384,65536

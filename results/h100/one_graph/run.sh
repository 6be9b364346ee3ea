#!/bin/bash
# Sparse and NSA compiled as one graph (no graph break per layer), and Gated DeltaProduct's read_every,
# measured in one device call: their GPU tests, then one training step of each config alone
# (results/h100/profile_step.py: ms/step after warm-up, and the step's GPU work).
#   bash results/h100/one_graph/run.sh DIR
dir=$1
mkdir -p "$dir"
source "$(dirname "$0")/../step.sh"
step gpu_tests 240 python -m pytest -q -m gpu tests/test_sparse.py tests/test_nsa.py
for c in sparse nsa delta_product; do
  step "profile_$c" 150 python results/h100/profile_step.py "config/train_shakespeare_char_$c.py"
done
step profile_nsa_graphs 150 python results/h100/profile_step.py config/train_shakespeare_char_nsa.py --compile_mode=reduce-overhead

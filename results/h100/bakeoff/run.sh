#!/bin/bash
# The published bake-off on one H100, in parts that fit a device command (10 minutes at most):
#   bash results/h100/bakeoff/run.sh DIR [SECONDS [SEEDS]]      (defaults: /tmp/bakeoff, 540, 1337)
# A part trains for SECONDS, then is stopped; the next part on the same machine resumes each run from its
# checkpoint. What earlier parts finished and committed under results/h100/bakeoff is copied in first, so
# a fresh machine skips it. Copy DIR back without its checkpoints and commit it here after each part.
set -uo pipefail
dir=${1:-/tmp/bakeoff}
limit=${2:-540}
seeds=${3:-1337}
mkdir -p "$dir"
cp -rn results/h100/bakeoff/runs results/h100/bakeoff/*.json "$dir"/ 2>/dev/null
start=$EPOCHREALTIME
timeout "$limit" python train_runner.py --sweep_dir="$dir" --seeds="$seeds" --wandb_log=False
rc=$?
echo "part rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $start}")" | tee -a "$dir/parts.txt"

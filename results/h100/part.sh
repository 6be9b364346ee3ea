#!/bin/bash
# One part of a long GPU job, sized to fit a device command (10 minutes at most):
#   bash results/h100/part.sh COMMITTED DIR SECONDS [train_runner arguments...]
# Copies what earlier parts finished and committed under COMMITTED (runs/ and the *.json) into DIR,
# then runs `python train_runner.py --sweep_dir=DIR ARGUMENTS` for SECONDS and stops it. The next part
# on the same machine resumes each run from its checkpoint; a fresh machine skips what is committed.
# Copy DIR back without its checkpoints and commit it under COMMITTED after each part. Use a DIR outside
# the repository (/tmp/...): the device's copy of the working tree can lose files between calls.
# Triton's autotuning comes and goes with it (autotune.sh): copy DIR/triton_autotune.tgz over
# results/h100/triton_autotune.tgz too.
set -uo pipefail
committed=$1 dir=$2 limit=$3
shift 3
mkdir -p "$dir"
cp -rn "$committed"/runs "$committed"/*.json "$dir"/ 2>/dev/null
source "$(dirname "$0")/autotune.sh"
restore_autotune
start=$EPOCHREALTIME
timeout "$limit" python train_runner.py --sweep_dir="$dir" --wandb_log=False "$@"
rc=$?
echo "part rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $start}")" | tee -a "$dir/parts.txt"
keep_autotune "$dir"

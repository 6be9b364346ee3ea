#!/bin/bash
# Do three sweep workers on one GPU overlap their kernels under NVIDIA MPS? Without MPS the GPU
# time-slices between processes, so GPU-bound runs (every family's step is a CUDA graph since f401823)
# gain nothing from sharing: Gated DeltaProduct 0.97x, NSA 0.91x (../bakeoff/timed_f401823). Under MPS
# the three processes' kernels can run on the GPU at once, which matters for small kernels like DeltaProduct's
# ~600 batched matmuls a step. Each model's 3 runs (3 learning rates) first time-sliced, then under a
# private MPS daemon (its own pipe directory: no other process on the machine is touched):
#   bash results/h100/sharing/mps.sh DIR [MODELS [ITERS]]     (default: "delta_product nsa vanilla", 600)
# Compare each run's ms_per_iter (the median logging window, compilation excluded) between the two.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${1:-/tmp/mps}
models=${2:-delta_product nsa vanilla}
iters=${3:-600}
mkdir -p "$out"
command -v nvidia-cuda-mps-control || { echo "no nvidia-cuda-mps-control on PATH"; exit 1; }
args="--stage=sweep --learning_rates=5e-4,1e-3,2e-3 --seeds=1337 --lr_bracket=0 --seeds_at_best= --runs_per_gpu=3
  --max_iters=$iters --lr_decay_iters=$iters --eval_interval=$iters --eval_iters=0 --log_interval=50 --wandb_log=False"
timed() { local name=$1; shift; local t=$EPOCHREALTIME; "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$out/walls.txt"; }
summary() { python - "$1" <<'EOF'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("runs/*/metrics.json")):
    m = json.loads(f.read_text())
    print(f"  {f.parent.name}: {m['status']}, {m.get('ms_per_iter') or 0:.2f} ms/iter, wall {m.get('wall_time_s') or 0:.1f} s")
EOF
}
for model in $models; do
  timed "${model}_sliced" python train_runner.py config/bakeoff.py $args --models_to_test=$model \
    --sweep_dir="$out/${model}_sliced"
  summary "$out/${model}_sliced" | tee -a "$out/walls.txt"
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d
  timed "${model}_mps" python train_runner.py config/bakeoff.py $args --models_to_test=$model \
    --sweep_dir="$out/${model}_mps"
  summary "$out/${model}_mps" | tee -a "$out/walls.txt"
  echo quit | nvidia-cuda-mps-control
  sleep 1
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
done

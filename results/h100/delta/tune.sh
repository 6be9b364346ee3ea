#!/bin/bash
# Regularisation for the delta family in the baby GPT, several 3000-iteration runs sharing one H100
# (one device call, at most SECONDS; each run's metrics.json is rewritten at every evaluation, so a run
# the limit stops still reports its best so far):
#   bash results/h100/delta/tune.sh DIR [SECONDS]
# Their ms/iter are of a shared GPU: speed is measured alone (results/h100/checks.sh).
set -uo pipefail
dir=${1:-/tmp/tune} limit=${2:-540}
mkdir -p "$dir"
run() { local name=$1 cfg=$2; shift 2
  timeout "$limit" python train_runner.py "config/train_shakespeare_char_$cfg.py" --eval_iters=0 \
    --wandb_log=False --out_dir="$dir/$name" "$@" > "$dir/$name.log" 2>&1 & }
run deltanet_d3_lr1e-3 delta --dropout=0.3 --learning_rate=1e-3
run deltanet_d4_lr1e-3 delta --dropout=0.4 --learning_rate=1e-3
run deltanet_d4_lr2e-3 delta --dropout=0.4 --learning_rate=2e-3
run gated_d4_lr1e-3 gated_delta --dropout=0.4 --learning_rate=1e-3
run gated_d3_lr5e-4 gated_delta --dropout=0.3 --learning_rate=5e-4
wait
for m in "$dir"/*/metrics.json; do
  python -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-2], m['status'], m['iters'], \
    'best', m['best_val_loss'], 'final', m['final_val_loss'], m['kernel_path'], round(m['ms_per_iter'] or 0, 1), 'ms/iter shared')" "$m"
done | tee "$dir/summary.txt"

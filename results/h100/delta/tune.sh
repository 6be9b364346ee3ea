#!/bin/bash
# Regularisation for the delta family in the baby GPT, several 3000-iteration runs sharing one H100
# (one device call, at most SECONDS; each run's metrics.json is rewritten at every evaluation, so a run
# the limit stops still reports its best so far, and the same command again resumes it):
#   bash results/h100/delta/tune.sh DIR [SECONDS [ROUND]]
# Round 1: dropout 0.3/0.4 at 3000 iterations (every run overfit after iter 750, and five runs sharing
# the GPU stopped at 2500-2750 within 500 s). Round 2: schedules that end by 1500 iterations, stronger
# weight decay, lower rates, no short convolution. Round 3: round 2's best (Gated DeltaNet without the
# short convolution) timed alone for 300 iterations, then again with another seed and the other variants
# without the convolution. Round 4: DeltaNet without it (best so far 1.5108 at lr 1e-3; the issue asks for
# <= 1.50): another seed, negative eigenvalues, rates and decay around it (best: weight decay 0.5, 1.5061,
# now the config's recipe). Round 5: around that recipe (the config's own now, so only the change is
# given): its second seed, no position embedding (the recurrence carries order), decay 1.0, a
# 1,200-iteration schedule (the best evaluations came at 1200-1400), dropout 0.35, and 3 heads of 128 (the
# same parameters, twice the state); and two pairs of those (best: decay 1.0 with dropout 0.35, 1.5035).
# Round 6: around that pair: its second seed, dropout 0.4, decay 1.5, no position embedding, rate 1.5e-3
# (best: decay 1.5 with dropout 0.35, 1.5011). Round 7: which half of Gated DeltaNet's gating (1.4775)
# closes the gap, its output gate without the decay: DeltaNet with `use_gate` at Gated DeltaNet's head
# sizes (keys 32, values 64: exactly the parameters of the config's 6 x 64), two seeds, Gated DeltaNet's
# rate 5e-4, and decay 1.0 or 1.5 with dropout 0.35; and round 6's best on seeds 1338 and 1339 (the gate
# alone: 1.512-1.539, worse than without it; round 6's best 1.5041 and 1.5162 on the other seeds).
# Round 8: round 7's five gate runs again, on the PyTorch form: FLA's kernel faults at keys 32, values 64 on
# this H100 (fla_shapes.json), which round 7's runs had recorded as their path.
# Round 9: the config at rates 2e-3 and 3e-3 on three seeds (the timed bake-off at 71de65b gave 1.4937 at 2e-3).
# Round 10: 3e-3 on two more seeds, and 4e-3 (3e-3: 1.5009 over five seeds; its best evaluations came at
# 1,100, the overfitting after them). Round 11: 3e-3 with round 6's stronger regularisation, decay 1.5 or 1.0
# with dropout 0.35, on the same five seeds. Round 12: the published bake-off chose 8e-3 for that recipe on
# seed 1337 (1.4852), where seeds 1338 and 1339 spiked and ended at 1.57 and 1.61: those two seeds at 4e-3,
# the rate below, evaluated as the bake-off does (every 250 iterations).
# Their ms/iter are of a shared GPU: speed is measured alone (results/h100/checks.sh).
set -uo pipefail
dir=${1:-/tmp/tune} limit=${2:-540} round=${3:-1}
mkdir -p "$dir"
run() { local name=$1 cfg=$2 from=scratch; shift 2
  # the same command again on the same machine goes on with what a time limit stopped
  if [ -f "$dir/$name/ckpt.pt" ]; then grep -q '"status": "done"' "$dir/$name/metrics.json" && return; from=resume; fi
  timeout "$limit" python train_runner.py "config/train_shakespeare_char_$cfg.py" --eval_iters=0 \
    --wandb_log=False --out_dir="$dir/$name" --init_from=$from "$@" >> "$dir/$name.log" 2>&1 & }
gate_runs() { local gate="--eval_interval=100 --use_gate=True --head_k_dim=32 --head_v_dim=64"
  run deltanet_gate delta $gate
  run deltanet_gate_s1338 delta $gate --seed=1338
  run deltanet_gate_lr5e-4 delta $gate --learning_rate=5e-4
  run deltanet_gate_wd1_d35 delta $gate --weight_decay=1.0 --dropout=0.35
  run deltanet_gate_wd1.5_d35 delta $gate --weight_decay=1.5 --dropout=0.35; }
if [ "$round" = 1 ]; then
  run deltanet_d3_lr1e-3 delta --dropout=0.3 --learning_rate=1e-3
  run deltanet_d4_lr1e-3 delta --dropout=0.4 --learning_rate=1e-3
  run deltanet_d4_lr2e-3 delta --dropout=0.4 --learning_rate=2e-3
  run gated_d4_lr1e-3 gated_delta --dropout=0.4 --learning_rate=1e-3
  run gated_d3_lr5e-4 gated_delta --dropout=0.3 --learning_rate=5e-4
elif [ "$round" = 2 ]; then
  short="--max_iters=1500 --lr_decay_iters=1500 --eval_interval=100 --dropout=0.3"
  run gated_lr5e-4_wd1 gated_delta $short --learning_rate=5e-4 --weight_decay=1.0
  run gated_lr2.5e-4 gated_delta $short --learning_rate=2.5e-4
  run gated_lr5e-4_noconv gated_delta $short --learning_rate=5e-4 --use_short_conv=False
  run deltanet_lr1e-3_wd1 delta $short --learning_rate=1e-3 --weight_decay=1.0
  run deltanet_lr5e-4_wd05 delta $short --learning_rate=5e-4 --weight_decay=0.5
  run product_lr2.5e-4 delta_product $short --learning_rate=2.5e-4
elif [ "$round" = 4 ]; then
  short="--max_iters=1500 --lr_decay_iters=1500 --eval_interval=100 --dropout=0.3 --use_short_conv=False"
  run deltanet_lr1e-3_noconv_s1338 delta $short --learning_rate=1e-3 --seed=1338
  run deltanet_lr1e-3_noconv_neg delta $short --learning_rate=1e-3 --allow_neg_eigval=True
  run deltanet_lr1e-3_noconv_wd05 delta $short --learning_rate=1e-3 --weight_decay=0.5
  run deltanet_lr7e-4_noconv delta $short --learning_rate=7e-4
  run deltanet_lr1.5e-3_noconv delta $short --learning_rate=1.5e-3
  run deltanet_lr1e-3_noconv_d25 delta $short --learning_rate=1e-3 --dropout=0.25
elif [ "$round" = 5 ]; then
  run deltanet_tuned_s1338 delta --eval_interval=100 --seed=1338
  run deltanet_tuned_nopos delta --eval_interval=100 --pos_emb=none
  run deltanet_tuned_wd1 delta --eval_interval=100 --weight_decay=1.0
  run deltanet_tuned_1200 delta --eval_interval=100 --max_iters=1200 --lr_decay_iters=1200
  run deltanet_tuned_d35 delta --eval_interval=100 --dropout=0.35
  run deltanet_tuned_3x128 delta --eval_interval=100 --n_head=3
  run deltanet_tuned_wd1_d35 delta --eval_interval=100 --weight_decay=1.0 --dropout=0.35
  run deltanet_tuned_3x128_wd1 delta --eval_interval=100 --n_head=3 --weight_decay=1.0
elif [ "$round" = 6 ]; then
  run deltanet_tuned_wd1_d35_s1338 delta --eval_interval=100 --weight_decay=1.0 --dropout=0.35 --seed=1338
  run deltanet_tuned_wd1_d40 delta --eval_interval=100 --weight_decay=1.0 --dropout=0.4
  run deltanet_tuned_wd1.5_d35 delta --eval_interval=100 --weight_decay=1.5 --dropout=0.35
  run deltanet_tuned_wd1.5_d40 delta --eval_interval=100 --weight_decay=1.5 --dropout=0.4
  run deltanet_tuned_wd1_d35_nopos delta --eval_interval=100 --weight_decay=1.0 --dropout=0.35 --pos_emb=none
  run deltanet_tuned_wd1_d35_lr1.5e-3 delta --eval_interval=100 --weight_decay=1.0 --dropout=0.35 --learning_rate=1.5e-3
elif [ "$round" = 7 ]; then
  gate_runs
  run deltanet_tuned_wd1.5_d35_s1338 delta --eval_interval=100 --weight_decay=1.5 --dropout=0.35 --seed=1338
  run deltanet_tuned_wd1.5_d35_s1339 delta --eval_interval=100 --weight_decay=1.5 --dropout=0.35 --seed=1339
elif [ "$round" = 8 ]; then  # round 7's gate runs again: at keys 32, values 64 they now take the PyTorch form
  gate_runs
elif [ "$round" = 9 ]; then  # the timed bake-off's best rate for the config was its highest (2e-3): 2e-3, 3e-3
  for lr in 2e-3 3e-3; do for seed in 1337 1338 1339; do
    run "deltanet_lr${lr}_s$seed" delta --eval_interval=100 --learning_rate=$lr --seed=$seed
  done; done
elif [ "$round" = 10 ]; then  # round 9's best, 3e-3, on two more seeds; and 4e-3
  for run in 3e-3:1340 3e-3:1341 4e-3:1337 4e-3:1338 4e-3:1339; do lr=${run%:*} seed=${run#*:}
    run "deltanet_lr${lr}_s$seed" delta --eval_interval=100 --learning_rate=$lr --seed=$seed
  done
elif [ "$round" = 11 ]; then
  for wd in 1.5 1.0; do for seed in 1337 1338 1339 1340 1341; do
    run "deltanet_lr3e-3_wd${wd}_d35_s$seed" delta --eval_interval=100 --learning_rate=3e-3 --weight_decay=$wd \
      --dropout=0.35 --seed=$seed --eval_windows=512
  done; done
elif [ "$round" = 12 ]; then
  for seed in 1338 1339; do run "deltanet_lr4e-3_s$seed" delta --learning_rate=4e-3 --seed=$seed --eval_windows=512; done
else
  short="--max_iters=1500 --lr_decay_iters=1500 --eval_interval=100 --dropout=0.3 --use_short_conv=False"
  for cfg in gated_delta delta; do  # alone, one after the other: their ms/iter are the speed
    timeout 150 python train_runner.py "config/train_shakespeare_char_$cfg.py" $short --max_iters=300 --eval_iters=5 \
      --eval_interval=300 --wandb_log=False --out_dir="$dir/speed_${cfg}_noconv" > "$dir/speed_${cfg}_noconv.log" 2>&1
  done
  limit=$((limit - 300))
  run gated_lr5e-4_noconv_s1338 gated_delta $short --learning_rate=5e-4 --seed=1338
  run deltanet_lr5e-4_noconv delta $short --learning_rate=5e-4
  run deltanet_lr1e-3_noconv delta $short --learning_rate=1e-3
  run product_lr5e-4_noconv delta_product $short --learning_rate=5e-4
fi
wait
for m in "$dir"/*/metrics.json; do
  python -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-2], m['status'], m['iters'], \
    'best', m['best_val_loss'], 'final', m['final_val_loss'], m['kernel_path'], round(m['ms_per_iter'] or 0, 1), 'ms/iter shared')" "$m"
done | tee "$dir/summary.txt"

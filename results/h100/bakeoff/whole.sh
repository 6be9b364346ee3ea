#!/bin/bash
# Issue 7's GPU target timed as a user runs it: the default bake-off's grid (as timed.sh: 7 models x 3
# learning rates, seed 1337, no bracketing rounds or extra seeds) and its benchmarks, from nothing, as ONE
# process, not in parts. A device command lasts 10 minutes at most, so the first call starts the job in
# its own process session (setsid), which the device keeps running between calls, and each call, the
# first included, waits up to SECONDS for it; call it again (chained: an idle machine is given back in
# 30 s) until it says the job ended. Further arguments go to train_runner on the first call:
#   bash results/h100/bakeoff/whole.sh DIR [SECONDS [ARGS...]]
# DIR/job.log has every line of the job with the seconds since it began; DIR/job.txt its exit status and
# wall seconds. Each call copies the log to $OUT, and once the job has ended, DIR without checkpoints
# as $OUT/job.tgz (with Triton's autotuning, autotune.sh).
set -uo pipefail
dir=${1:-/tmp/bakeoff_whole} wait_s=${2:-560}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
if [ ! -f "$dir/job.pid" ]; then
  cat > "$dir/job.sh" <<EOF
source "$here/../autotune.sh"
restore_autotune
start=\${EPOCHREALTIME/./}
python train_runner.py --sweep_dir="$dir" --wandb_log=False --seeds=1337 --lr_bracket=0 --seeds_at_best= ${*:3} 2>&1 |
  while IFS= read -r line; do t=\$(( \${EPOCHREALTIME/./} - start )); printf '%5d.%d %s\n' \$((t / 1000000)) \$((t / 100000 % 10)) "\$line"; done
rc=\${PIPESTATUS[0]}
t=\$(( \${EPOCHREALTIME/./} - start ))
printf "job rc=%d wall_s=%d.%03d\n" \$rc \$((t / 1000000)) \$((t / 1000 % 1000)) > "$dir/job.txt"
keep_autotune "$dir"
EOF
  setsid bash "$dir/job.sh" > "$dir/job.log" 2>&1 < /dev/null &
  echo $! > "$dir/job.pid"
  echo "started the job (pid $(cat "$dir/job.pid")): $dir/job.log"
fi
t0=$SECONDS
while [ ! -f "$dir/job.txt" ] && [ $((SECONDS - t0)) -lt "$wait_s" ]; do sleep 5; done
grep -E "\[(sweep|bakeoff|bench_[a-z]+|warm_benchmarks)\]|done:|Error|error" "$dir/job.log" | tail -40
if [ -f "$dir/job.txt" ]; then
  cat "$dir/job.txt"
  [ -n "${OUT:-}" ] && tar czf "$OUT/job.tgz" --exclude='*.pt' -C "$dir" .
else
  echo "the job is still running: call again"
fi
[ -n "${OUT:-}" ] && cp "$dir/job.log" "$OUT/"
exit 0

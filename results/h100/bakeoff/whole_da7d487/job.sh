source "/work/main/results/h100/bakeoff/../autotune.sh"
restore_autotune
start=${EPOCHREALTIME/./}
python train_runner.py --sweep_dir="/tmp/bw" --wandb_log=False --seeds=1337 --lr_bracket=0 --seeds_at_best=  2>&1 |
  while IFS= read -r line; do t=$(( ${EPOCHREALTIME/./} - start )); printf '%5d.%d %s\n' $((t / 1000000)) $((t / 100000 % 10)) "$line"; done
rc=${PIPESTATUS[0]}
t=$(( ${EPOCHREALTIME/./} - start ))
printf "job rc=%d wall_s=%d.%03d\n" $rc $((t / 1000000)) $((t / 1000 % 1000)) > "/tmp/bw/job.txt"
keep_autotune "/tmp/bw"

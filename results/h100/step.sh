# Sourced by the one-call GPU scripts beside it (checks.sh, followups.sh):
#   step NAME SECONDS COMMAND...
# runs COMMAND under a time limit, its output to $dir/NAME.log, and appends its exit status and wall
# seconds to $dir/steps.txt; a step that fails does not stop the others. Each step keeps Triton's
# autotuning in $dir/triton_autotune.tgz (autotune.sh).
source "$(dirname "${BASH_SOURCE[0]}")/autotune.sh"
restore_autotune
step() { local name=$1 limit=$2; shift 2; local t=$EPOCHREALTIME
  timeout "$limit" "$@" > "$dir/$name.log" 2>&1
  echo "$name rc=$? wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t}")" | tee -a "$dir/steps.txt"
  # a process left on the GPU would time-slice the next step (two delta models timed the same 15.39 ms/iter)
  echo "  on the GPU after it: $(nvidia-smi --query-compute-apps=pid,process_name --format=csv,noheader | tr '\n' ' ')" \
    >> "$dir/steps.txt"
  keep_autotune "$dir"; }

# Sourced by step.sh and part.sh: Triton's autotuning results, kept from one machine to the next.
# FLA's kernels autotune on first use, which takes minutes on a fresh machine (the delta GPU tests spent
# their whole 170 s step in it: results/h100/delta/conv_ab/checks_steps.txt). FLA asks Triton to keep each
# result as a small <kernel>.autotune.json under TRITON_CACHE_DIR, keyed by Triton, the GPU, the kernel's
# source and the tuning key, so a result from another machine is used only where it is valid.
# restore_autotune puts results/h100/triton_autotune.tgz there; keep_autotune DIR packs all of them
# (restored and new) into DIR/triton_autotune.tgz, to be copied over the committed one.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
_autotune_tgz="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/triton_autotune.tgz"
restore_autotune() { mkdir -p "$TRITON_CACHE_DIR"
  [ -f "$_autotune_tgz" ] && tar xzf "$_autotune_tgz" -C "$TRITON_CACHE_DIR"; return 0; }
keep_autotune() { (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$1/triton_autotune.tgz" -T -); }

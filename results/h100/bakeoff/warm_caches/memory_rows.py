"""The bake-off's memory-wall rows of the window and NSA (their models as the sweep matches them), once with
warm=True (each row's first call: compilation, nothing measured or written) or measured, so that a measured
call after a warm one shows what torch's compile caches save:

    python results/h100/bakeoff/warm_caches/memory_rows.py warm      # then
    python results/h100/bakeoff/warm_caches/memory_rows.py measure   # rows in /tmp/w/bench_memory.json
"""
import sys

sys.path.insert(0, ".")
import train_runner as tr  # noqa: E402

warm = sys.argv[1] == "warm"
paths, raw = ["config/bakeoff.py"], dict(models_to_test="sparse,nsa", sweep_dir="/tmp/w", wandb_log="False")
cfg = tr.configure(tr.DEFAULTS, paths, raw_overrides=raw)
specs, *_ = tr.matched_specs(cfg, paths, raw)
tr.bench(dict(cfg, stage="bench_memory", out_dir="/tmp/w"), specs=list(specs.items()), warm=warm)

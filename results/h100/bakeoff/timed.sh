#!/bin/bash
# Issue 7's GPU target, timed from nothing: the default bake-off's grid (7 models x 3 learning rates x
# their configs' iterations, seed 1337) and its benchmarks (decoding latency, the memory wall) within
# 15 minutes of one H100. The bracketing rounds and the two more seeds at each best rate are left out
# here (--lr_bracket=0 --seeds_at_best=): they refine the published table, not the job's first answer.
# In parts of at most SECONDS on one machine (part.sh; nothing committed is copied in), any further
# arguments passed on to train_runner (e.g. --warm_benchmarks=True):
#   bash results/h100/bakeoff/timed.sh DIR [SECONDS [ARGS...]]
# DIR/parts.txt adds up the parts' wall seconds: the machine's start and the transfers are not in it.
# Where they go: each part's log says at how many seconds in each stage began, each run's metrics.json
# has its wall_time_s, and each benchmark row in bench_*.json its wall_s (build, warm-up and repeats).
# The 2026-11-22/23 bake-off's benchmarks alone took most of two 10-minute parts (logs/part7-9.log).
# At f22cbc7 (timed_f22cbc7/): 1,030 s, without Gated DeltaProduct's runs (fixed in 1637de1). At 71de65b
# (timed_71de65b/): 1,320 s, every run trained (sweep 1,007 s, benchmarks 288), in three parts.
# At f401823 (timed_f401823/), sparse and NSA compiled as one graph: 1,230 s (sweep 911, benchmarks 296).
# Chain the calls: an idle machine is given back in 30 s. Since aa1ff15 the job is timed as one process,
# as a user runs it, with whole.sh beside this (whole_14815e1/: 1,070 s; whole_eb44e47/ and whole_da7d487/: 833 and 851 s).
exec bash results/h100/part.sh /nonexistent "${1:-/tmp/bakeoff_timed}" "${2:-560}" --seeds=1337 \
  --lr_bracket=0 --seeds_at_best= "${@:3}"

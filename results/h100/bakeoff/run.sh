#!/bin/bash
# The published bake-off on one H100, in parts (results/h100/part.sh says how they resume):
#   bash results/h100/bakeoff/run.sh DIR [SECONDS [SEEDS]]      (defaults: /tmp/bakeoff, 540, 1337)
# (config/bakeoff.py then trains its seeds_at_best, 1338 and 1339, at each family's best rate)
exec bash results/h100/part.sh results/h100/bakeoff "${1:-/tmp/bakeoff}" "${2:-540}" --seeds="${3:-1337}"

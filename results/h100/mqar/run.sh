#!/bin/bash
# The recall bake-off (MQAR, Zoology's setting: config/mqar.py's GPU profile) on one H100, in parts
# (results/h100/part.sh says how they resume):
#   bash results/h100/mqar/run.sh DIR [SECONDS [train_runner overrides...]]   (defaults: /tmp/mqar, 540)
# Zoology's data unless it is already there (a CPU's --profile=small would pass for it otherwise)
python -c "import pickle, sys; sys.exit(pickle.load(open('data/mqar/meta.pkl', 'rb')).get('mqar_profile') != 'zoology')" \
    2>/dev/null || python data/mqar/prepare.py || exit
exec bash results/h100/part.sh results/h100/mqar "${1:-/tmp/mqar}" "${2:-540}" config/mqar.py --stage=mqar "${@:3}"

#!/usr/bin/env bash
# Reproduce the project's data sets (resumable: run it again after a kill; nothing is lost or
# duplicated). Seeds never overlap: 2 = validation, 3 = held-out test, 1 = training.
set -euo pipefail
WORKERS=${WORKERS:-}
W=${WORKERS:+--workers $WORKERS}
skinn-jax generate --n ${N_VAL:-500}    --seed 2 --out data/val   $W
skinn-jax generate --n ${N_TEST:-1000}  --seed 3 --out data/test  $W
skinn-jax generate --n ${N_TRAIN:-20000} --seed 1 --out data/train $W

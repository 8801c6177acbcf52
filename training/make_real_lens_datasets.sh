#!/usr/bin/env bash
# Reproduce the real-lens data sets (CONVENTIONS §9; resumable: run it again after a kill, nothing
# is lost or duplicated). Seeds never overlap each other or the paper-box sets (1-3):
# 12 = validation, 11 = training, 13 = held-out test. N_TRAIN extends the training set in place.
set -euo pipefail
WORKERS=${WORKERS:-}
W=${WORKERS:+--workers $WORKERS}
S="--space real-lens --shard-size ${SHARD_SIZE:-20}"
skinn-jax generate --n ${N_VAL:-300}    --seed 12 --out data/rl_val   $S $W
skinn-jax generate --n ${N_TRAIN:-6000} --seed 11 --out data/rl_train $S $W
skinn-jax generate --n ${N_TEST:-1000}  --seed 13 --out data/rl_test  $S $W

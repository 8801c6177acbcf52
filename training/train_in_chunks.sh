#!/usr/bin/env bash
# Train in chunks so that each chunk picks up the maps generated meanwhile (n_train: null);
# resumable: run it again after a kill. Usage: bash training/train_in_chunks.sh CONFIG [CHUNK]
set -euo pipefail
CONFIG=${1:-training/configs/cips.json}
CHUNK=${2:-5000}
while true; do
  out=$(skinn-jax train --config "$CONFIG" --max-steps "$CHUNK")
  echo "$out" | tail -n 25
  echo "$out" | grep -q '"finished": true' && break
done

#!/usr/bin/env bash
# The issue-6 mock-system study as run in session 3 (model v3, pca64; resumable: complete fits are
# loaded, interrupted ones resume from their saved phase). ~6 min per joint fit and ~6 min per
# lensing fit on 2 CPU cores. Usage: bash benchmarks/run_inference_study.sh [OUT]
set -u
OUT=${1:-runs/study}
S="0 1 2 3 4 5 6 7 8 9"
fit() {  # mode warmup samples systems...
  local mode=$1 warm=$2 samp=$3; shift 3
  python -m skinn_jax.inference.run_study --systems "$@" --modes "$mode" --out "$OUT" \
    --checkpoint pca64 --warmup "$warm" --samples "$samp" --reweight-systems \
    --figures docs/figures --no-progress || echo "mode $mode failed"
}
fit joint 100 200 $S
fit lensing 100 200 $S            # session 3 completed systems 0-3
fit kinematics 200 200 9 0 1 2 3 4 5 6 7 8   # zero-pixel system first; not run in session 3
# the report over every complete fit (coverage, widths, Fig. 9, reweighting on systems 0 and 9)
python -m skinn_jax.inference.run_study --systems $S --modes joint lensing kinematics --out "$OUT" \
  --checkpoint pca64 --report-only --reweight-systems 0 9 --figures docs/figures --no-progress

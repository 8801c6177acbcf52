#!/usr/bin/env bash
# The issue-6 mock-system study (resumable: complete fits are loaded, interrupted ones resume from
# their saved phase). Default emulator pca64s, model version 5. The fits are kept in git under
# docs/benchmarks/study/K/MODE, so that the study carries over from one session to the next.
# On 2 CPU cores (session 6): 11-27 min per joint fit; ~10 min per lensing fit; ~30 min per
# kinematics fit (session 5).
# Usage: bash benchmarks/run_inference_study.sh [OUT]
set -u
OUT=${1:-docs/benchmarks/study}
S="0 1 2 3 4 5 6 7 8 9"
fit() {  # mode warmup samples systems...
  local mode=$1 warm=$2 samp=$3; shift 3
  python -m skinn_jax.inference.study --systems "$@" --modes "$mode" --out "$OUT" \
    --checkpoint pca64s --warmup "$warm" --samples "$samp" --reweight-systems \
    --figures docs/figures --no-progress || echo "mode $mode failed"
}
fit joint 100 200 $S
fit lensing 100 200 $S
fit kinematics 300 300 9 0 1 2 3 4 5 6 7 8   # zero-pixel system first
# the report over every complete fit (coverage, widths, Fig. 9, reweighting on systems 0 and 9)
python -m skinn_jax.inference.study --systems $S --modes joint lensing kinematics --out "$OUT" \
  --checkpoint pca64s --report-only --reweight-systems 0 9 --figures docs/figures --no-progress

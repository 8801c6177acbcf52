#!/usr/bin/env bash
# The GPU check of issue 20, as one prepared command for a lent GPU machine (docs/gpu.md).
#
# Runs, on whatever JAX's default device is (a GPU there; the CPU here with --quick):
#   1. the emulator's map and its gradient      (benchmarks/bench_emulator.py)
#   2. the kinematic log L + gradient            (benchmarks/bench_kinematics_speed.py)
#   3. the joint potential + gradient             (benchmarks/profile_model_eval.py --system builtin)
#   4. skinn-jax fit-mock with 8 chains, vectorised on the one GPU (chain_method "auto")
# and writes at most 8 files to $OUT (the device tool brings back 8): gpu_check.log (every
# step's output, versions and devices first), emulator_speed.md, and the fit's report.json,
# summary.md and fit.png. Each step has its own time limit, so one slow step cannot eat the
# others' time; a step that fails is logged and the next one runs.
#
# Usage, from the repository root:  bash benchmarks/gpu/run.sh [--quick]
#   --quick: a short fit (20 warm-up + 20 draws, 2 chains) and few repeats, to check the script
#            itself on a CPU (JAX_PLATFORMS=cpu) before spending device time.
# Wheels the machine lacks are installed from .whl/ when present (benchmarks/gpu/prepare.sh).
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# skinn_jax from this checkout without installing it: its two mapped subpackages as links
if ! $PY -c "import skinn_jax.training, skinn_jax.checkpoints" 2>/dev/null; then
    [ -e skinn_jax/training ] || ln -s ../training skinn_jax/training
    [ -e skinn_jax/checkpoints ] || ln -s ../checkpoints skinn_jax/checkpoints
    export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi

step() {  # step NAME LIMIT_S COMMAND...: run, time and log one step
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY - <<'EOF'
import sys, jax, jaxlib, numpyro, flax, optax
print("python", sys.version.split()[0], "| jax", jax.__version__, "| jaxlib", jaxlib.__version__,
      "| numpyro", numpyro.__version__, "| flax", flax.__version__, "| optax", optax.__version__)
print("backend", jax.default_backend(), "| devices", jax.devices())
EOF
} 2>&1 | tee -a "$LOG"

if [ $QUICK = 1 ]; then
    REPEATS=3; NJAM=1; FIT=(--chains 2 --warmup 20 --samples 20 --max-samples 20)
else
    REPEATS=30; NJAM=2; FIT=(--chains 8)
fi
step emulator 90 $PY benchmarks/bench_emulator.py --n-jam $NJAM --out "$OUT/emulator_speed.md"
step kinematics 90 $PY benchmarks/bench_kinematics_speed.py --repeats $REPEATS
step joint_potential 90 $PY benchmarks/profile_model_eval.py --system builtin --modes joint \
    --repeats $REPEATS
FIT_DIR=$(mktemp -d)/fit
step fit_mock 300 $PY -m skinn_jax.cli fit-mock "${FIT[@]}" --out "$FIT_DIR" --no-progress
for f in report.json summary.md fit.png; do
    [ -f "$FIT_DIR/$f" ] && cp "$FIT_DIR/$f" "$OUT/fit_mock_$f"
done
echo "done: $(ls "$OUT")" | tee -a "$LOG"

#!/usr/bin/env bash
# Download the wheels a lent GPU machine lacks (benchmarks/gpu/wheels.txt) into .whl/ (ignored by
# git), for Python 3.12 on x86-64 Linux; run here, with network, before the device call that runs
# benchmarks/gpu/run.sh (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl -r benchmarks/gpu/wheels.txt
du -sh .whl

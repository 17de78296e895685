#!/usr/bin/env bash
# Download, into .whl/, the wheels that scripts/gpu_check.sh installs on a GPU machine without
# network (its image has Python 3.12, torch, JAX, triton, pytest and hypothesis).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "array-api-compat>=1.6" spikingjelly==2.0.0 loguru
ls .whl

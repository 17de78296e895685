#!/usr/bin/env bash
# Create .venv and install dualstep with both backends, the test tools and SpikingJelly.
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# The CPU build of torch first: an open range would pull a multi-GB CUDA build.
pip install ${DUALSTEP_TORCH:-torch==2.13.0}  # DUALSTEP_TORCH: another build, e.g. for CUDA
pip install -e '.[all,test,dev,bench]'
# SpikingJelly, which the compatibility tests compare with, without its heavy dependencies.
pip install --no-deps spikingjelly==2.0.0 loguru tqdm
# What scripts/test.sh compares to skip this setup when nothing it depends on changed.
bash scripts/setup_stamp.sh > .venv/.dualstep-setup

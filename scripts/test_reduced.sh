#!/usr/bin/env bash
# The suite in a reduced environment: NumPy only (no torch, no JAX), in .venv-numpy. The tests of
# the missing backends skip; everything else must pass. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv-numpy/bin/python ] || "$PYTHON" -m venv .venv-numpy
pip() { .venv-numpy/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install numpy array-api-compat pytest hypothesis
pip install --no-deps -e .
export DUALSTEP_REQUIRE=numpy DUALSTEP_REDUCED=1
exec .venv-numpy/bin/python -m pytest -p no:cacheprovider "$@"

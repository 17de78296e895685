#!/usr/bin/env bash
# Set up (scripts/setup.sh, when needed), then run the whole test suite. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The setup (93 s measured on a fresh clone, mostly downloads) runs when .venv is missing or
# was set up from other requirements.
if ! [ -f .venv/.dualstep-setup ] || ! diff -q <(bash scripts/setup_stamp.sh) .venv/.dualstep-setup >/dev/null; then
  bash scripts/setup.sh
fi
# Every backend installed above must import: a failed install fails the run instead of skipping.
# mkdocs and mkdocstrings: tests/test_docs.py builds the documentation strictly.
export DUALSTEP_REQUIRE=numpy,torch,jax,spikingjelly,equinox,flax,triton,nir,nirtorch,snntorch,mkdocs,mkdocstrings
# Two workers (pytest-xdist), one per core of the 2-core CI machine: 8 min 22 s against
# 12 min 51 s in one process, one run each on this machine. `-n 0` runs in one process.
exec .venv/bin/python -m pytest -n 2 "$@"

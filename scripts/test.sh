#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Every backend installed above must import: a failed install fails the run instead of skipping.
export DUALSTEP_REQUIRE=numpy,torch,jax,spikingjelly,equinox,flax,triton,nir,nirtorch,snntorch
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Print what the environment in .venv was set up from: the requirements, this setup, the torch
# build asked for. scripts/test.sh reruns the setup only when this differs from .venv's record.
set -euo pipefail
cd "$(dirname "$0")/.."
cat pyproject.toml scripts/setup.sh | sha256sum
echo "torch: ${DUALSTEP_TORCH:-default}"

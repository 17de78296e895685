#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the CUDA tests, then the quick benchmark on CUDA.
# Meant to finish within about 5 minutes once the environment exists. It needs a CUDA build of
# torch (the CPU build that scripts/setup.sh installs sees no GPU, and the CUDA tests then skip):
#   DUALSTEP_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" \
#     bash scripts/gpu_check.sh
# Results: the pytest summary, and benchmarks/results/gpu/bench-cuda.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then bash scripts/setup.sh; fi
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'"
.venv/bin/python -m pytest -q -m cuda tests/test_cuda.py tests/test_interop.py "$@"
timeout 240 .venv/bin/python -m benchmarks --quick --device cuda --out benchmarks/results/gpu

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU whose python3 already has torch (CUDA), JAX (CUDA), triton,
# pytest and hypothesis, and maybe no network: the GPU tests, then the fused-kernel benchmark.
# Within about 6 minutes, compiles included. What the machine lacks (array-api-compat,
# SpikingJelly, loguru) travels as wheels in .whl/, which `bash scripts/gpu_wheels.sh` fills
# on a machine with network. Results (logs, gpu.json, gpu.md) go to $OUT, or benchmarks/results/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/dualstep-site .whl/*.whl
  export PYTHONPATH="/tmp/dualstep-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and JAX share the GPU
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'" || exit 1
"$PY" -c "import torch, jax, triton; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'jax', jax.__version__, 'triton', triton.__version__)" | tee "$OUT/device.txt"
# The CUDA-marked tests (fused kernels compiled, CUDA == CPU, compiled chunks), then the tests
# that once failed only where JAX defaults to the GPU.
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/tests.log"
status=${PIPESTATUS[0]}
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_interop.py tests/test_main.py \
  -k "sharing or info" 2>&1 | tee -a "$OUT/tests.log"
status=$((status | PIPESTATUS[0]))
timeout 240 "$PY" -m benchmarks.gpu --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log"
exit $((status | PIPESTATUS[0]))

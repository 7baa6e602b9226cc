#!/usr/bin/env bash
# The GPU checks of docs/gpu.md, in under 8 minutes on one GPU: the CUDA tests, then bench_gpu.py
# (last line: mfu=X packing_gain=Y). Needs torch (with CUDA) and numpy; pytest and ray when present.
# Without CUDA both say so and the script exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_path.py
else
    timeout 150 "$PY" tests/test_cuda_path.py
fi
timeout 320 "$PY" tests/benchmarks/bench_gpu.py "$@"
echo "gpu_check: $((SECONDS - start)) s"

#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the CPU build of PyTorch and proxyscale.
# Users with a GPU can instead `pip install -e .` into an environment that has their CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  log=.venv/setup.log
  pip_install() { .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1 || { cat "$log"; exit 1; }; }
  echo "setting up .venv (first time only; log in $log)"
  # The CPU build of torch is pinned here only; pyproject keeps a loose range for users.
  pip_install "torch==2.13.0"
  pip_install -e ".[dev,docs]"
  .venv/bin/python -c "import torch, hydra, matplotlib, scipy, pandas, ray, wandb, proxyscale.models"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

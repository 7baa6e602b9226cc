#!/usr/bin/env bash
# The main job: set up if needed, then train the ~1M-parameter proxy on the default corpus.
# (Until the orchestrator lands this is a single real training run; see README.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/proxyscale train model=proxy_1m train.tokens=3000000 train.lr=3e-3 train.checkpoint_interval=100 "$@"

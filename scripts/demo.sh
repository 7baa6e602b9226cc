#!/usr/bin/env bash
# The main job: set up if needed, then run the demo sweep (8 real runs on Ray, live fit, summary).
# Relaunching resumes; extra arguments are Hydra overrides (e.g. sweep_dir=/tmp/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/proxyscale launch sweep=demo "$@"

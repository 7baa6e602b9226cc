#!/usr/bin/env bash
# The whole story on this machine: set up if needed, then train a small muP ladder in closed loop on Ray
# (initial design, live refits, planner proposals until the budget is committed), recommend the
# configuration at the target with intervals, and write the report (runs/demo/report/report.md).
# Relaunching resumes; extra arguments are Hydra overrides for launch (e.g. budget_flops=4e12).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/proxyscale launch sweep=demo "$@"
sweep_dir=runs/demo
for arg in "$@"; do
  case "$arg" in sweep_dir=*) sweep_dir="${arg#sweep_dir=}" ;; esac
done
# recommend exits 2 with the reason when L(N, D) is not identifiable from the runs; the report says why too.
.venv/bin/proxyscale recommend "$sweep_dir" --target-flops 1e15 || true
.venv/bin/proxyscale report "$sweep_dir" --target-flops 1e15

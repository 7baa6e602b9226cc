#!/usr/bin/env bash
# The whole story on this machine: set up if needed; train a small muP ladder in closed loop on Ray (initial
# design, live refits, planner proposals until the budget is committed); recommend the configuration at the
# sweep's target_flops with intervals; check it with one real run beyond the ladder (its loss is predicted,
# with an interval, before it trains: DIR/check.json); write the report (runs/demo/report/report.md).
# Relaunching resumes; extra arguments are Hydra overrides for launch (e.g. budget_flops=4e12 sweep_dir=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/proxyscale launch sweep=demo "$@"
sweep_dir=runs/demo
for arg in "$@"; do
  case "$arg" in sweep_dir=*) sweep_dir="${arg#sweep_dir=}" ;; esac
done
# recommend and check exit 4 when L(N, D) is not identifiable from the runs (the message names the axis to
# widen); the report still follows and says the same.
if .venv/bin/proxyscale recommend "$sweep_dir"; then
  .venv/bin/proxyscale check "$sweep_dir" --factor 4 || echo "demo: the check run did not complete (see above)"
else
  echo "demo: no recommendation (exit $?); the report says why"
fi
.venv/bin/proxyscale report "$sweep_dir"

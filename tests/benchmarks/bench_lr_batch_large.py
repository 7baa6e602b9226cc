"""sweeps/lr_batch_large.yaml end to end (issue 22): launch its 2,100 simulated runs, export the ledger, fit the
Step Law with `fit --law lr_batch`, and set the law beside the truth's own optima.

The truth's optima are found numerically from models/simulated.py (no noise): per (N, D) group, the LR and the
batch size that minimise the noiseless final loss over fine grids; power laws fitted to those give the exponents
the sweep should recover. The LR optimum is exactly 0.01 (N / 1e6)^-0.713 (D / 1e8)^0.307; the batch optimum
sits a little below the bowl's 8192 (D / 1e8)^0.571 because of the noise scale.

Run: .venv/bin/python tests/benchmarks/bench_lr_batch_large.py [--dir /tmp/lr_batch_large] [--skip-launch]
Last line: lr_batch_large runs=R launch_s=S fit_s=F recovered=K/3 (exponents whose interval holds the truth's).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["--n", "n_params", "--d", "tokens", "--lr", "lr", "--batch", "batch_size", "--loss", "final_eval_loss"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True)


def truth_optima() -> dict[str, float]:
    """The exponents of the truth's own optima (eta_opt in N and D, B_opt in D) over the sweep's (N, D) groups."""
    from proxyscale.analysis.lr_batch_law import fit_power_law
    from proxyscale.models.flops import count_parameters
    from proxyscale.models.simulated import batch_factor, curve_loss, effective_batch_tokens, lr_factor, schedule_multipliers
    from proxyscale.models.spec import ModelSpec, SimulatedSpec, TrainSpec
    from proxyscale.orchestrator.config import compose_config, to_plain

    plain = to_plain(compose_config(["sweep=lr_batch_large"]))
    truth = SimulatedSpec(**{k: v for k, v in plain["trainer"].items() if k != "kind"} | {"noise": 0.0})
    axes = plain["sweep"]["axes"]
    model_keys = {k: v for k, v in plain["model"].items() if k in ("depth", "n_heads", "seq_len")}
    rows = {"N": [], "D": [], "lr": [], "batch": []}
    fine_lr = np.geomspace(min(axes["train.lr"]), max(axes["train.lr"]), 400)
    fine_batch = np.unique(np.geomspace(min(axes["train.batch_tokens"]), max(axes["train.batch_tokens"]), 400).round())
    for width in axes["model.width"]:
        n = count_parameters(ModelSpec(width=width, **model_keys)).total
        for tokens in axes["train.tokens"]:
            def loss(lr: float, batch: float, n=n, width=width, tokens=tokens) -> float:
                """The noiseless final loss of a cosine run (models.simulated.true_curve x knob_factor, at any batch)."""
                train = TrainSpec(lr=float(lr), tokens=int(tokens // batch * batch), batch_tokens=int(batch), warmup_steps=5,
                                  eval_interval_tokens=2**30)
                clean = curve_loss(truth, n, schedule_multipliers(train), [train.steps], warmup_steps=5,
                                   batch_tokens=effective_batch_tokens(truth, train.batch_tokens))[0]
                return float(clean * lr_factor(truth, lr, width, batch_tokens=train.batch_tokens, tokens=train.tokens,
                                               n_params=n) * batch_factor(truth, train.batch_tokens, train.tokens))
            best_lr = fine_lr[int(np.argmin([loss(lr, 4096) for lr in fine_lr]))]
            best_batch = fine_batch[int(np.argmin([loss(best_lr, b) for b in fine_batch]))]
            rows["N"].append(n)
            rows["D"].append(tokens)
            rows["lr"].append(best_lr)
            rows["batch"].append(best_batch)
    lr_law = fit_power_law({"N": np.array(rows["N"]), "D": np.array(rows["D"])}, rows["lr"], bootstrap=0)
    batch_law = fit_power_law({"D": np.array(rows["D"])}, rows["batch"], bootstrap=0)
    return {"lr_N": float(lr_law.theta[1]), "lr_D": float(lr_law.theta[2]), "batch_D": float(batch_law.theta[1])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/lr_batch_large")
    parser.add_argument("--skip-launch", action="store_true", help="use the ledger already in --dir")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    directory = Path(args.dir)
    launch_s = float("nan")
    if not args.skip_launch:
        started = time.perf_counter()
        done = cli("launch", "sweep=lr_batch_large", f"sweep_dir={directory}", f"cluster.num_cpus={args.num_cpus}", "--plain")
        launch_s = time.perf_counter() - started
        assert done.returncode == 0, done.stderr[-3000:]
        counts = [line for line in done.stdout.splitlines() if re.fullmatch(r"(\d+ \w+)(, \d+ \w+)*", line.strip())]
        print(f"launch: {launch_s:.0f}s wall ({counts[-1] if counts else '?'})")
    csv = directory.with_suffix(".csv")
    exported = cli("export", str(directory), "-o", str(csv))
    assert exported.returncode == 0, exported.stderr
    started = time.perf_counter()
    fitted = cli("fit", "--csv", str(csv), "--law", "lr_batch", *COLUMNS, "--json")
    fit_s = time.perf_counter() - started
    assert fitted.returncode == 0, fitted.stderr
    payload = json.loads(fitted.stdout)
    text = cli("fit", "--csv", str(csv), "--law", "lr_batch", *COLUMNS)
    print(text.stdout)
    truth = truth_optima()
    found = {"lr_N": payload["lr"]["exponents"]["N"], "lr_D": payload["lr"]["exponents"]["D"],
             "batch_D": payload["batch_size"]["exponents"]["D"]}
    print(f"{'exponent':<22} {'truth':>8} {'fitted':>8} {'95% interval':>20}  holds the truth")
    recovered = 0
    for name, label in (("lr_N", "eta_opt in N"), ("lr_D", "eta_opt in D"), ("batch_D", "B_opt in D")):
        f = found[name]
        holds = f["low"] <= truth[name] <= f["high"]
        recovered += holds
        print(f"{label:<22} {truth[name]:>8.3f} {f['value']:>8.3f} [{f['low']:>8.3f}, {f['high']:>8.3f}]  "
              + ("yes" if holds else "NO"))
    print(f"lr_batch_large runs={payload['rows']} launch_s={launch_s:.0f} fit_s={fit_s:.1f} recovered={recovered}/3")


if __name__ == "__main__":
    main()

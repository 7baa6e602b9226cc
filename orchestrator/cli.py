"""The `proxyscale` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.spec import SpecError


def _format_record(record) -> str:
    parts = [f"step {record.step:>6}", f"tokens {record.tokens:>10,}", f"lr {record.lr:.2e}"]
    if record.train_loss is not None:
        parts.append(f"train {record.train_loss:.4f}")
    if record.eval_loss is not None:
        parts.append(f"eval {record.eval_loss:.4f}")
    if "max_attn_logit" in record.probes:
        parts.append(f"max-attn-logit {record.probes['max_attn_logit']:.2f}")
    if "grad_norm" in record.probes:
        parts.append(f"grad-norm {record.probes['grad_norm']:.3f}")
    return "  ".join(parts)


def command_train(overrides: list[str]) -> int:
    """Compose the config, train ONE run, write its result; relaunching resumes from the checkpoint."""
    from models.data import load_tokens, unigram_entropy
    from models.flops import count_parameters, flops_per_token
    from models.train import train_run
    from orchestrator.config import compose_config, run_spec_from_config

    cfg = compose_config(overrides)
    spec = run_spec_from_config(cfg)
    out_dir = Path(cfg.out_dir) / spec.run_id()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = count_parameters(spec.model)
    source = load_tokens(spec.data)
    entropy = unigram_entropy(source.train, source.vocab_size)
    print(f"run {spec.run_id()}  N={counts.total:,} (non-embedding {counts.non_embedding:,})  "
          f"D={spec.train.steps * spec.train.batch_tokens:,} tokens  steps={spec.train.steps}  "
          f"C={flops_per_token(spec.model) * spec.train.steps * spec.train.batch_tokens:.3e} FLOPs")
    print(f"data: {source.description}, hash {source.data_hash[:12]}, unigram entropy {entropy:.4f} nats/token")
    (out_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    with open(out_dir / "records.jsonl", "a") as records:
        def on_record(record) -> None:
            records.write(json.dumps(record.__dict__) + "\n")
            records.flush()
            print(_format_record(record), flush=True)

        result = train_run(spec, on_record=on_record, checkpoint_dir=out_dir)
    summary = result.to_dict() | {"unigram_entropy": entropy}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"{result.status}: final eval loss {result.final_eval_loss:.4f} (best {result.best_eval_loss:.4f}, "
          f"unigram entropy {entropy:.4f}) in {result.wall_seconds:.1f}s; result in {out_dir}/result.json")
    if result.reason:
        print(f"reason: {result.reason}")
    return 0


def command_coord_check(args: argparse.Namespace) -> int:
    from analysis.plots import plot_coord_check
    from models.coord_check import coord_check

    records = []
    for parametrization in args.parametrization:
        started = time.perf_counter()
        records += coord_check(
            parametrization=parametrization,
            widths=args.widths,
            depths=args.depths,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
        )
        print(f"{parametrization}: {time.perf_counter() - started:.1f}s")
    plot_coord_check(records, args.out)
    print(f"coordinate check plot written to {args.out}")
    return 0


def _read_columns(path: str, columns: dict[str, str | None]):
    import pandas as pd

    table = pd.read_csv(path)
    for option, column in columns.items():
        if column is not None and column not in table.columns:
            raise SpecError(f"{option}: column {column!r} is not in {path}; columns are {list(table.columns)}")
    return table


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=float))


def command_fit(args: argparse.Namespace) -> int:
    """Fit a scaling law to any CSV (a W&B export, a published table) and report the target allocation."""
    from analysis.fit import fit_chinchilla
    from analysis.isoflop import fit_isoflop

    if args.csv is None:
        raise SpecError("fit: give --csv FILE (fitting a sweep directory arrives with the ledger)")
    if args.n is None and args.d is None:
        raise SpecError("fit: give --n COL or --d COL (or both)")
    if args.d is None and args.flops is None or args.n is None and args.flops is None:
        raise SpecError("fit: with only one of --n / --d, give --flops COL so the other follows from C = 6 N D")
    table = _read_columns(args.csv, {"--n": args.n, "--d": args.d, "--loss": args.loss, "--flops": args.flops})
    if args.drop_highest_loss:
        table = table.sort_values(args.loss).iloc[: -args.drop_highest_loss]
    flops = table[args.flops].to_numpy(float) if args.flops else None
    n = table[args.n].to_numpy(float) if args.n else flops / (6 * table[args.d].to_numpy(float))
    d = table[args.d].to_numpy(float) if args.d else flops / (6 * n)
    loss = table[args.loss].to_numpy(float)
    if flops is None:
        flops = 6 * n * d
    payload: dict = {"law": args.law, "n_points": int(len(loss)), "bootstrap": args.bootstrap,
                     "n_definition": f"column {args.n!r}" if args.n else "C / (6 D)"}
    if args.law == "chinchilla":
        fit = fit_chinchilla(n, d, loss, bootstrap=args.bootstrap, seed=args.seed)
        payload["objective"] = fit.objective
        payload["parameters"] = {k: v.as_dict() for k, v in fit.intervals().items()}
        payload["n_opt_exponent"] = fit.params["beta"] / (fit.params["alpha"] + fit.params["beta"])
        target = fit.compute_optimal(args.target_flops) if args.target_flops else None
    else:
        if args.flops is None:
            raise SpecError("fit --law isoflop: give --flops COL (runs are grouped by their FLOP budget)")
        fit = fit_isoflop(flops, d if args.n is None else n, loss, x_is_tokens=args.n is None,
                          bootstrap=args.bootstrap, seed=args.seed)
        payload["budgets"] = [float(b) for b in fit.budgets]
        payload["parameters"] = {
            "n_opt_coefficient": fit.n_law.coefficient.as_dict(), "n_opt_exponent": fit.n_law.exponent.as_dict(),
            "d_opt_coefficient": fit.d_law.coefficient.as_dict(), "d_opt_exponent": fit.d_law.exponent.as_dict(),
            "loss_coefficient": fit.loss_law.coefficient.as_dict(), "loss_exponent": fit.loss_law.exponent.as_dict(),
        }
        target = fit.at(args.target_flops) if args.target_flops else None
    if target is not None:
        payload["target"] = {"flops": args.target_flops} | {k: v.as_dict() for k, v in target.items()}
    if args.json:
        _print_json(payload)
        return 0
    level = "95%"
    print(f"{args.law} fit on {payload['n_points']} points ({args.bootstrap} bootstrap resamples, {level} intervals)")
    for name, value in payload["parameters"].items():
        print(f"  {name:>18} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    if target is not None:
        print(f"at C = {args.target_flops:.3g} FLOPs:")
        for name in ("n_opt", "d_opt", "loss"):
            value = payload["target"][name]
            print(f"  {name:>18} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    return 0


def command_fit_schedule(args: argparse.Namespace) -> int:
    from analysis.schedule_law import curve_from_table, fit_schedule_law

    def load(path: str):
        table = _read_columns(path, {"step": "step", "lr": "lr", "loss": "loss"})
        return curve_from_table(Path(path).stem, table["step"], table["lr"], table["loss"],
                                warmup_steps=args.warmup_steps, peak_lr=args.peak_lr)

    fitting = [load(path) for path in args.fit]
    fit = fit_schedule_law(fitting, decay=args.decay, skip_fraction=args.skip_fraction)
    payload = {
        "parameters": fit.as_dict(),
        "fit_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in fitting},
        "predict_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in map(load, args.predict or [])},
    }
    if args.json:
        _print_json(payload)
        return 0
    p = payload["parameters"]
    print(f"L(s) = {p['L0']:.4f} + {p['A']:.4f} S1^-{p['alpha']:.4f} - {p['C']:.4f} S2   (lambda = {p['decay']})")
    for kind in ("fit_error", "predict_error"):
        for name, error in payload[kind].items():
            print(f"  {kind.replace('_error', ''):>7} {name:<24} mean |relative error| {100 * error:.3f}%"
                  f" (past the first {args.skip_fraction:.0%})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyscale", description="Plan large training runs from small GPT proxies.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train ONE proxy from the Hydra config (conf/); arguments are Hydra overrides",
        description="Train one run. Arguments are Hydra overrides, e.g. model=proxy_1m train.tokens=3e6 train.lr=1e-2.",
    )
    train.add_argument("overrides", nargs="*", help="Hydra overrides (key=value, group=option)")
    coord = sub.add_parser("coord-check", help="coordinate check: activation scales vs width (and depth), saved as PNG")
    coord.add_argument("--parametrization", nargs="+", default=["sp", "mup"], choices=["sp", "mup", "completep"])
    coord.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256])
    coord.add_argument("--depths", nargs="+", type=int, default=[2])
    coord.add_argument("--steps", type=int, default=5)
    coord.add_argument("--lr", type=float, default=1e-2)
    coord.add_argument("--seed", type=int, default=0)
    coord.add_argument("--out", default="coord_check.png")

    fit = sub.add_parser("fit", help="fit L(N, D) (approach 3) or isoFLOP minima (approach 2) to a CSV, with intervals")
    fit.add_argument("--csv", help="a results table (W&B export, published data)")
    fit.add_argument("--n", help="column of parameter counts")
    fit.add_argument("--d", help="column of training tokens")
    fit.add_argument("--loss", required=True, help="column of final losses")
    fit.add_argument("--flops", help="column of training FLOPs (D = C / 6N when --d is not given)")
    fit.add_argument("--law", choices=["chinchilla", "isoflop"], default="chinchilla")
    fit.add_argument("--target-flops", type=float, help="report N_opt, D_opt and loss at this compute")
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    fit.add_argument("--drop-highest-loss", type=int, default=0, help="drop this many highest-loss rows first")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", action="store_true", help="machine-readable output")

    schedule = sub.add_parser("fit-schedule", help="fit the LR-schedule law to loss curves and predict others")
    schedule.add_argument("--fit", nargs="+", required=True, help="CSV curves with step, lr, loss columns")
    schedule.add_argument("--predict", nargs="*", help="curves to predict; their error is reported")
    schedule.add_argument("--warmup-steps", type=int, default=0, help="reconstruct a linear warmup before the first row")
    schedule.add_argument("--peak-lr", type=float, help="peak LR of that warmup (default: the first row's LR)")
    schedule.add_argument("--decay", type=float, default=0.999, help="momentum lambda of the annealing area")
    schedule.add_argument("--skip-fraction", type=float, default=0.1, help="ignore the first fraction of each curve")
    schedule.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return command_train(args.overrides)
        if args.command == "coord-check":
            return command_coord_check(args)
        if args.command == "fit":
            return command_fit(args)
        if args.command == "fit-schedule":
            return command_fit_schedule(args)
    except SpecError as error:
        print(f"proxyscale: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""`proxyscale compare` and analysis/compare.py: a known crossover recovered inside its interval, equal laws give no
clear winner, the JSON shape, bad input before any fitting, sweep directories, and the published gadre_small ladder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.compare import Recipe, Target, compare_at, fit_recipes
from proxyscale.analysis.laws import chinchilla_loss, compute_optimal_allocation
from proxyscale.analysis.predictive import MIN_MEMBERS
from proxyscale.orchestrator.cli import main
from tests.conftest import SHARED_DATA

GADRE = SHARED_DATA / "gadre_small" / "gadre_small_evals.csv"
SIZES = np.geomspace(2e6, 6e7, 5)
MULTIPLIERS = (5, 10, 20, 40, 80)
# a crosses below b: a has the larger constants' advantage at small scale, b the steeper exponents.
LAW_A = dict(E=1.8, A=400.0, B=600.0, alpha=0.30, beta=0.30)
LAW_B = dict(E=1.8, A=1500.0, B=2000.0, alpha=0.36, beta=0.36)
MEMBERS = MIN_MEMBERS  # the fewest the command accepts, and the cheapest


def ladder(law: dict, *, noise: float = 0.005, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of a known law on a grid of 5 sizes x 5 tokens per parameter, with multiplicative noise."""
    n = np.repeat(SIZES, len(MULTIPLIERS))
    d = np.tile(MULTIPLIERS, len(SIZES)) * n
    rng = np.random.default_rng(seed)
    return n, d, chinchilla_loss(n, d, **law) * np.exp(rng.normal(0, noise, len(n)))


def frontier(law: dict, flops: np.ndarray) -> np.ndarray:
    n, d = compute_optimal_allocation(flops, A=law["A"], B=law["B"], alpha=law["alpha"], beta=law["beta"])
    return chinchilla_loss(n, d, **law)


def true_crossover(a: dict, b: dict) -> float:
    grid = np.geomspace(1e14, 1e22, 20001)
    diff = frontier(a, grid) - frontier(b, grid)
    where = np.flatnonzero(np.sign(diff[:-1]) != np.sign(diff[1:]))
    assert len(where) == 1
    return float(grid[where[0]])


def test_a_known_crossover_is_recovered_inside_its_interval():
    truth = true_crossover(LAW_A, LAW_B)
    largest_run = 6 * SIZES[-1] * SIZES[-1] * MULTIPLIERS[-1]
    assert truth > 3 * largest_run  # beyond the ladder: the largest proxy alone ranks them the wrong way
    fits = fit_recipes([Recipe.of("a", *ladder(LAW_A, seed=1)), Recipe.of("b", *ladder(LAW_B, seed=2))],
                       bootstrap=MEMBERS)
    result = compare_at(fits, Target(flops=1e21))
    pair = result.pairs[0]
    cross = pair.crossover
    assert cross.flops is not None and cross.lower_before == "a" and cross.lower_after == "b"
    assert cross.flops.low <= truth <= cross.flops.high, (truth, cross.flops)
    assert abs(np.log10(cross.flops.value / truth)) < 0.5
    # At the target b is lower, as its law says, and the comparison is sure of it.
    assert frontier(LAW_B, np.array([1e21]))[0] < frontier(LAW_A, np.array([1e21]))[0]
    assert result.best == "b" and result.decided and pair.p_a_lower < 0.1 and pair.verdict == "b lower"
    # Below the crossover the order flips: at the largest run's compute a is lower, with no crossover in that window.
    early = compare_at(fits, Target(flops=largest_run), window=(6 * SIZES[0] ** 2 * 5, largest_run))
    assert early.best == "a" and early.pairs[0].crossover.flops is None
    assert "no crossover in" in early.pairs[0].crossover.line()


def test_equal_laws_give_no_clear_winner():
    # Two recipes from one law with independent noise: the sign of their difference at the target is noise. A
    # calibrated P(a lower) is then spread evenly over (0, 1) (it is decisive at 0.9 in about 20% of replications,
    # 10% each way: docs/compare.md measures it), so most replications must call no winner and P must centre on 0.5.
    ps = []
    for seed in range(10):
        fits = fit_recipes([Recipe.of("a", *ladder(LAW_A, seed=10 + seed)),
                            Recipe.of("b", *ladder(LAW_A, seed=20 + seed))], bootstrap=32, calibrate=False,
                           share="none")
        ps.append(compare_at(fits, Target(flops=1e21)).pairs[0].p_a_lower)
    confident = sum(p >= 0.9 or p <= 0.1 for p in ps)
    assert confident <= 4, ps
    assert 0.3 <= float(np.mean(ps)) <= 0.7, ps
    # The same runs under two names: p near 0.5 and no clear winner.
    same = ladder(LAW_A, seed=3)
    result = compare_at(fit_recipes([Recipe.of("a", *same), Recipe.of("b", *same)], bootstrap=MEMBERS,
                                    calibrate=False), Target(flops=1e21))
    assert abs(result.pairs[0].p_a_lower - 0.5) < 0.15
    assert result.pairs[0].verdict == "no clear winner" and not result.decided and result.winner is None
    assert "no clear winner" in "\n".join(result.lines())


def two_recipe_csv(tmp_path, **extra) -> str:
    rows = []
    for name, law, seed in (("a", LAW_A, 1), ("b", LAW_B, 2)):
        n, d, loss = ladder(law, seed=seed)
        rows.append(pd.DataFrame({"recipe": name, "N": n, "D": d, "L": loss} | {k: v[name] for k, v in extra.items()}))
    path = tmp_path / "recipes.csv"
    pd.concat(rows).to_csv(path, index=False)
    return str(path)


def test_json_shape_from_a_csv_and_the_same_numbers_as_the_api(tmp_path, capsys):
    import proxyscale

    csv = two_recipe_csv(tmp_path)
    plot = tmp_path / "compare.png"
    code = main(["compare", "--csv", csv, "--by", "recipe", "--n", "N", "--d", "D", "--loss", "L", "--target-flops",
                 "1e21", "--bootstrap", str(MEMBERS), "--json", "--plot", str(plot)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"target", "groups", "best", "p_best", "pairs", "calibration"} <= set(out)
    assert out["target"]["flops"] == 1e21
    assert [g["name"] for g in out["groups"]] == ["a", "b"]
    for group in out["groups"]:
        assert set(group["loss"]) == {"value", "low", "high"} and group["loss"]["low"] <= group["loss"]["value"]
    pair = out["pairs"][0]
    assert {"a", "b", "difference", "p_a_lower", "crossover"} <= set(pair)
    assert set(pair["difference"]) == {"value", "low", "high"} and 0 <= pair["p_a_lower"] <= 1
    assert pair["crossover"]["found"] and set(pair["crossover"]["flops"]) == {"value", "low", "high"}
    assert out["best"] in ("a", "b") and 0 <= out["p_best"] <= 1
    assert plot.stat().st_size > 10_000
    api = proxyscale.compare(csv, by="recipe", n="N", d="D", loss="L", target_flops=1e21, bootstrap=MEMBERS).to_dict()
    assert api["groups"] == out["groups"] and api["p_best"] == out["p_best"]
    # The text for a person names the best, each pair's verdict and crossover, and what was shared.
    assert main(["compare", "--csv", csv, "--by", "recipe", "--n", "N", "--d", "D", "--loss", "L", "--target-n", "1e9",
          "--target-d", "2e10", "--bootstrap", str(MEMBERS)]) == 0
    text = capsys.readouterr().out
    assert "best: b" in text or "no clear winner: b leads" in text
    assert "a - b:" in text and "sharing:" in text and "N = 1e+09, D = 2e+10" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--where", "recipe=a"], "two or more recipes, got 1"),
    (["--where", "N=2000000.0"], "needs at least 7 runs over 3 sizes"),
    (["--eval-set", "eval"], "--metric bpb"),
    (["--tokenizer", "tok"], "--metric bpb"),
    (["--by", "nope"], "--by: column 'nope' is not in"),
    (["--loss", "nope"], "column 'nope' is not in"),
    (["--where", "recipe=c"], "no row of"),
    (["--target-n", "1e9"], "--target-n N with --target-d D"),
    # no members (or a handful): P(best) would read 1.00 with zero-width intervals
    (["--bootstrap", "0"], f"--bootstrap: 0; it must be >= {MIN_MEMBERS}"),
    (["--bootstrap", str(MIN_MEMBERS - 1)], f"--bootstrap: {MIN_MEMBERS - 1}; it must be >= {MIN_MEMBERS}"),
])
def test_bad_input_is_one_line_before_any_fit(tmp_path, capsys, args, message):
    csv = two_recipe_csv(tmp_path, eval={"a": "c4", "b": "pile"}, tok={"a": "bpe", "b": "bytes"})
    base = {"--by": "recipe", "--n": "N", "--d": "D", "--loss": "L", "--target-flops": "1e21"}
    for key in args[::2]:
        base.pop(key, None)
    if "--target-n" in args:
        base.pop("--target-flops")
    argv = ["compare", "--csv", csv, *[x for kv in base.items() for x in kv], *args]
    import time

    start = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert time.perf_counter() - start < 2  # refused before any fitting


def test_different_eval_sets_pass_in_bits_per_byte(tmp_path, capsys):
    csv = two_recipe_csv(tmp_path, eval={"a": "c4", "b": "pile"})
    assert main(["compare", "--csv", csv, "--by", "recipe", "--n", "N", "--d", "D", "--loss", "L", "--eval-set", "eval",
                 "--metric", "bpb", "--target-flops", "1e21", "--bootstrap", str(MEMBERS), "--share", "E", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # different texts: E is not shared, whatever was asked, and the output says why
    assert out["sharing"]["shared"] == [] and "different texts" in out["sharing"]["decided_by"]
    assert any("evaluation sets differ" in note for note in out["notes"])


def write_sweep(directory, law: dict, *, val_every: int, seed: int, bytes_per_token: float = 1.0) -> None:
    """A sweep directory whose ledger holds finished runs of a known law (as the simulated trainer records them)."""
    from proxyscale.models.spec import DataSpec, RunSpec
    from proxyscale.orchestrator.ledger import Ledger
    from tests.conftest import tiny_spec

    directory.mkdir()
    n, d, loss = ladder(law, seed=seed)
    ledger = Ledger(directory / "ledger.sqlite")
    for i, (ni, di, li) in enumerate(zip(n, d, loss, strict=True)):
        base = tiny_spec(seed=i)
        spec = RunSpec(model=base.model, train=base.train, data=DataSpec(val_every=val_every))
        row = {"run_id": spec.run_id(), "width": 32, "depth": 2, "lr": 1e-2, "batch_tokens": 1024, "schedule": "cosine",
               "parametrization": "mup", "seed": i, "n_params": int(ni), "n_params_nonembedding": int(ni),
               "tokens": int(di), "flops": 6 * ni * di}
        ledger.register("recipes", [spec], [row])
        ledger.finish(spec.run_id(), {"status": "finished", "reason": None, "tokens": int(di), "flops": 6 * ni * di,
                                      "initial_eval_loss": 5.5, "final_eval_loss": float(li), "best_eval_loss": float(li),
                                      "wall_seconds": 1.0, "train_seconds": 1.0, "data_hash": "x",
                                      "val_bytes_per_token": bytes_per_token}, {})
    ledger.close()


def test_sweep_directories_and_their_evaluation_sets(tmp_path, capsys):
    write_sweep(tmp_path / "a", LAW_A, val_every=20, seed=1)
    write_sweep(tmp_path / "b", LAW_B, val_every=10, seed=2, bytes_per_token=1.1)
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    # stdlib val_every 20 and 10 hold out different files: another evaluation text, refused in nats
    assert main(["compare", *dirs, "--target-flops", "1e21", "--bootstrap", str(MEMBERS)]) == 2
    assert "--metric bpb" in capsys.readouterr().err
    assert main(["compare", *dirs, "--target-flops", "1e21", "--bootstrap", str(MEMBERS), "--metric", "bpb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in out["groups"]] == ["a", "b"] and out["best"] == "b"
    # one directory split by a config key that does not vary there: one recipe, refused
    assert main(["compare", dirs[0], "--by", "data.val_every", "--target-flops", "1e21"]) == 2
    assert "takes one value" in capsys.readouterr().err
    assert main(["compare", dirs[0], "--by", "data.nope", "--target-flops", "1e21"]) == 2
    assert "not a config key" in capsys.readouterr().err


@pytest.mark.skipif(not GADRE.exists(), reason=f"{GADRE} is absent (published data, ../shared/data)")
def test_gadre_small_compares_three_data_sets_on_one_eval_set():
    table = pd.read_csv(GADRE)
    table = table[(table["eval"] == "c4_val") & (table["N_params"] < 4e8)]
    recipes = [Recipe.of(name, g["N_params"], g["D_tokens"], g["loss"]) for name, g in table.groupby("dataset")]
    fits = fit_recipes(recipes, law="overtraining", bootstrap=MEMBERS)
    # three sizes only: no backtest split is possible, and the output says so (factor 1)
    assert all(law.calibration.factor == 1.0 for law in fits.laws)
    result = compare_at(fits, Target(n=411_616_256, d=20 * 411_616_256))
    held = pd.read_csv(GADRE)
    held = held[(held["eval"] == "c4_val") & (held["N_params"] > 4e8) & (held["tokens_per_param_M"] == 20)]
    measured = dict(zip(held["dataset"], held["loss"], strict=True))
    # on c4's own validation text the model trained on c4 is lowest at 400M, and the laws say so with P > 0.9
    assert min(measured, key=measured.get) == "c4_original"
    assert result.best == "c4_original" and result.p_best > 0.9
    assert sum(g.p_best for g in result.groups) == pytest.approx(1.0)
    for group in result.groups:  # every interval holds its point, and the three are in the right region
        assert group.loss.low <= group.loss.value <= group.loss.high and 2.5 < group.loss.value < 3.6


def test_a_task_metric_compares_through_each_recipes_task_law():
    # The same task law for both (Err = 0.75 - 8 exp(-L), 1% noise), given as an accuracy (higher is better), compared
    # where the task law does not extrapolate (the largest run's compute: a is lower in loss there): the recipe lower
    # in loss is the better one in accuracy, and the output says so in its own terms.
    rng = np.random.default_rng(5)
    recipes = []
    for name, law, seed in (("a", LAW_A, 1), ("b", LAW_B, 2)):
        n, d, loss = ladder(law, seed=seed)
        error = 0.75 - 8.0 * np.exp(-loss) + rng.normal(0, 0.01, len(loss))
        recipes.append(Recipe.of(name, n, d, loss, np.clip(error, 0, 1)))
    fits = fit_recipes(recipes, bootstrap=MEMBERS, task_name="accuracy", higher_is_better=True)
    result = compare_at(fits, Target(flops=6 * SIZES[-1] ** 2 * 20))
    assert result.best == "a" and result.higher_is_better
    a, b = result.groups
    assert a.metric.value > b.metric.value and 0 <= a.metric.low <= a.metric.value <= a.metric.high <= 1
    assert a.loss.value < b.loss.value
    pair = result.pairs[0]
    assert pair.difference.value > 0 and pair.p_a_lower > 0.5  # accuracy a - b; P(a better)
    assert result.to_dict()["compared"] == "accuracy" and "metric" in result.to_dict()["groups"][0]


# ------------------------------------------------------------------------------------- regressions (review)

def test_too_few_members_are_refused_by_the_api_and_the_analysis(tmp_path):
    import proxyscale
    from proxyscale.analysis.compare import CompareInputError

    csv = two_recipe_csv(tmp_path)
    with pytest.raises(ValueError, match=f"--bootstrap: 0; it must be >= {MIN_MEMBERS}"):
        proxyscale.compare(csv, by="recipe", n="N", d="D", loss="L", target_flops=1e21, bootstrap=0)
    recipes = [Recipe.of("a", *ladder(LAW_A, seed=1)), Recipe.of("b", *ladder(LAW_B, seed=2))]
    with pytest.raises(CompareInputError, match="bootstrap: 0"):
        fit_recipes(recipes, bootstrap=0)
    # fits without members (the point alone) state no probability
    fits = known_fits(members=0)
    with pytest.raises(CompareInputError, match="0 members per recipe"):
        compare_at(fits, Target(n=1e9, d=2e10), window=(1e2, 1e26))
    from proxyscale.analysis.compare import decision_probability

    with pytest.raises(CompareInputError, match="0 members per recipe"):
        decision_probability(fits, Target(n=1e9, d=2e10))


def known_fits(members: int = MEMBERS):
    """Two chinchilla laws, set by hand, whose difference a - b along D = 20 N is + then - then +: crossings near
    C = 1.4e5 and 3.7e19 FLOPs (a's steep N term dies out first, then b's slow one falls below a's higher floor)."""
    from proxyscale.analysis.compare import RecipeFits, RecipeLaw, Sharing
    from proxyscale.analysis.predictive import Calibration

    rng = np.random.default_rng(0)
    laws = []
    for name, (big_a, e, alpha) in (("a", (10.0, 2.0, 0.5)), ("b", (3.0, 1.6, 0.1))):
        theta = np.array([np.log(big_a), np.log(1e-3), np.log(e), alpha, 0.3])
        boot = theta + np.outer(rng.normal(0, 1e-4, members), [0, 0, 1, 0, 0])  # a jitter of log E
        runs = Recipe.of(name, [1e6, 2e6, 4e6], [2e7, 4e7, 8e7], [3.0, 2.9, 2.8])
        laws.append(RecipeLaw(runs, theta, boot, Calibration.none("set by hand")))
    return RecipeFits("chinchilla", tuple(laws), Sharing((), "asked"), members)


def test_a_crossover_of_two_reads_the_side_of_the_crossing_nearest_the_target():
    from proxyscale.analysis.compare import crossover

    fits = known_fits()
    window = (1e2, 1e26)
    # target 1.2e20 FLOPs: the nearest crossing is the second; a is lower below it (between the two), b above
    late = crossover(fits, "a", "b", Target(n=1e9, d=2e10), window=window)
    assert late.crossings == 2 and abs(np.log10(late.flops.value / 3.7e19)) < 0.1, late
    assert (late.lower_before, late.lower_after) == ("a", "b")
    assert late.flops.low <= late.flops.value <= late.flops.high
    # target 1.2e6 FLOPs: the nearest crossing is the first; b is lower below it, a above
    early = crossover(fits, "a", "b", Target(n=100, d=2000), window=window)
    assert early.crossings == 2 and abs(np.log10(early.flops.value / 1.4e5)) < 0.1, early
    assert (early.lower_before, early.lower_after) == ("b", "a")
    assert "b lower below, a above" in early.line()


def test_a_csv_whose_cells_repeat_needs_where_or_eval_set(tmp_path, capsys):
    # each (recipe, N, D) cell twice: once on c4, once on pile (a higher loss); pooled, one E would be shared wrongly
    rows = []
    for name, law, seed in (("a", LAW_A, 1), ("b", LAW_B, 2)):
        n, d, loss = ladder(law, seed=seed)
        rows.append(pd.DataFrame({"recipe": name, "N": n, "D": d, "L": loss, "eval": "c4"}))
        rows.append(pd.DataFrame({"recipe": name, "N": n, "D": d, "L": loss * 1.2, "eval": "pile"}))
    path = tmp_path / "pooled.csv"
    pd.concat(rows).to_csv(path, index=False)
    base = ["compare", "--csv", str(path), "--by", "recipe", "--n", "N", "--d", "D", "--loss", "L", "--target-flops",
            "1e21", "--bootstrap", str(MEMBERS)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "--where COL=VALUE" in err and "--eval-set COL" in err and len(err.splitlines()) == 1, err
    # --eval-set names the column: each recipe then holds two sets, refused as such
    assert main([*base, "--eval-set", "eval"]) == 2
    assert "one recipe is one evaluation set" in capsys.readouterr().err
    # --where keeps one set: one row per cell, compared as usual
    assert main([*base, "--where", "eval=c4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not any("several rows per" in note for note in out["notes"])


def test_repeats_left_after_where_are_noted_and_share_no_e(tmp_path, capsys):
    # two seeds per cell on one evaluation set, narrowed by --where but with no --eval-set: a note, and E per recipe
    rows = []
    for name, law, seed in (("a", LAW_A, 1), ("b", LAW_B, 2)):
        for repeat in range(2):
            n, d, loss = ladder(law, seed=seed + 10 * repeat)
            rows.append(pd.DataFrame({"recipe": name, "N": n, "D": d, "L": loss, "eval": "c4"}))
    path = tmp_path / "seeds.csv"
    pd.concat(rows).to_csv(path, index=False)
    base = ["compare", "--csv", str(path), "--by", "recipe", "--n", "N", "--d", "D", "--loss", "L", "--target-flops",
            "1e21", "--bootstrap", str(MEMBERS), "--share", "E", "--json"]
    assert main([*base, "--where", "eval=c4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("several rows per (recipe, N, D) cell" in note for note in out["notes"]), out["notes"]
    assert out["sharing"]["shared"] == []

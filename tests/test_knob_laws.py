"""A law for every knob (issue 14): the simulated trainer's batch-size and depth effects, and the laws of
analysis/ recovering them (Step Law's eta_opt(N, D) and B_opt(D), the LR against the batch
size, the aspect ratio at equal N, the schedule ranking by the curve law), with what a sweep that does not
support a law gets instead (not_varied, best_run: never a fabricated law), and the laws wired into
`recommendation` on a simulated ledger."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from proxyscale.analysis.depth_law import fit_depth_law
from proxyscale.analysis.lr_batch_law import fit_power_law, lr_batch_evidence, lr_batch_trend
from proxyscale.analysis.schedule_ranking import rank_schedules
from proxyscale.models.flops import count_parameters
from proxyscale.models.simulated import (
    knob_factor,
    lr_factor,
    noise,
    optimal_batch,
    simulate_run,
    true_final_loss,
    true_loss,
)
from proxyscale.models.simulated import optimal_lr as true_lr
from proxyscale.models.spec import ModelSpec, RunSpec, SimulatedSpec, TrainSpec

SEQ = 256


def model(width: int, depth: int = 4) -> ModelSpec:
    return ModelSpec(width=int(width), depth=int(depth), n_heads=4, seq_len=SEQ)


def final(truth: SimulatedSpec, width: int, lr: float, batch: int, tokens: float, depth: int = 4) -> tuple[RunSpec, float]:
    """A finished cosine run's spec and final loss on the simulated trainer (one evaluation, at the end)."""
    batch = int(batch)
    tokens = int(round(tokens / batch)) * batch
    spec = RunSpec(model=model(width, depth), simulated=truth,
                   train=TrainSpec(lr=float(lr), batch_tokens=int(batch), tokens=tokens, warmup_steps=2,
                                   eval_interval_tokens=tokens))
    return spec, simulate_run(spec).final_eval_loss


# ------------------------------------------------------------------------------ the simulated truth


def test_the_default_truth_reports_what_it_did_before_and_keeps_its_run_ids():
    truth = SimulatedSpec(noise=0.01)
    spec, loss = final(truth, 64, 3e-3, 4096, 2**20)
    assert knob_factor(truth, spec) == pytest.approx(lr_factor(truth, 3e-3, 64))
    draw = noise(truth, spec, [spec.train.steps])[0]
    assert loss == pytest.approx(float(true_loss(truth, count_parameters(spec.model).total, 2**20, 3e-3, 64))
                                 * (1 + 0.01 * draw))
    # The new keys at their defaults are left out of the id, so simulated ledgers written before keep theirs.
    assert "batch_penalty" not in spec.to_dict()["simulated"]
    changed = dataclasses.replace(spec, simulated=dataclasses.replace(truth, batch_penalty=0.01))
    assert changed.to_dict()["simulated"]["batch_penalty"] == 0.01 and changed.run_id() != spec.run_id()


def test_the_truth_puts_the_optimal_batch_lr_and_aspect_ratio_where_it_says():
    truth = SimulatedSpec(batch_penalty=0.02, batch_optimal=4096, batch_tokens_exponent=0.5, knob_tokens_ref=2**24,
                          lr_tokens_exponent=0.3, lr_surge_batch=8192, depth_penalty=0.01, aspect_optimal=20,
                          batch_noise_scale=1e5, divergence_lr=10.0)
    batches = 2 ** np.arange(9, 16)
    tokens = 2**26
    losses = [final(truth, 64, true_lr(truth, 64, batch_tokens=b, tokens=tokens), b, tokens)[1] for b in batches]
    # B_opt(4 x D_ref) = 4096 * 2 = 8192 (the McCandlish term adds a little pull towards small batches).
    assert batches[int(np.argmin(losses))] == 8192 == optimal_batch(truth, tokens)
    lrs = true_lr(truth, 64, batch_tokens=8192, tokens=tokens) * 1.2 ** np.arange(-4, 5)
    losses = [final(truth, 64, lr, 8192, tokens)[1] for lr in lrs]
    assert int(np.argmin(losses)) == 4
    # The surge: the LR optimum peaks at B = lr_surge_batch, and is lr_optimal * (D / D_ref)^0.3 there.
    assert true_lr(truth, 64, batch_tokens=8192, tokens=tokens) == pytest.approx(1e-2 * 4**0.3)
    assert true_lr(truth, 64, batch_tokens=2048, tokens=tokens) == pytest.approx(true_lr(truth, 64, batch_tokens=32768,
                                                                                         tokens=tokens))
    # McCandlish: a larger batch at the same tokens learns less (with the bowl and the LR penalty off).
    plain = SimulatedSpec(batch_noise_scale=1e5)
    assert final(plain, 64, 1e-2, 65536, 2**24)[1] > final(plain, 64, 1e-2, 4096, 2**24)[1]
    # Depth: at (nearly) equal N the aspect ratio 20 beats 80 and 5 by the set penalty.
    near = final(truth, 80, 1e-2, 8192, tokens, depth=4)[0]
    assert knob_factor(truth, near) == pytest.approx(knob_factor(truth, dataclasses.replace(
        near, model=model(80, 4))))
    assert knob_factor(truth, final(truth, 160, 1e-2, 8192, tokens, depth=2)[0]) > knob_factor(truth, near)


# ------------------------------------------------------------------------------ LR and batch size

LR_STEPS = 2.0 ** (np.arange(-6, 7) / 3)
BATCHES = (512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
TOKENS = (5e6, 1e7, 2e7, 4e7)


def step_law_sweep(truth: SimulatedSpec, widths=(64, 128), batches=BATCHES, tokens_grid=TOKENS, lrs=1e-2 * LR_STEPS):
    rows = []
    for width in widths:
        for tokens in tokens_grid:
            for batch in batches:
                for lr in lrs:
                    spec, loss = final(truth, width, lr, batch, tokens)
                    rows.append((count_parameters(spec.model).total, tokens, width, lr, batch, loss))
    return tuple(np.array(column) for column in zip(*rows, strict=True))


STEP_TRUTH = SimulatedSpec(noise=0.001, lr_tokens_exponent=0.3, batch_penalty=0.02, batch_optimal=4096,
                           batch_tokens_exponent=0.5, knob_tokens_ref=2e7, divergence_lr=10.0)


@pytest.fixture(scope="module")
def step_sweep():
    return step_law_sweep(STEP_TRUTH)


def test_step_law_recovers_eta_opt_in_d_under_transfer_and_b_opt_in_d(step_sweep):
    n, d, width, lr, batch, loss = step_sweep
    evidence = lr_batch_evidence(n, d, width, lr, batch, loss, transfer=True, bootstrap=300)
    # muP-like truth (the LR optimum does not move with width): the drift allows transfer, so N is left out.
    assert evidence.lr_transfer and evidence.drift[1].low <= 0 <= evidence.drift[1].high
    law = evidence.lr_law
    assert law.features == ("D",) and not law.at_bound
    exponent = law.exponents["D"]
    assert exponent.low <= 0.3 <= exponent.high and exponent.high - exponent.low < 0.2
    predicted = law.predict(D=8e7)
    truth_there = true_lr(STEP_TRUTH, 64, tokens=8e7)
    assert predicted.low <= truth_there <= predicted.high
    batch_law = evidence.batch_law
    assert batch_law.exponents["D"].low <= 0.5 <= batch_law.exponents["D"].high
    at = batch_law.predict(D=8e7)
    assert at.low <= optimal_batch(STEP_TRUTH, 8e7) <= at.high
    # The surge is off in this truth: the optimal LR does not move with the batch size.
    assert evidence.trend.verdict == "flat"


def test_step_law_keeps_n_in_the_lr_law_under_sp():
    truth = dataclasses.replace(STEP_TRUTH, lr_width_exponent=-1.0, lr_optimal=2e-2)
    n, d, width, lr, batch, loss = step_law_sweep(truth, widths=(64, 128, 256), batches=(2048, 4096, 8192),
                                                  tokens_grid=(1e7, 2e7, 4e7), lrs=1e-2 * 2.0 ** (np.arange(-9, 7) / 3))
    evidence = lr_batch_evidence(n, d, width, lr, batch, loss, transfer=False, bootstrap=300)
    law = evidence.lr_law
    assert law.features == ("N", "D") and not evidence.lr_transfer
    # The truth is 1/width; in N (about width^2 here, the embedding aside) the local exponent is:
    widths = np.array([64, 128, 256])
    ns = np.array([count_parameters(model(w)).total for w in widths])
    local = np.polyfit(np.log(ns), np.log(1.0 / widths), 1)[0]
    assert law.exponents["N"].low <= local <= law.exponents["N"].high
    assert law.exponents["D"].low <= 0.3 <= law.exponents["D"].high


@pytest.mark.parametrize("surge, verdict", [(4096.0, "rises then falls"), (0.0, "flat"), (1e7, "rises")])
def test_the_optimal_lr_against_the_batch_size(surge, verdict):
    truth = SimulatedSpec(noise=0.0005, lr_surge_batch=surge, divergence_lr=10.0)
    rows = []
    for batch in (256, 1024, 4096, 16384, 65536):
        centre = true_lr(truth, 64, batch_tokens=batch)
        for k in range(-6, 7):
            lr = centre * 1.3 ** (k + 0.37)
            rows.append((batch, lr, final(truth, 64, lr, batch, 2**23)[1]))
    batch, lr, loss = map(np.array, zip(*rows, strict=True))
    trend = lr_batch_trend(np.zeros(len(batch)), batch, lr, loss, bootstrap=300)
    assert trend.verdict.startswith(verdict), trend
    for b, interval in zip(trend.batches, trend.lr_opt, strict=True):
        truth_here = true_lr(truth, 64, batch_tokens=b)
        assert interval.low <= truth_here * 1.1 and truth_here <= interval.high * 1.1
    if surge == 4096.0:
        assert 2048 <= trend.surge <= 8192


# ------------------------------------------------------------------------------------------ depth


def equal_n_shapes(n_target: float, depths) -> list[tuple[int, int]]:
    shapes = []
    for depth in depths:
        width = min(range(4, 4000, 4), key=lambda w: abs(np.log(count_parameters(model(w, depth)).total / n_target)))
        shapes.append((width, depth))
    return shapes


def depth_sweep(truth: SimulatedSpec, depths=(2, 4, 8, 16, 32), n_targets=(2e6, 8e6), tokens=2**24):
    rows = []
    for n_target in n_targets:
        for width, depth in equal_n_shapes(n_target, depths):
            spec, loss = final(truth, width, 1e-2, 2**14, tokens, depth=depth)
            rows.append((count_parameters(spec.model).total, tokens, width, depth, loss))
    return tuple(np.array(column) for column in zip(*rows, strict=True))


def test_the_depth_law_recovers_the_optimal_aspect_ratio():
    truth = SimulatedSpec(noise=0.002, depth_penalty=0.01, aspect_optimal=24.0)
    n, d, width, depth, loss = depth_sweep(truth)

    def size_law(n_params, tokens):
        return float(np.log(true_loss(truth, n_params, tokens, truth.lr_optimal, 32)))

    law, why = fit_depth_law(n, d, width, depth, loss, size_law=size_law, bootstrap=300)
    assert law.bracketed and law.aspect.low <= 24.0 <= law.aspect.high and law.aspect.high / law.aspect.low < 1.5
    assert law.curvature.low <= 0.01 <= law.curvature.high
    assert law.depths == (2, 4, 8, 16, 32) and "2 equal-N group(s)" in why
    # Optimum outside the aspect ratios tried: a parabola's vertex there is only a bound.
    edge = SimulatedSpec(noise=0.002, depth_penalty=0.01, aspect_optimal=2000.0)
    n, d, width, depth, loss = depth_sweep(edge)
    law, _ = fit_depth_law(n, d, width, depth, loss, bootstrap=100)
    assert law is not None and not law.bracketed


# ---------------------------------------------------------------------------------------- schedule


def test_the_curve_law_ranks_schedules_at_the_target_like_the_truth():
    from proxyscale.analysis.curve_law import fit_curve_law
    from tests.test_curve_law import as_curve, ladder_specs

    truth = SimulatedSpec(noise=0.002)
    curves = [as_curve(spec, simulate_run(spec)) for spec in ladder_specs(truth, widths=(64, 128, 256))]
    fit = fit_curve_law(curves, bootstrap=100, seed=0)
    n, tokens, batch = 3e7, 2**14 * 8000, 2**14
    ranking = rank_schedules(fit, n, tokens, batch_tokens=batch)
    shapes = {
        "cosine": TrainSpec(schedule="cosine", min_lr_ratio=0.1),
        "wsd (1-sqrt cooldown 0.2)": TrainSpec(schedule="wsd", decay_fraction=0.2, decay_shape="sqrt", min_lr_ratio=0.0),
        "constant": TrainSpec(schedule="constant"),
    }
    true = {name: true_final_loss(truth, n, tokens, dataclasses.replace(train, batch_tokens=batch, warmup_steps=0,
                                                                        tokens=batch * 8000))
            for name, train in shapes.items()}
    for name in shapes:
        difference = true[name] - true["cosine"]
        interval = ranking.vs_cosine[name]
        assert interval.low - 2e-3 <= difference <= interval.high + 2e-3, (name, difference, interval)
    # This truth's cooldowns gain ~0.3 nats over a cosine to 10%; a constant LR without one gains nothing.
    assert ranking.vs_cosine["wsd (1-sqrt cooldown 0.2)"].high < -0.1
    assert ranking.best not in ("cosine", "constant") and min(true, key=true.get) not in ("cosine", "constant")


# ------------------------------------------------------------------------------- what is not a law


def test_a_knob_on_one_value_or_too_few_values_gets_no_law():
    truth = dataclasses.replace(STEP_TRUTH, noise=0.0)
    # One batch size, one LR: no LR law, no batch law.
    n, d, width, lr, batch, loss = step_law_sweep(truth, batches=(4096,), lrs=(1e-2,))
    evidence = lr_batch_evidence(n, d, width, lr, batch, loss, transfer=True, bootstrap=50)
    assert evidence.lr_law is None and "not varied" in evidence.lr_reason
    assert evidence.batch_law is None and "not varied" in evidence.batch_reason and evidence.trend is None
    # Two LRs and two batch sizes: no optimum can be located, so no law.
    n, d, width, lr, batch, loss = step_law_sweep(truth, batches=(2048, 4096), lrs=(5e-3, 1e-2))
    evidence = lr_batch_evidence(n, d, width, lr, batch, loss, transfer=True, bootstrap=50)
    assert evidence.lr_law is None and "3+ LRs" in evidence.lr_reason
    assert evidence.batch_law is None and "3+" in evidence.batch_reason
    # An LR grid entirely below the optimum: the edge of the grid is only a bound.
    n, d, width, lr, batch, loss = step_law_sweep(truth, batches=(4096,), lrs=(1e-4, 2e-4, 4e-4))
    evidence = lr_batch_evidence(n, d, width, lr, batch, loss, transfer=True, bootstrap=50)
    assert evidence.lr_law is None and "edge of the LR grid" in evidence.lr_reason
    # One token budget: optima located, but no law in D.
    n, d, width, lr, batch, loss = step_law_sweep(truth, tokens_grid=(1e7,))
    evidence = lr_batch_evidence(n, d, width, lr, batch, loss, transfer=True, bootstrap=50)
    assert evidence.lr_law is None and "no law in D" in evidence.lr_reason and evidence.batch_law is None
    # Depth on one value, and on two.
    d_truth = SimulatedSpec(depth_penalty=0.01)
    for depths, message in (((4,), "every run has depth 4"), ((4, 8), "needs 3+ depths")):
        n, d, width, depth, loss = depth_sweep(d_truth, depths=depths)
        law, why = fit_depth_law(n, d, width, depth, loss, bootstrap=50)
        assert law is None and message in why


def test_an_exponent_at_its_bound_is_reported_as_such():
    d = np.geomspace(1e6, 1e8, 6)
    law = fit_power_law({"D": d}, 1e-30 * d**5.0, name="B_opt", bootstrap=50)
    assert law.at_bound == ("D",) and law.exponents["D"].value == pytest.approx(3.0)
    assert "AT ITS BOUND" in law.formula() and law.as_dict()["at_bound"] == ["D"]
    fine = fit_power_law({"D": d}, 0.5 * d**0.5, name="B_opt", bootstrap=50)
    assert fine.at_bound == () and "BOUND" not in fine.formula()


# ------------------------------------------------------------------------------- recommend


def simulated_ledger(path, truth: SimulatedSpec, family: ModelSpec, cells) -> None:
    """A ledger of simulated runs: cells are (width, depth, tokens, lr, batch[, schedule]); every run evaluates
    8 times; wsd runs cool down over their last 20% (1 - sqrt)."""
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs = []
    for width, depth, tokens, lr, batch, *schedule in cells:
        tokens = int(round(tokens / batch)) * batch
        shape = {"schedule": schedule[0], "decay_shape": "sqrt", "min_lr_ratio": 0.0} if schedule else {}
        specs.append(RunSpec(model=dataclasses.replace(family, width=int(width), depth=int(depth)), simulated=truth,
                             train=TrainSpec(lr=float(lr), batch_tokens=int(batch), tokens=tokens, warmup_steps=5,
                                             eval_interval_tokens=tokens // 8, **shape)))
    specs = list({spec.run_id(): spec for spec in specs}.values())
    ledger = Ledger(path / "ledger.sqlite")
    rows = plan_rows(specs)
    ledger.register("knobs", specs, rows)
    for spec, row in zip(specs, rows, strict=True):
        result = simulate_run(spec)
        ledger.add_steps(row["run_id"], [{"step": s, "tokens": t, "lr": None, "train_loss": None, "eval_loss": loss,
                                          "probes_json": None} for s, t, loss in result.eval_curve])
        ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": result.tokens, "flops": result.flops,
                                      "initial_eval_loss": result.initial_eval_loss,
                                      "final_eval_loss": result.final_eval_loss, "best_eval_loss": result.best_eval_loss,
                                      "wall_seconds": 0.0, "train_seconds": 0.0, "data_hash": "simulated"}, {})
    ledger.close()


def test_recommend_gives_lr_batch_depth_and_schedule_from_their_laws(tmp_path):
    from proxyscale.orchestrator.advice import recommendation
    from proxyscale.orchestrator.ledger import Ledger

    truth = SimulatedSpec(noise=0.001, lr_tokens_exponent=0.3, batch_penalty=0.02, batch_optimal=16384,
                          batch_tokens_exponent=0.5, knob_tokens_ref=2**24, depth_penalty=0.01, aspect_optimal=16.0,
                          divergence_lr=10.0)
    family = ModelSpec(width=128, depth=4, n_heads=4, seq_len=SEQ, parametrization="mup", base_width=64)
    lrs = 1e-2 * 1.5 ** np.arange(-3, 4)
    cells = [(w, 4, d, lr, 16384) for w in (64, 128, 256) for d in (2**23, 2**24, 2**25) for lr in lrs]
    cells += [(128, 4, d, lr, b) for d in (2**23, 2**24, 2**25) for lr in lrs for b in (4096, 8192, 32768, 65536)]
    cells += [(w, dep, d, lr, 16384) for d in (2**23, 2**24) for w, dep in equal_n_shapes(
        count_parameters(family).total, (2, 4, 8, 16)) for lr in lrs[2:5]]
    cells += [(w, 4, d, 1e-2, 16384, "wsd") for w in (64, 128, 256) for d in (2**23, 2**25)]
    simulated_ledger(tmp_path, truth, family, cells)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    evidence: dict = {}
    advice = recommendation({"model": dataclasses.asdict(family)}, ledger, target_flops=3e17, bootstrap=200,
                            evidence=evidence)
    ledger.close()
    d_opt = advice["tokens"]["value"]
    lr, batch, depth = advice["lr"], advice["batch_size"], advice["depth"]
    # muP: the LR law in width is transfer (the sweep's drift allows it), Step Law in D at D_opt.
    assert lr["basis"] == "transfer" and "replaced by transfer" in lr["why"] and "D^+0." in lr["why"]
    assert lr["low"] <= true_lr(truth, 64, tokens=d_opt) <= lr["high"]
    assert batch["basis"] == "fitted_law" and "B_opt" in batch["why"] and batch["value"] % SEQ == 0
    assert batch["low"] <= optimal_batch(truth, d_opt) <= batch["high"]
    assert depth["basis"] == "fitted_law" and "aspect ratio" in depth["why"]
    # (Within its interval when N is corrected by the truth: test_the_depth_law_recovers_the_optimal_aspect_ratio;
    # here by the fitted L(N, D), whose small error moves a flat optimum by a few %.)
    assert evidence["depth"].aspect.value == pytest.approx(16.0, rel=0.1)
    assert advice["width"]["value"] / depth["value"] == pytest.approx(16.0, rel=0.5)
    # Cosine and WSD curves: the curve law ranks the schedules at the target like the truth (cooldowns win).
    assert advice["schedule"]["basis"] == "fitted_law" and "vs cosine" in advice["schedule"]["why"]
    assert advice["schedule"]["value"] not in ("cosine", "constant")
    assert evidence["schedule"].vs_cosine[advice["schedule"]["value"]].high < 0
    for key in ("lr", "batch_size", "depth"):
        assert advice[key]["low"] <= advice[key]["value"] <= advice[key]["high"], key
    summary = advice["knob_laws"]
    exponent = summary["lr_batch"]["lr_law"]["exponents"]["D"]
    assert exponent["low"] <= 0.3 <= exponent["high"]
    __import__("json").dumps(summary)  # the JSON of `recommend --json`

    # The report: a figure per fitted law (points, fit, band, target).
    import yaml

    from proxyscale.orchestrator.report import build_report

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": dataclasses.asdict(family),
                                                          "trainer": {"kind": "simulated"}}))
    report, figures, _ = build_report(tmp_path, target_flops=3e17, bootstrap=100)
    text = report.read_text()
    assert "## A law for every knob" in text and "replaced by muP transfer" in text and "best: **wsd" in text
    names = {f.name for f in figures}
    assert {"law_lr.png", "law_batch.png", "law_lr_vs_batch.png", "law_depth.png", "law_schedule.png"} <= names
    assert all((tmp_path / "report" / name).stat().st_size > 10_000 for name in names)


def test_recommend_takes_the_knobs_it_cannot_fit_from_another_sweep_of_the_family(tmp_path):
    """--knobs-from: a ladder that varies only N and D borrows lr and batch_size from an LR x batch sweep,
    evaluated at the ladder's own N_opt and D_opt; a sweep of another family is refused."""
    from proxyscale.models.spec import SpecError
    from proxyscale.orchestrator.advice import recommendation
    from proxyscale.orchestrator.family import check_same_family, family_values
    from proxyscale.orchestrator.ledger import Ledger

    truth = SimulatedSpec(noise=0.001, lr_tokens_exponent=0.3, batch_penalty=0.02, batch_optimal=16384,
                          batch_tokens_exponent=0.5, knob_tokens_ref=2**24, divergence_lr=10.0)
    family = ModelSpec(width=128, depth=4, n_heads=4, seq_len=SEQ, parametrization="mup", base_width=64)
    ladder, knobs = tmp_path / "ladder", tmp_path / "lr_batch"
    ladder.mkdir(), knobs.mkdir()
    simulated_ledger(ladder, truth, family, [(w, 4, d, 1e-2, 16384) for w in (64, 128, 256, 512)
                                             for d in (2**22, 2**23, 2**24, 2**25)])
    lrs = 1e-2 * 1.5 ** np.arange(-3, 4)
    cells = [(w, 4, d, lr, 16384) for w in (64, 128, 256) for d in (2**23, 2**24, 2**25) for lr in lrs]
    cells += [(128, 4, d, lr, b) for d in (2**23, 2**24, 2**25) for lr in lrs for b in (4096, 8192, 32768, 65536)]
    simulated_ledger(knobs, truth, family, cells)
    plain = {"model": dataclasses.asdict(family)}
    ledger, source = Ledger(ladder / "ledger.sqlite"), Ledger(knobs / "ledger.sqlite")
    alone = recommendation(plain, ledger, target_flops=3e16, bootstrap=200)
    both = recommendation(plain, ledger, target_flops=3e16, bootstrap=200, knob_sources=[(str(knobs), plain, source)])
    ledger.close(), source.close()
    assert alone["lr"]["basis"] == "not_varied" and alone["batch_size"]["basis"] == "not_varied"
    lr, batch = both["lr"], both["batch_size"]
    assert lr["basis"] == "transfer" and batch["basis"] == "fitted_law"
    assert lr["source"] == batch["source"] == str(knobs) and lr["why"].startswith(f"from {knobs}")
    d_opt = both["tokens"]["value"]  # the ladder's D_opt, not the source's
    assert d_opt == alone["tokens"]["value"]
    # (The Step Law's coverage is test_step_law_recovers_eta_opt_in_d_under_transfer_and_b_opt_in_d; its D
    # exponent there is 0.274 [0.257, 0.300] for a truth of 0.3, so 8x beyond the sweep's D it can sit a
    # percent off. Here: the value at the ladder's D_opt, not the source's.)
    assert lr["value"] == pytest.approx(true_lr(truth, 64, tokens=d_opt), rel=0.05)
    assert batch["low"] <= optimal_batch(truth, d_opt) <= batch["high"]
    assert both["depth"]["basis"] == "not_varied" and str(knobs) in both["knob_sources"]
    other = tmp_path / "other"
    other.mkdir()
    simulated_ledger(other, truth, dataclasses.replace(family, seq_len=128), [(64, 4, 2**22, 1e-2, 16384)])
    with Ledger(ladder / "ledger.sqlite") as a, Ledger(other / "ledger.sqlite") as b, \
            pytest.raises(SpecError, match=r"model.seq_len = 128 there, 256 here"):
        check_same_family(family_values(a), family_values(b), "runs/other")
    # A source under another parametrisation lends no LR or batch size, and says why.
    sp = tmp_path / "sp"
    sp.mkdir()
    simulated_ledger(sp, truth, dataclasses.replace(family, parametrization="sp"), cells)
    with Ledger(ladder / "ledger.sqlite") as a, Ledger(sp / "ledger.sqlite") as b:
        lent = recommendation(plain, a, target_flops=3e16, bootstrap=50, knob_sources=[(str(sp), plain, b)])
    assert lent["lr"]["basis"] == "not_varied" and "model.parametrization = 'sp' there, 'mup' here" in lent["lr"]["why"]
    # The report draws the borrowed laws too, with the ladder's target marked.
    import yaml

    from proxyscale.orchestrator.report import build_report

    (ladder / "config.yaml").write_text(yaml.safe_dump(plain | {"trainer": {"kind": "simulated"}}))
    source = Ledger(knobs / "ledger.sqlite")
    report, figures, _ = build_report(ladder, target_flops=3e16, bootstrap=50, knob_sources=[(str(knobs), plain, source)])
    source.close()
    text = report.read_text()
    assert f"### From `{knobs}`" in text and "| batch_size |" in text and "from " + str(knobs) in text
    assert {"law_lr_batch_batch.png", "law_lr_batch_lr.png"} <= {f.name for f in figures}


def test_three_lrs_per_batch_size_still_get_an_interval_from_the_noise_of_the_surface():
    """With 3 LRs per batch size a parabola per batch leaves no residual: the noise comes from a quadratic
    surface over (log LR, log B), so the LR_opt intervals have a width instead of collapsing to a point."""
    from proxyscale.analysis.lr_grid import surface_relative_noise

    rng = np.random.default_rng(3)
    batch = np.repeat([64.0, 128.0, 256.0, 512.0], 3)
    centre = 5e-3 * (batch / 128) ** 0.5
    lr = centre * np.tile([0.7, 1.0, 1.4], 4)
    clean = 2.0 + 0.05 * np.log(lr / centre) ** 2 + 0.02 * np.log(batch / 128) ** 2
    loss = clean * (1 + 0.003 * rng.standard_normal(len(batch)))
    assert 0.001 < surface_relative_noise([lr], [batch], [loss]) < 0.01
    assert np.isnan(surface_relative_noise([lr[:6]], [batch[:6]], [loss[:6]]))  # 6 points, 6 coefficients
    trend = lr_batch_trend(np.zeros(len(batch)), batch, lr, loss, bootstrap=200)
    assert trend is not None and all(i.high > i.low for i in trend.lr_opt)
    assert trend.noise_source == "quadratic surface over (LR, B)" and 0.001 < trend.noise < 0.01
    assert trend.slope.low < 0.5 < trend.slope.high  # the truth: LR_opt as sqrt(B)

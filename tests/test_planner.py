"""The simulated trainer and the planner: proposals stay in budget, space and cost cap, avoid predicted
divergence, are reproducible, and the closed loop converges on an easy ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxyscale.analysis.laws import compute_optimal_allocation
from proxyscale.analysis.planner import Candidate, Observation, PlannerSettings, estimate_target, initial_design, is_safe, propose
from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.simulated import divergence_lr, optimal_lr, simulate_run, true_loss
from proxyscale.models.spec import ModelSpec, RunSpec, SimulatedSpec, SpecError, TrainSpec

WIDTHS = (64, 96, 128, 192, 256, 384)
LRS = (3e-3, 1e-2, 3e-2, 1e-1)


def ladder(lrs=(1e-2,)) -> list[Candidate]:
    cells = []
    for width in WIDTHS:
        model = ModelSpec(width=width, depth=4, n_heads=4, seq_len=256)
        n, per_token = count_parameters(model).total, flops_per_token(model)
        for flops in np.geomspace(1e14, 1e16, 6):
            tokens = flops / per_token
            if 2 <= tokens / n <= 400:
                for lr in lrs:
                    cells.append(Candidate(f"w{width}-c{flops:.2g}-lr{lr:g}", width, float(n), float(tokens),
                                           float(flops), lr))
    return cells


def observe(truth: SimulatedSpec, c: Candidate, rng) -> Observation:
    if c.lr > divergence_lr(truth, c.width):
        return Observation(c.key, c.width, c.n_params, c.tokens, c.flops, c.lr, "diverged", None)
    loss = float(true_loss(truth, c.n_params, c.tokens, c.lr, c.width)) * (1 + truth.noise * rng.standard_normal())
    return Observation(c.key, c.width, c.n_params, c.tokens, c.flops, c.lr, "finished", loss)


def test_simulated_run_reports_the_ground_truth_and_diverges_above_the_threshold():
    truth = SimulatedSpec(lr_width_exponent=-1.0, divergence_lr=0.05, lr_penalty=0.05)
    spec = RunSpec(model=ModelSpec(width=64, depth=2, n_heads=2, seq_len=64),
                   train=TrainSpec(tokens=65536, batch_tokens=2048, warmup_steps=2, eval_interval_tokens=16384,
                                   lr=1e-2),
                   simulated=truth)
    records = []
    result = simulate_run(spec, on_record=records.append)
    n = count_parameters(spec.model).total
    assert result.status == "finished"
    assert result.final_eval_loss == pytest.approx(float(true_loss(truth, n, 65536, 1e-2, 64)), rel=1e-12)
    assert [r.tokens for r in records] == [0, 16384, 32768, 49152, 65536]
    assert result.flops == pytest.approx(flops_per_token(spec.model) * 65536)
    # Under SP-like drift the optimum and the threshold halve when the width doubles.
    assert optimal_lr(truth, 64) == pytest.approx(truth.lr_optimal / 2)
    wide = RunSpec(model=ModelSpec(width=256, depth=2, n_heads=2, seq_len=64), train=spec.train,
                   simulated=truth)
    assert divergence_lr(truth, 256) == pytest.approx(0.00625)
    assert simulate_run(wide).status == "diverged"
    # Noise is a pure function of the run: the same spec reports the same losses.
    noisy = RunSpec(model=spec.model, train=spec.train, simulated=SimulatedSpec(noise=0.01))
    assert simulate_run(noisy).final_eval_loss == simulate_run(noisy).final_eval_loss
    assert simulate_run(noisy).final_eval_loss != simulate_run(RunSpec(model=spec.model, train=spec.train,
                                                                      simulated=SimulatedSpec())).final_eval_loss


def test_simulated_spec_changes_the_run_id_but_real_ids_are_unchanged():
    real = RunSpec()
    assert "simulated" not in real.to_dict()
    assert RunSpec(simulated=SimulatedSpec()).run_id() != real.run_id()
    assert RunSpec.from_dict(RunSpec(simulated=SimulatedSpec(noise=0.1)).to_dict()).simulated.noise == 0.1
    with pytest.raises(SpecError, match="trainer.alpha"):
        SimulatedSpec(alpha=-0.1)


def test_initial_design_spreads_over_n_and_d_cheaply():
    cells = ladder()
    design = initial_design(cells, 6)
    assert len(design) == 6
    assert len({c.n_params for c in design}) >= 3 and len({c.tokens for c in design}) >= 3
    assert sum(c.flops for c in design) < 0.2 * sum(c.flops for c in cells)


def _observed(truth, cells, seed=0) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [observe(truth, c, rng) for c in initial_design(cells, 6)]


@pytest.mark.parametrize("batch", [1, 4])
def test_proposals_respect_budget_space_and_cost_cap(batch):
    truth = SimulatedSpec(noise=0.003)
    cells = ladder(LRS)
    observations = _observed(truth, cells)
    cap = 2e15
    budget = 3e15
    settings = PlannerSettings(target_flops=1e18, budget_flops=budget, batch=batch, max_run_flops=cap, ensemble=32)
    proposals = propose(cells, observations, settings)
    assert 1 <= len(proposals) <= batch
    keys = {c.key for c in cells}
    seen = {o.key for o in observations}
    assert all(p.candidate.key in keys and p.candidate.key not in seen for p in proposals)
    assert all(p.candidate.flops <= cap for p in proposals)
    assert sum(p.candidate.flops for p in proposals) <= budget
    assert all(p.reason for p in proposals)
    assert len({p.candidate.key for p in proposals}) == len(proposals)


def test_same_seed_same_plan_and_pending_runs_are_not_proposed_again():
    truth = SimulatedSpec(noise=0.003)
    cells = ladder()
    observations = _observed(truth, cells)
    settings = PlannerSettings(target_flops=1e18, budget_flops=1e17, batch=3, ensemble=32, seed=7)
    first = propose(cells, observations, settings)
    second = propose(cells, observations, settings)
    assert [p.candidate.key for p in first] == [p.candidate.key for p in second]
    assert [p.score for p in first] == [p.score for p in second]
    pending = [Observation(p.candidate.key, p.candidate.width, p.candidate.n_params, p.candidate.tokens,
                           p.candidate.flops, p.candidate.lr, "pending") for p in first]
    again = propose(cells, observations + pending, settings)
    assert not {p.candidate.key for p in again} & {p.candidate.key for p in first}


def test_no_proposal_at_or_above_an_lr_that_diverged_at_that_width_or_smaller():
    truth = SimulatedSpec(noise=0.003)
    cells = ladder(LRS)
    observations = _observed(truth, cells)
    failed = next(c for c in cells if c.width == 96 and c.lr == 3e-2)
    observations.append(Observation(failed.key, 96, failed.n_params, failed.tokens, failed.flops, 3e-2, "diverged"))
    settings = PlannerSettings(target_flops=1e18, budget_flops=1e18, batch=40, ensemble=32, lr_fraction=0.5)
    proposals = propose(cells, observations, settings)
    assert proposals
    assert all(p.candidate.lr < 3e-2 for p in proposals if p.candidate.width >= 96)
    assert not is_safe(next(c for c in cells if c.width == 384 and c.lr == 1e-1), observations)
    assert is_safe(next(c for c in cells if c.width == 64 and c.lr == 3e-2), observations)


def test_lr_exploration_brackets_an_unbracketed_optimum():
    truth = SimulatedSpec(noise=0.0, lr_optimal=3e-2, lr_penalty=0.05)
    cells = ladder(LRS)
    observations = [observe(truth, c, np.random.default_rng(0)) for c in initial_design(cells, 6, lr=1e-2)]
    settings = PlannerSettings(target_flops=1e18, budget_flops=1e18, batch=4, ensemble=32, lr_fraction=0.5)
    proposals = propose(cells, observations, settings)
    lr_runs = [p for p in proposals if p.reason.startswith("LR:")]
    assert lr_runs and all(p.candidate.lr in (3e-2, 3e-3) for p in lr_runs)


def test_closed_loop_converges_on_an_easy_ground_truth():
    truth = SimulatedSpec(noise=0.001)
    cells = ladder()
    target = 100 * max(c.flops for c in cells)
    n_true, d_true = compute_optimal_allocation(target, A=truth.A, B=truth.B, alpha=truth.alpha, beta=truth.beta)
    loss_true = truth.E + truth.A / n_true**truth.alpha + truth.B / d_true**truth.beta
    rng = np.random.default_rng(0)
    observations = [observe(truth, c, rng) for c in initial_design(cells, 6)]
    grid = sum(c.flops for c in cells)
    for _ in range(len(cells)):
        estimate = estimate_target(observations, target, bootstrap=32)
        if (abs(estimate.n_opt.value / n_true - 1) < 0.1 and abs(estimate.loss.value / loss_true - 1) < 0.005):
            break
        spent = sum(o.flops for o in observations)
        settings = PlannerSettings(target_flops=target, budget_flops=grid - spent, ensemble=32)
        proposals = propose(cells, observations, settings, estimate=estimate)
        assert proposals
        observations += [observe(truth, p.candidate, rng) for p in proposals]
    else:
        pytest.fail("the loop spent the whole grid without reaching the truth")
    assert sum(o.flops for o in observations) < 0.7 * grid  # about 0.6 here; the grid needs all of it
    assert math.isfinite(estimate.n_opt.low) and estimate.n_opt.low <= estimate.n_opt.high

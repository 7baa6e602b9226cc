"""The planner on curves and forks (analysis/curve_planner.py) against a SIMULATED truth."""

from __future__ import annotations

import numpy as np

from proxyscale.analysis.curve_planner import KINDS, available, fit_curves, propose_actions
from tests.benchmarks.bench_planner import TRUTHS, World, fork_actions, ladder, settings_for


def _setup():
    cells = ladder()
    actions = fork_actions(cells)
    target = 100 * max(c.per_token * c.steps * 32768 for c in cells)
    return actions, target


def test_actions_wait_for_their_parent_and_every_reason_names_its_kind():
    actions, target = _setup()
    assert {a.kind for a in actions} == {"new_width", "extend", "cooldown"} and set(KINDS) >= {a.kind for a in actions}
    first = available(actions, {}, set(), np.inf)
    assert first and all(a.parent is None for a in first)  # nothing forks from a run not yet bought
    proposals = propose_actions(actions, {}, None, settings_for(target, 1e17, 0, 16))
    assert proposals[0].action.kind == "new_width" and "design" in proposals[0].reason


def test_design_then_information_recovers_the_truth_with_a_fraction_of_the_grid():
    actions, target = _setup()
    world = World(TRUTHS["chinchilla"], 0, target)
    grid_flops = 1.4e17
    curves, status, spent, estimate, kinds = [], {}, 0.0, None, []
    while spent < 0.05 * grid_flops:
        settings = settings_for(target, grid_flops - spent, 0, 16)
        [proposal] = propose_actions(actions, status, estimate, settings)
        parent = proposal.action.parent
        assert parent is None or status.get(parent) == "finished"
        assert proposal.action.kind in proposal.reason
        kinds.append(proposal.action.kind)
        curves.append(world.observe(proposal.action))
        status[proposal.action.key] = "finished"
        spent += proposal.action.flops
        estimate = fit_curves(curves, settings)
    assert {"new_width", "cooldown"} <= set(kinds)
    truth = world.optimum["wsd"]
    assert estimate is not None
    # At 5% of the grid's compute: N_opt(C*) within 10% and L(C*) within 2% of the truth, 100x out.
    assert abs(np.log(estimate.n_opt.value / truth["n_opt"])) < 0.1
    assert abs(estimate.loss.value / truth["loss"] - 1) < 0.02

"""Sharper where the data can tell (issue 31, item 3): the growth set conformally, and the best-LR loss of a cell
from all its LRs (analysis/sharpen.cell_optima)."""

from __future__ import annotations

import numpy as np
import pytest

from proxyscale.analysis.predictive import conformal_growth, fit_growth
from proxyscale.analysis.sharpen import cell_optima


def test_conformal_growth_holds_the_level_and_is_narrower_than_the_likelihood_on_a_bias():
    """Errors that are a bias growing linearly with distance (a misspecified law), plus a little noise: the Gaussian
    likelihood counts the bias as a standard deviation, so its 1.96 sigma holds every error with room to spare; the
    conformal growth holds 95% of the units and no more."""
    rng = np.random.default_rng(0)
    x = np.repeat(np.linspace(0.2, 2.0, 40), 5)
    groups = np.repeat(np.arange(40), 5)
    errors = 0.02 * x * rng.choice([-1, 1], 40).repeat(5) * rng.uniform(0.6, 1.0, 40).repeat(5)
    errors += rng.normal(0, 0.001, len(x))
    noise = 0.001
    g_conf, g_ml = conformal_growth(x, errors, groups, noise), fit_growth(x, errors, groups, noise)

    def covered(g: float) -> float:
        return float(np.mean(np.abs(errors) <= 1.959964 * np.sqrt(noise**2 + (g * x) ** 2)))

    assert 0.95 <= covered(g_conf) <= 0.97
    assert covered(g_ml) == 1.0 and g_conf < 0.7 * g_ml
    assert conformal_growth(x[:0], errors[:0], groups[:0], noise) != conformal_growth(x[:0], errors[:0], groups[:0],
                                                                                        noise)  # NaN without points
    assert conformal_growth(x, 0 * errors, groups, noise) == 0.0


def bowl_sweep(seed: int, *, noise: float = 0.01, vertex_shift: float = 0.0):
    """Cells of a bowl in log LR (curvature 0.04), the true best-LR log loss 1.0-1.5, three LRs 2x apart around a
    vertex that moves from cell to cell (sometimes past the grid's edge)."""
    rng = np.random.default_rng(seed)
    rows = []
    truth = {}
    for c in range(30):
        n, d = 1e7 * (1 + c % 6), 2e8 * (1 + c // 6)
        level = 1.0 + 0.5 * rng.uniform()
        vertex = np.log(2e-3) + rng.uniform(-0.5, 0.5) * np.log(2) + vertex_shift
        truth[(n, d)] = np.exp(level)
        for lr in (1e-3, 2e-3, 4e-3):
            rows.append((n, d, lr, np.exp(level + 0.04 * (np.log(lr) - vertex) ** 2 + rng.normal(0, noise))))
    n, d, lr, loss = (np.array(v) for v in zip(*rows, strict=True))
    return n, d, lr, loss, truth


def test_the_bowl_recovers_the_best_lr_loss_better_than_the_best_run():
    """The lowest run is biased (low by the noise, high by the grid); the shared-curvature bowl is closer to the
    true best-LR loss, and it recovers the curvature and the run-to-run noise."""
    err_bowl, err_best = [], []
    for seed in range(4):
        n, d, lr, loss, truth = bowl_sweep(seed)
        cells = cell_optima(n, d, lr, loss)
        true = np.log([truth[(a, b)] for a, b in zip(cells.n, cells.d, strict=True)])
        err_bowl.append(np.log(cells.loss) - true)
        err_best.append(np.log(cells.best_observed) - true)
        assert cells.curvature == pytest.approx(0.04, rel=0.5)
        assert cells.noise == pytest.approx(0.01, rel=0.35)
    rms = [float(np.sqrt(np.mean(np.concatenate(e) ** 2))) for e in (err_bowl, err_best)]
    assert rms[0] < 0.85 * rms[1], rms


def test_a_vertex_past_the_grid_is_held_within_half_a_step_and_flagged():
    """Vertices shifted by one grid step: some cells' optimum lies past their largest LR. Those are flagged, and
    their level is held at most half a step past the edge: never more than the bowl's rise over 1.5 steps below
    their best run."""
    n, d, lr, loss, _ = bowl_sweep(1, noise=0.002, vertex_shift=np.log(2))
    cells = cell_optima(n, d, lr, loss)
    edge = cells.at_edge
    assert 0 < edge.sum() < len(edge)
    drop = np.log(cells.best_observed[edge] / cells.loss[edge])
    assert (drop < cells.curvature * (1.5 * np.log(2)) ** 2 + 3 * 0.002).all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="positive"):
        cell_optima([1.0], [1.0], [-1.0], [2.0])
    with pytest.raises(ValueError, match="one length"):
        cell_optima([1.0, 2.0], [1.0], [1.0], [2.0])

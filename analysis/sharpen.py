"""The best-LR loss of each (N, D) cell from all its runs, not only the best one (issue 31, item 3).

A ladder is usually fitted on the lowest loss of each (N, D) cell over the LRs tried. That point is noisy (one run)
and biased: low by the noise (the minimum of several noisy runs), high by the grid (the optimum usually lies between
two LRs tried, or past the edge of the grid). `cell_optima` uses every run of a cell instead: near its optimum the
log loss is a bowl in log LR,

    log L_ij = level_c + k (log lr_ij - m_c)^2 + noise,

with one curvature k shared by every cell (three LRs per cell identify a cell's level and vertex only together
with a shared k; Bergsma et al. 2025 and the Step Law sweeps show the bowl's width changes slowly with N and D), a
level and a vertex per cell. Runs at the same LR (seeds, reruns) are averaged by the least squares themselves.
For a fixed k the cells are independent linear regressions (log L - k x^2 = a + b x), so k is found by a scalar
search and each cell in closed form. The vertex is kept within half a grid step of the LRs tried (a cell whose
best LR is at the edge of its grid is allowed to be a little better than its best run, never extrapolated further).

The cell's level is its estimated best-LR log loss; the spread of the runs about their bowls (with the degrees of
freedom the fit used) is the run-to-run noise, and each level's own standard error follows from its regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_CURVATURE = 1e-4
"""The smallest shared curvature (per (log LR)^2, in log loss): a flat bowl has no vertex."""
MAX_CURVATURE = 10.0
EDGE_STEP = 0.5
"""How far (in grid steps of log LR) a vertex may lie past the LRs a cell tried."""


@dataclass(frozen=True)
class CellOptima:
    """Per (N, D) cell: the best-LR loss from its bowl, how many runs and LRs it rests on, and the noise."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    """exp(level_c): the bowl's lowest loss (cells with one LR: their mean loss)."""
    best_observed: np.ndarray
    """The lowest loss of the cell's runs (what a fit on the best run uses)."""
    log_se: np.ndarray
    """Standard error of each cell's log level (from the shared noise and the cell's design)."""
    runs: np.ndarray
    lrs: np.ndarray
    """Distinct LRs per cell."""
    at_edge: np.ndarray
    """The vertex lies at or past the largest or smallest LR the cell tried."""
    curvature: float
    noise: float
    """The run-to-run spread of log L about the bowls (root mean square, with the fit's degrees of freedom)."""
    dof: int


def _cell_fit(x: np.ndarray, y: np.ndarray, k: float, step: float) -> tuple[float, float, np.ndarray]:
    """(level, vertex, residuals) of one cell's bowl with curvature k, the vertex kept within EDGE_STEP grid steps of
    the LRs tried."""
    lo, hi = x.min() - EDGE_STEP * step, x.max() + EDGE_STEP * step
    if np.unique(x).size < 2:
        level = float(np.mean(y))
        return level, float(x[0]), y - level
    target = y - k * x**2
    b, a = np.polyfit(x, target, 1)
    vertex = float(np.clip(-b / (2 * k), lo, hi))
    level = float(np.mean(y - k * (x - vertex) ** 2))
    if np.unique(x).size == 2 or not lo < -b / (2 * k) < hi:  # vertex held at its limit: only the level is fitted
        return level, vertex, y - level - k * (x - vertex) ** 2
    return float(a - k * vertex**2), vertex, y - (a + b * x + k * x**2)


def cell_optima(n, d, lr, loss) -> CellOptima:
    """The best-LR loss of every (N, D) cell from a bowl in log LR with one shared curvature (module docstring).

    n, d, lr, loss: one entry per run (several LRs per cell; repeated LRs are seeds). ValueError on bad input."""
    from scipy.optimize import minimize_scalar

    n, d, lr, loss = (np.asarray(v, float) for v in (n, d, lr, loss))
    if not (len(n) == len(d) == len(lr) == len(loss)) or not len(n):
        raise ValueError("n, d, lr and loss must be non-empty and of one length")
    if (lr <= 0).any() or (loss <= 0).any() or not np.isfinite(np.concatenate([lr, loss])).all():
        raise ValueError("lr and loss must be positive and finite")
    cells, index = np.unique(np.stack([n, d], axis=1), axis=0, return_inverse=True)
    index = index.ravel()
    x, y = np.log(lr), np.log(loss)
    members = [np.flatnonzero(index == c) for c in range(len(cells))]
    steps = []
    for m in members:
        grid = np.unique(x[m])
        steps.append(float(np.median(np.diff(grid))) if grid.size > 1 else float(np.log(2.0)))

    def total(k: float) -> float:
        return float(sum(np.sum(_cell_fit(x[m], y[m], k, s)[2] ** 2) for m, s in zip(members, steps, strict=True)))

    fitted = [m for m in members if np.unique(x[m]).size >= 3]
    if fitted:
        k = float(minimize_scalar(total, bounds=(MIN_CURVATURE, MAX_CURVATURE), method="bounded",
                                  options={"xatol": 1e-5}).x)
    else:
        k = MIN_CURVATURE
    levels, vertices, residuals, at_edge, se = [], [], [], [], []
    for m, s in zip(members, steps, strict=True):
        level, vertex, r = _cell_fit(x[m], y[m], k, s)
        levels.append(level), vertices.append(vertex), residuals.append(r)
        at_edge.append(bool(vertex >= x[m].max() - 1e-9 or vertex <= x[m].min() + 1e-9))
    parameters = sum(min(np.unique(x[m]).size, 2) for m in members) + (1 if fitted else 0)
    dof = max(int(len(y) - parameters), 1)
    noise = float(np.sqrt(np.sum(np.concatenate(residuals) ** 2) / dof))
    for m, vertex in zip(members, vertices, strict=True):
        # The level's standard error: a regression on the cell's runs (the bowl's shape fixed), noise / sqrt(runs)
        # at the design's centre, more for a vertex far from the runs' mean log LR.
        spread = np.var(x[m]) if np.unique(x[m]).size > 1 else 0.0
        lever = (vertex - x[m].mean()) ** 2 / (len(m) * spread) if spread > 0 else 0.0
        se.append(noise * np.sqrt(1.0 / len(m) + lever))
    best = np.array([loss[m].min() for m in members])
    return CellOptima(n=cells[:, 0], d=cells[:, 1], loss=np.exp(np.array(levels)), best_observed=best,
                      log_se=np.array(se), runs=np.array([len(m) for m in members]),
                      lrs=np.array([np.unique(x[m]).size for m in members]), at_edge=np.array(at_edge), curvature=k,
                      noise=noise, dof=dof)

"""The depth law: the optimal aspect ratio width / depth from the loss at equal N and equal D.

log L = c_group + k (u - u*)^2 with u = ln(width / depth), fitted over groups of runs at (about) equal N
and equal D, with a parametric bootstrap for the intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.analysis.lr_grid import distinct_count


@dataclass(frozen=True)
class DepthLaw:
    """log L = c_group + k (u - u*)^2 with u = ln(width / depth), over groups of runs at (about) equal N and
    equal D; u* = ln of the optimal aspect ratio, with bootstrap intervals."""

    aspect: Interval
    """exp(u*): the optimal width / depth."""
    curvature: Interval
    """k: the log-loss cost of a factor e away from the optimal aspect ratio, squared."""
    bracketed: bool
    """u* lies inside the aspect ratios tried (else the optimum is only a bound: the edge of the grid)."""
    depths: tuple[int, ...]
    groups: int
    aspect_range: tuple[float, float]
    points: tuple[dict, ...]
    """One per (group, depth): n_params, tokens, width, depth, aspect, loss (the best of that shape), group,
    log_loss (moved to the group's N) and relative (log_loss minus the fitted group term: the law's k (u - u*)^2
    plus the residual)."""
    members: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False)
    """Bootstrap members' (u*, k)."""

    def loss_factor(self, aspect: float) -> float:
        """The law's loss at this aspect ratio relative to the optimum's."""
        k = self.curvature.value
        return float(np.exp(k * np.log(aspect / self.aspect.value) ** 2))

    def as_dict(self) -> dict:
        return {"aspect": self.aspect.as_dict(), "curvature": self.curvature.as_dict(), "bracketed": self.bracketed,
                "depths": list(self.depths), "groups": self.groups, "aspect_range": list(self.aspect_range),
                "points": list(self.points)}


def _equal_n_groups(n_params: np.ndarray, tokens: np.ndarray, tolerance: float) -> np.ndarray:
    """Group label per run: same D, and N within a factor (1 + tolerance) of the group's smallest N."""
    labels = np.empty(len(n_params), dtype=object)
    for d in np.unique(tokens):
        at = np.flatnonzero(tokens == d)
        start, label = None, 0
        for i in at[np.argsort(n_params[at], kind="stable")]:
            if start is None or n_params[i] > start * (1 + tolerance):
                start, label = n_params[i], label + 1
            labels[i] = f"{d:g}/{label}"
    return labels


def fit_depth_law(n_params, tokens, width, depth, loss, *, size_law=None, n_tolerance: float = 0.25,
                  bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[DepthLaw | None, str]:
    """The optimal aspect ratio width / depth from the loss at equal N (within n_tolerance) and equal D.

    size_law(n, d) -> log loss (e.g. a fitted L(N, D)): equal-N shapes differ by a few % in N, so each
    run's log loss is moved to its group's geometric-mean N by the law's difference (none when None).
    Each (group, depth) keeps its best loss (over LR etc.). Returns (law, why) or (None, why not): a law
    needs 3+ depths, groups with 2+ depths each, and one point more than its parameters.
    """
    n_params, tokens, width, depth, loss = (np.asarray(v, float) for v in (n_params, tokens, width, depth, loss))
    finite = np.isfinite(loss)
    depths_all = np.unique(depth[finite])
    if len(depths_all) < 2:
        return None, f"every run has depth {int(depths_all[0]) if len(depths_all) else '-'}"
    labels = _equal_n_groups(n_params, tokens, n_tolerance)
    correction = np.zeros(len(loss))
    if size_law is not None:
        for g in np.unique(labels[finite]):
            at = np.flatnonzero(finite & (labels == g))
            reference = float(np.exp(np.mean(np.log(n_params[at]))))
            correction[at] = [size_law(reference, tokens[i]) - size_law(n_params[i], tokens[i]) for i in at]
    points = []
    for g in np.unique(labels[finite]):
        at = finite & (labels == g)
        if distinct_count(depth[at]) < 2:
            continue
        for dep in np.unique(depth[at]):
            index = np.flatnonzero(at & (depth == dep))
            best = index[np.argmin(loss[index] * np.exp(correction[index]))]
            points.append({"group": str(g), "n_params": float(n_params[best]), "tokens": float(tokens[best]),
                           "width": int(width[best]), "depth": int(dep), "aspect": float(width[best] / dep),
                           "loss": float(loss[best]), "log_loss": float(np.log(loss[best]) + correction[best])})
    depths = sorted({p["depth"] for p in points})
    if len(depths) < 3:
        return None, (f"{len(depths_all)} depths in all, {len(depths)} at equal N and D: a law in the aspect ratio "
                      "needs 3+ depths at equal N (sweeps/depth.yaml)")
    groups = sorted({p["group"] for p in points})
    g_index = np.array([groups.index(p["group"]) for p in points])
    u = np.log([p["aspect"] for p in points])
    y = np.array([p["log_loss"] for p in points])
    design = np.column_stack([(g_index == k).astype(float) for k in range(len(groups))] + [u, u * u])
    if len(y) < design.shape[1] + 1:
        return None, f"{len(y)} (group, depth) points for {design.shape[1]} parameters: add a depth or an N group"

    if np.linalg.matrix_rank(design) < design.shape[1]:
        return None, "the (group, depth) points do not identify a parabola in the aspect ratio"

    def solve(target):
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
        m, k = coef[-2], coef[-1]
        if k > 0:
            return -m / (2 * k), k
        # No interior minimum: the better edge (an infinite aspect ratio one way or the other).
        return (np.inf if m + k * (u.max() + u.min()) < 0 else -np.inf), k

    point = solve(y)
    # Parametric bootstrap: a run per (group, depth) leaves too few points to resample, so the members
    # refit the law's own values plus noise of the residuals' size, that size itself drawn from its
    # chi-square posterior (heavy tails when there are few degrees of freedom).
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    fitted = design @ coef
    for i, p in enumerate(points):
        p["relative"] = float(y[i] - coef[g_index[i]] + (coef[-2] ** 2 / (4 * coef[-1]) if coef[-1] > 0 else 0.0))
    dof = len(y) - design.shape[1]
    rss = float(((y - fitted) ** 2).sum())
    rng = np.random.default_rng(seed)
    members = []
    for _ in range(bootstrap):
        sigma = np.sqrt(rss / rng.chisquare(dof))
        members.append(solve(fitted + sigma * rng.standard_normal(len(y))))
    members = np.array(members).reshape(-1, 2)
    with np.errstate(over="ignore"):
        aspect = percentile_interval(float(np.exp(point[0])), np.exp(members[:, 0]), level)
    curvature = percentile_interval(float(point[1]), members[:, 1], level)
    bracketed = bool(point[1] > 0 and u.min() <= point[0] <= u.max())
    law = DepthLaw(aspect, curvature, bracketed, tuple(depths), len(groups),
                   (float(np.exp(u.min())), float(np.exp(u.max()))), tuple(points), members)
    return law, f"{len(points)} (N, D, depth) points in {len(groups)} equal-N group(s), depths {depths}"

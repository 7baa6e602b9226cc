"""Scaling-law forms as small pure functions (numpy in, numpy out).

Symbols follow ../shared/papers.md: N parameters, D tokens, C training FLOPs, L loss in nats.
"""

from __future__ import annotations

import numpy as np


def chinchilla_loss(n, d, *, E, A, B, alpha, beta):
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022)."""
    return E + A / np.asarray(n, float) ** alpha + B / np.asarray(d, float) ** beta


def log_chinchilla_loss(log_n, log_d, theta):
    """log L in the log-sum-exp form: LSE(a - alpha log N, b - beta log D, e); theta = (a, b, e, alpha, beta).

    theta may carry leading batch axes: theta[..., k] broadcasts against log_n / log_d.
    """
    return log_sum_exp3(*lse_terms(log_n, log_d, theta))[0]


def lse_terms(log_n, log_d, theta):
    theta = np.asarray(theta, float)
    a, b, e, alpha, beta = (theta[..., k, None] for k in range(5))
    return a - alpha * log_n, b - beta * log_d, e + 0.0 * log_n


def log_sum_exp3(t1, t2, t3):
    """log(e^t1 + e^t2 + e^t3) and the three softmax weights, without stacking (fast for big batches)."""
    top = np.maximum(np.maximum(t1, t2), t3)
    e1, e2, e3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(t3 - top)
    total = e1 + e2 + e3
    return top + np.log(total), (e1 / total, e2 / total, e3 / total)


def loss_vs_compute(c, *, L_inf, k, gamma):
    """L(C) = L_inf + k C^-gamma: a power law in compute with an irreducible offset."""
    return L_inf + k * np.asarray(c, float) ** (-gamma)


def compute_optimal_allocation(c, *, A, B, alpha, beta):
    """N_opt(C), D_opt(C) minimising L(N, D) subject to C = 6 N D (Hoffmann et al. 2022, eq. 4).

    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)).
    """
    c = np.asarray(c, float)
    g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n_opt = g * (c / 6.0) ** (beta / (alpha + beta))
    d_opt = (c / 6.0) ** (alpha / (alpha + beta)) / g
    return n_opt, d_opt


def power_law(x, *, coefficient, exponent):
    """y = coefficient * x^exponent (N*(C), D*(C), LR_opt(C), ...)."""
    return coefficient * np.asarray(x, float) ** exponent


def log_linear_law(log_features, *, log_coefficient, exponents):
    """log y = log_coefficient + sum_k exponents[k] * log x_k: e.g. Step Law's eta_opt(N, D) = 1.79 N^-0.713 D^0.307."""
    return log_coefficient + np.asarray(log_features, float) @ np.asarray(exponents, float)


def schedule_areas(lrs, *, decay=0.999):
    """Forward area S1 and annealing area S2 of an LR schedule (Tissue et al. 2024).

    S1(s) = sum_{i<=s} eta_i; S2(s) = sum_{i<=s} m_i with m_i = decay * m_{i-1} + (eta_{i-1} - eta_i).
    `lrs` holds the LR of every optimiser step from the first (warmup included).
    """
    lrs = np.asarray(lrs, float)
    s1 = np.cumsum(lrs)
    drops = np.concatenate([[0.0], lrs[:-1] - lrs[1:]])
    momentum = np.empty_like(drops)
    running = 0.0
    for i, drop in enumerate(drops):  # a linear recurrence; len(lrs) is at most ~1e5
        running = decay * running + drop
        momentum[i] = running
    return s1, np.cumsum(momentum)


def schedule_loss(s1, s2, *, L0, A, alpha, C):
    """L(s) = L0 + A S1^-alpha - C S2 (Tissue et al. 2024)."""
    return L0 + A * np.asarray(s1, float) ** (-alpha) - C * np.asarray(s2, float)


def overtraining_loss(c, m, *, E, a, b, eta):
    """L(C, M) = E + (a M^eta + b M^-eta) C^-eta (Gadre et al. 2024, eq. 4), M = D / N tokens per parameter.

    Gadre et al. start from L(N, D) = E + A N^-alpha + B D^-beta, take alpha = beta, and write the
    reducible loss in compute C = 6 N D and multiplier M = D / N. With N = sqrt(C / (6 M)) and
    D = sqrt(C M / 6), A N^-2eta = A 6^eta M^eta C^-eta and B D^-2eta = B 6^eta M^-eta C^-eta, so this
    is exactly Chinchilla's law with alpha = beta = 2 eta, A = a 6^-eta, B = b 6^-eta (in N and M:
    E + A N^-2eta + B (M N)^-2eta; ../shared/papers.md writes that form with the signs folded into eta).
    At fixed C the loss is smallest at M* = (b / a)^(1 / (2 eta)), for every C; the multiplier shifts
    the compute scaling curve up by the factor (a M^eta + b M^-eta) but leaves its slope -eta alone.
    """
    c, m = np.asarray(c, float), np.asarray(m, float)
    return E + (a * m**eta + b * m ** (-eta)) * c ** (-eta)

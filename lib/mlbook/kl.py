r"""Monte-Carlo estimators of KL[q, p] from samples x ~ q (chapter "Approximating KL divergence").

All three estimators take the log-ratio :math:`\log r(x) = \log p(x) - \log q(x)` at samples
drawn from q, one value per sample, and return one estimate per sample; their mean estimates
:math:`\mathrm{KL}[q, p]`. Equation labels refer to ``book/kl.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _checks
from .device import get_device

__all__ = ["k1", "k2", "k3", "ESTIMATORS", "kl_from_log_probs", "gaussian_log_ratio", "gaussian_kl",
           "gaussian_relative_stats", "EstimatorStats", "monte_carlo_stats", "sampling_distribution",
           "scale_log_ratio", "k3_tail_index", "hill_estimator", "loss_gradient"]


def _log_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    return _checks.tensor(log_ratio, "log_ratio", floating=True)


def k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """k1 = -log r, eq. (kl-k1): unbiased, high variance, negative for samples where p > q."""
    return -_log_ratio(log_ratio)


def k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2, eq. (kl-k2): biased, low variance when p is close to q, never negative."""
    return 0.5 * _log_ratio(log_ratio).square()


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r, eq. (kl-k3): unbiased and never negative (log r <= r - 1).

    Computed as ``expm1(log r) - log r`` so that it stays accurate (and >= 0) when r is near 1.
    """
    log_ratio = _log_ratio(log_ratio)
    return torch.expm1(log_ratio) - log_ratio


ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def kl_from_log_probs(logp: torch.Tensor, logq: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Estimate KL[q, p] (a scalar) from ``logp``, ``logq`` evaluated at the same samples x ~ q."""
    _checks.choice(estimator, "estimator", list(ESTIMATORS))
    _checks.tensor(logp, "logp", floating=True)
    _checks.tensor(logq, "logq", floating=True)
    if logp.shape != logq.shape:
        raise ValueError(f"logp and logq must have the same shape, got {tuple(logp.shape)} and {tuple(logq.shape)}")
    return ESTIMATORS[estimator](logp - logq).mean()


# ----------------------------------------------------- the worked example: q = N(0, 1), p = N(mu, 1)

def gaussian_log_ratio(x: torch.Tensor, mu: float) -> torch.Tensor:
    """log p(x) - log q(x) = mu x - mu^2 / 2 for p = N(mu, 1), q = N(0, 1), eq. (kl-gauss-logr)."""
    mu = _checks.real(mu, "mu")
    return mu * _checks.tensor(x, "x", floating=True) - 0.5 * mu * mu


def gaussian_kl(mu: float) -> float:
    """KL[N(0,1), N(mu,1)] = mu^2 / 2, eq. (kl-gauss-true)."""
    mu = _checks.real(mu, "mu")
    return 0.5 * mu * mu


def gaussian_relative_stats(mu: float) -> dict[str, tuple[float, float]]:
    """Closed-form (bias / KL, stdev / KL) of each single-sample estimator, eqs. (kl-k1-std) to (kl-k3-std)."""
    mu = _checks.real(mu, "mu")
    if mu == 0:
        raise ValueError("mu must be non-zero: the true KL is 0 and relative errors are undefined")
    m2 = mu * mu
    return {
        "k1": (0.0, 2.0 / abs(mu)),
        "k2": (m2 / 4.0, math.sqrt(m2 + 2.0)),
        "k3": (0.0, 2.0 * math.sqrt(math.expm1(m2) - m2) / m2),
    }


@dataclass(frozen=True)
class EstimatorStats:
    """Monte-Carlo bias and spread of one estimator, relative to the true KL."""

    name: str
    mu: float
    n: int
    rel_bias: float      # (mean of the estimates - KL) / KL
    rel_std: float       # stdev of one sample's estimate / KL
    rel_bias_se: float   # standard error of rel_bias: rel_std / sqrt(n)
    rel_std_se: float    # standard error of rel_std (delta method on the sample variance)


def monte_carlo_stats(mu: float, n: int, *, generator: torch.Generator | None = None,
                      device=None) -> list[EstimatorStats]:
    """Draw ``n`` samples x ~ N(0, 1) (float64) and measure k1, k2, k3 against the true KL."""
    true = gaussian_kl(mu)
    if true == 0:
        raise ValueError("mu must be non-zero: the true KL is 0 and relative errors are undefined")
    n = _checks.integer(n, "n", minimum=2)
    x = torch.randn(n, generator=generator, dtype=torch.float64).to(get_device(device))
    log_r = gaussian_log_ratio(x, mu)
    stats = []
    for name, estimator in ESTIMATORS.items():
        values = estimator(log_r)
        centred = values - values.mean()
        var, m4 = float(centred.square().mean()), float(centred.pow(4).mean())
        std = math.sqrt(var)
        # Var(sample variance) ~ (m4 - var^2) / n, and d(std) = d(var) / (2 std).
        std_se = math.sqrt(max(m4 - var * var, 0.0) / n) / (2 * std)
        stats.append(EstimatorStats(name, mu, n, (float(values.mean()) - true) / true, std / true,
                                    std / true / math.sqrt(n), std_se / true))
    return stats


def sampling_distribution(mu: float, n: int, repeats: int, *, generator: torch.Generator | None = None,
                          device=None) -> dict[str, torch.Tensor]:
    """``repeats`` independent n-sample estimates of KL[N(0,1), N(mu,1)] per estimator, each ``(repeats,)``."""
    n = _checks.integer(n, "n", minimum=1)
    repeats = _checks.integer(repeats, "repeats", minimum=1)
    x = torch.randn(repeats, n, generator=generator, dtype=torch.float64).to(get_device(device))
    log_r = gaussian_log_ratio(x, mu)
    return {name: est(log_r).mean(dim=1) for name, est in ESTIMATORS.items()}


# ----------------------------------------------------- heavy tails: q = N(0, 1), p = N(0, s2)

def scale_log_ratio(x: torch.Tensor, s2: float) -> torch.Tensor:
    """log p(x) - log q(x) for p = N(0, s2), q = N(0, 1): -log(s2)/2 + x^2 (1 - 1/s2) / 2, eq. (kl-scale-logr)."""
    s2 = _checks.real(s2, "s2", positive=True)
    x = _checks.tensor(x, "x", floating=True)
    return -0.5 * math.log(s2) + 0.5 * (1.0 - 1.0 / s2) * x.square()


def k3_tail_index(s2: float) -> float:
    """Tail index s2 / (s2 - 1) of k3 under q = N(0, 1) against p = N(0, s2), eq. (kl-k3-tail).

    P(k3 > u) falls like u^(-index): k3 has a finite variance only when the index exceeds 2,
    that is for s2 < 2. Defined for s2 > 1 (for s2 <= 1 the ratio r is bounded).
    """
    s2 = _checks.real(s2, "s2", positive=True)
    if s2 <= 1:
        raise ValueError(f"s2 must be > 1 for a heavy right tail (r is bounded when s2 <= 1), got {s2}")
    return s2 / (s2 - 1.0)


def hill_estimator(values: torch.Tensor, k: int) -> float:
    """Hill's estimate of the tail index alpha from the ``k`` largest of ``values``.

    With X_(1) >= X_(2) >= ... the order statistics, 1 / alpha_hat is the mean of
    log X_(i) - log X_(k+1) over i = 1..k (the maximum-likelihood estimate for a Pareto tail
    above X_(k+1)); its standard error is about alpha / sqrt(k).
    """
    values = _checks.tensor(values, "values", ndim=1, floating=True)
    k = _checks.integer(k, "k", minimum=2)
    if k >= values.numel():
        raise ValueError(f"k must be smaller than the number of values ({values.numel()}), got {k}")
    top = torch.topk(values, k + 1).values
    if float(top[-1]) <= 0:
        raise ValueError("the k + 1 largest values must be positive (Hill's estimator uses their logarithms)")
    return 1.0 / float((top[:k].log() - top[k].log()).mean())


# ----------------------------------------------------- the estimators as losses (softmax policy)

def loss_gradient(logits: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Expected gradient of an estimator used as a loss, E_{x ~ pi}[grad k(x)], eq. (kl-loss-grad).

    pi = softmax(logits) is the sampling policy (q), ``ref_logp`` the reference's
    log-probabilities (p), and k is evaluated at log r = ref_logp - log pi(x). As in GRPO and
    RLHF, the gradient flows through k's dependence on log pi(x) only, not through the sampling:
    the expectation is the exact sum over the actions with pi(x) held fixed.
    """
    _checks.choice(estimator, "estimator", list(ESTIMATORS))
    logits = _checks.tensor(logits, "logits", ndim=1, floating=True)
    ref_logp = _checks.tensor(ref_logp, "ref_logp", ndim=1, floating=True)
    if logits.shape != ref_logp.shape:
        raise ValueError(f"logits and ref_logp must have the same shape, got {tuple(logits.shape)} "
                         f"and {tuple(ref_logp.shape)}")
    theta = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=0)
    loss = (logp.detach().exp() * ESTIMATORS[estimator](ref_logp - logp)).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    return grad

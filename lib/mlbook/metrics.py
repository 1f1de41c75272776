"""Sample-quality metrics shared by the generative chapters, and their noise floor.

A metric between a model's samples and data means little alone: even two fresh draws from
the data distribution are at a positive distance. :func:`noise_floor` measures that distance,
and the book prints every sample-quality number beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from . import _checks

__all__ = ["mmd", "sliced_wasserstein", "wasserstein1_to_cdf", "noise_floor"]

DEFAULT_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0)


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _checks.tensor(x, "x", ndim=2, floating=True, min_rows=1)
    _checks.tensor(y, "y", ndim=2, floating=True, min_rows=1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    return x.double(), y.double()


def mmd(x: torch.Tensor, y: torch.Tensor, *, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> float:
    r"""Maximum mean discrepancy between the samples ``x`` (n, d) and ``y`` (m, d).

    Uses the kernel :math:`k(a, b) = \sum_h \exp(-\lVert a-b\rVert^2 / 2h^2)` over ``bandwidths``
    and the plug-in (V-statistic) estimate
    :math:`\mathrm{MMD}^2 = \overline{k(x,x')} + \overline{k(y,y')} - 2\,\overline{k(x,y)}`,
    and returns its square root, which is >= 0 and 0 only for identical samples.
    Memory is O((n + m)^2): keep n, m at a few thousand.
    """
    x, y = _pair(x, y)
    hs = [_checks.real(h, "bandwidths", positive=True) for h in bandwidths]
    if not hs:
        raise ValueError("bandwidths must not be empty")

    def mean_kernel(a, b):
        sq = torch.cdist(a, b).square()                                     # (len(a), len(b))
        return sum(torch.exp(-sq / (2 * h * h)).mean() for h in hs)

    mmd2 = mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)
    return math.sqrt(max(float(mmd2), 0.0))


def _quantiles(v: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function of each column of ``v`` (n, P) at ``levels`` (m,) in (0, 1)."""
    idx = (levels * v.shape[0]).long().clamp_max(v.shape[0] - 1)
    return v.sort(dim=0).values[idx]                                       # (m, P)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256, p: int = 2,
                       seed: int = 0) -> float:
    r"""Sliced p-Wasserstein distance :math:`(\mathbb E_\theta W_p^p(\theta^\top x, \theta^\top y))^{1/p}`.

    The directions theta are ``n_projections`` uniform unit vectors drawn from ``seed``, so the
    metric is the same function on every call. Each 1-D distance compares the two empirical
    quantile functions on a grid of max(n, m) levels (exact when n == m).
    """
    x, y = _pair(x, y)
    n_projections = _checks.integer(n_projections, "n_projections", minimum=1)
    p = _checks.integer(p, "p", minimum=1)
    g = torch.Generator().manual_seed(_checks.integer(seed, "seed", minimum=0))
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)         # (d, P) unit columns
    m = max(len(x), len(y))
    levels = (torch.arange(m, dtype=torch.float64, device=x.device) + 0.5) / m
    gap = _quantiles(x @ theta, levels) - _quantiles(y @ theta, levels)     # (m, P)
    return float(gap.abs().pow(p).mean().pow(1.0 / p))


def wasserstein1_to_cdf(x: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor], *,
                        support: tuple[float, float], n_grid: int = 20001) -> float:
    r"""W1 between a 1-D sample ``x`` (n,) or (n, 1) and a distribution given by its CDF.

    In one dimension :math:`W_1(\mu, \nu) = \int |F_\mu(z) - F_\nu(z)|\, dz`; here :math:`F_\mu` is the
    empirical CDF of ``x`` and the integral is a trapezoid sum on ``n_grid`` points covering
    ``support`` and the sample. ``support`` must hold all but a negligible part of the distribution.
    Needs no second sample, so its noise floor is that of one sample of size n (``noise_floor``).
    """
    _checks.tensor(x, "x", ndim=(1, 2), floating=True, min_rows=1)
    if x.ndim == 2 and x.shape[1] != 1:
        raise ValueError(f"x must have shape (n,) or (n, 1), got {tuple(x.shape)}")
    lo, hi = (_checks.real(v, "support") for v in support)
    if not lo < hi:
        raise ValueError(f"support must be (lo, hi) with lo < hi, got {support}")
    n_grid = _checks.integer(n_grid, "n_grid", minimum=2)
    x = x.detach().reshape(-1).double().cpu().sort().values
    grid = torch.linspace(min(lo, float(x[0])), max(hi, float(x[-1])), n_grid, dtype=torch.float64)
    empirical = torch.searchsorted(x, grid, right=True).double() / len(x)
    gap = (empirical - cdf(grid).double().cpu().reshape(-1)).abs()
    return float(torch.trapezoid(gap, grid))


def noise_floor(metric: Callable[[torch.Tensor, torch.Tensor], float],
                sample: Callable[..., torch.Tensor], n: int, *, repeats: int = 5,
                generator: torch.Generator | None = None) -> tuple[float, float]:
    """Mean and standard deviation of ``metric`` between two fresh data sets of size ``n``.

    ``sample(n, generator=...)`` draws ``n`` points from the data distribution (a toy
    distribution's bound ``sample`` method fits). A model whose samples score within about
    this mean is indistinguishable from data by this metric at this sample size.
    """
    n = _checks.integer(n, "n", minimum=2)
    repeats = _checks.integer(repeats, "repeats", minimum=2)
    if not callable(metric) or not callable(sample):
        raise TypeError("metric and sample must be callables")
    values = torch.tensor([float(metric(sample(n, generator=generator), sample(n, generator=generator)))
                           for _ in range(repeats)], dtype=torch.float64)
    return float(values.mean()), float(values.std())

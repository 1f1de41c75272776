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


# ------------------------------------------------------------------ modes of a known mixture

__all__ += ["ModeCheck", "mode_check", "mode_statistics"]


def mode_statistics(x: torch.Tensor, mixture, *, assign: str = "posterior") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Each mode's weight and within-mode spread in the sample ``x`` (n, d), for a Gaussian mixture.

    ``mixture`` is a :class:`mlbook.data.GaussianMixture` (means :math:`m_k`, stds :math:`s_k`,
    weights :math:`w_k`). Each point is given to the modes by a responsibility :math:`r_{ik}`:

    - ``assign="posterior"``: the exact posterior :math:`r_{ik} = p(k \mid x_i)` of the true mixture;
    - ``assign="nearest"``: :math:`r_{ik} = 1` for the mode whose mean is nearest, else 0.

    Returns ``(weights, spreads)``, both (K,) float64 on the CPU:
    :math:`\hat w_k = \frac1n \sum_i r_{ik}` and the per-coordinate standard deviation around the
    *true* mean, :math:`\hat s_k = (\sum_i r_{ik} \lVert x_i - m_k\rVert^2 / (d \sum_i r_{ik}))^{1/2}`
    (NaN for a mode that gets no mass). A shifted mode therefore shows as a wider one.
    With ``assign="posterior"`` the expected values under the mixture itself are exactly
    :math:`w_k` and :math:`s_k`, since :math:`p(k \mid x)\, p(x) = w_k \mathcal N(x; m_k, s_k^2 I)`,
    however much the modes overlap; nearest-mode assignment is exact only for well-separated modes.
    """
    assign = _checks.choice(assign, "assign", ("posterior", "nearest"))
    for attr in ("means", "stds", "weights", "component_log_probs"):
        if not hasattr(mixture, attr):
            raise TypeError(f"mixture must be a GaussianMixture (with .{attr}), got {type(mixture).__name__}")
    _checks.tensor(x, "x", ndim=2, floating=True, min_rows=1)
    means = mixture.means.double()                                          # (K, d)
    if x.shape[1] != means.shape[1]:
        raise ValueError(f"x must have {means.shape[1]} columns like the mixture, got shape {tuple(x.shape)}")
    x = x.detach().double().cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    sq = torch.cdist(x, means).square()                                     # (n, K)
    if assign == "posterior":
        r = torch.softmax(mixture.component_log_probs(x), dim=1)            # (n, K)
    else:
        r = torch.nn.functional.one_hot(sq.argmin(1), len(means)).double()  # (n, K)
    mass = r.sum(0)                                                         # (K,)
    spreads = ((r * sq).sum(0) / (x.shape[1] * mass)).sqrt()                # NaN where mass == 0
    return mass / len(x), spreads


class ModeCheck:
    """The result of :func:`mode_check`: per-mode weights and spreads against the truth, and a verdict.

    ``weight_error`` is the largest relative weight error :math:`\\max_k |\\hat w_k - w_k| / w_k`;
    ``spread_ratio`` is the ratio :math:`\\hat s_k / s_k` farthest from 1 (on a log scale).
    ``passed`` is true when ``weight_error <= weight_tol`` and
    ``1 / spread_tol <= spread_ratio <= spread_tol``. ``rows()`` gives one table row per mode.
    """

    def __init__(self, weights, true_weights, spreads, true_spreads, weight_tol, spread_tol):
        self.weights, self.true_weights = weights, true_weights
        self.spreads, self.true_spreads = spreads, true_spreads
        self.weight_tol, self.spread_tol = weight_tol, spread_tol
        rel = (weights - true_weights).abs() / true_weights
        ratio = spreads / true_spreads
        self.weight_error = float(rel.max())
        if bool(torch.isnan(ratio).any()):
            self.spread_ratio = float("nan")
        else:
            self.spread_ratio = float(ratio[ratio.log().abs().argmax()])
        self.passed = bool(self.weight_error <= weight_tol
                           and 1 / spread_tol <= self.spread_ratio <= spread_tol)

    def rows(self) -> list[list]:
        """``[mode, weight, true weight, spread, true spread]`` for each mode (for ``report.table``)."""
        return [[k, float(w), float(tw), float(s), float(ts)] for k, (w, tw, s, ts) in
                enumerate(zip(self.weights, self.true_weights, self.spreads, self.true_spreads))]

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return (f"ModeCheck(passed={self.passed}, weight_error={self.weight_error:.3f} "
                f"(tol {self.weight_tol:g}), spread_ratio={self.spread_ratio:.3f} "
                f"(tol {1 / self.spread_tol:.3f}..{self.spread_tol:g}))")


def mode_check(x: torch.Tensor, mixture, *, assign: str = "posterior", weight_tol: float = 0.2,
               spread_tol: float = 1.2) -> ModeCheck:
    """Judge samples ``x`` (n, d) of a known Gaussian mixture by what a reader sees: mode weights and widths.

    Computes :func:`mode_statistics` and compares them with the mixture's weights and stds by
    effect size, not by a p-value (which tightens as n grows): the check fails when some mode's
    weight is off by more than ``weight_tol`` of itself, or some mode's spread is off by more than
    a factor ``spread_tol``. The defaults are calibrated in the notebook ``generative_checks`` for
    samples of about 2000 points: exact samples pass, modes 1.5 times too wide fail, a weight off
    by a third fails. Few points per mode (under ~100) make the weights too noisy for 0.2.
    With ``assign="nearest"`` the modes must be well separated (see :func:`mode_statistics`).
    """
    weight_tol = _checks.real(weight_tol, "weight_tol", positive=True)
    spread_tol = _checks.real(spread_tol, "spread_tol", positive=True)
    if spread_tol <= 1:
        raise ValueError(f"spread_tol is a factor and must be > 1, got {spread_tol}")
    weights, spreads = mode_statistics(x, mixture, assign=assign)
    return ModeCheck(weights, mixture.weights.double().cpu(), spreads, mixture.stds.double().cpu(),
                     weight_tol, spread_tol)


def distorted_mixture(mixture, *, spread: float = 1.0, mode: int = 0, weight: float = 1.0):
    """A copy of a Gaussian mixture with every std times ``spread`` and mode ``mode``'s weight times ``weight``.

    The other weights are scaled together so that the weights still sum to one, so mode ``mode``'s
    weight is exactly ``weight`` times the original. The samples a too-blurry or mis-weighted model
    would draw: what :func:`mode_check` must reject.
    """
    from .data import GaussianMixture

    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    spread = _checks.real(spread, "spread", positive=True)
    weight = _checks.real(weight, "weight", nonnegative=True)
    k = len(mixture.weights)
    mode = _checks.integer(mode, "mode", minimum=0)
    if mode >= k:
        raise ValueError(f"mode must be in 0..{k - 1}, got {mode}")
    w = mixture.weights.clone()
    target = float(w[mode]) * weight
    if target > 1 or (k == 1 and weight != 1):
        raise ValueError(f"mode {mode}'s weight {float(w[mode]):.3f} times {weight} is not a valid weight")
    rest = 1 - float(w[mode])
    if k > 1:
        w = w * ((1 - target) / rest)
    w[mode] = target
    return GaussianMixture(mixture.means, mixture.stds * spread, w)


__all__ += ["distorted_mixture"]

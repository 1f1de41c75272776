"""Data that never needs the network: 2-D toy distributions and scikit-learn's bundled sets.

Toy distributions are objects with ``sample(n, generator=, device=)`` returning an ``(n, d)``
tensor and, where the density has a closed form, ``log_prob(x)`` returning ``(n,)``. The
generative chapters use the exact density to put every learned likelihood beside the best
achievable one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import _checks
from .device import get_device

__all__ = [
    "ToyDistribution", "GaussianMixture", "Moons", "Rings", "Checkerboard", "SwissRoll",
    "gaussian_ring", "TOY_DISTRIBUTIONS", "toy", "Dataset", "load_dataset", "train_test_split",
]


class ToyDistribution:
    """Base class: a distribution on R^d that can be sampled on any device."""

    dim: int = 2
    has_log_prob: bool = False

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        n = _checks.integer(n, "n", minimum=1)
        return self._sample(n, generator).to(get_device(device))

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:  # on the CPU
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form density (a curve blurred by noise); "
            "use a distribution with has_log_prob=True, e.g. GaussianMixture or Checkerboard")

    def _check_points(self, x: torch.Tensor) -> torch.Tensor:
        return _checks.tensor(x, "x", ndim=2, last_dim=self.dim, floating=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class GaussianMixture(ToyDistribution):
    r"""Mixture of isotropic Gaussians, :math:`p(x) = \sum_k w_k \mathcal N(x; m_k, s_k^2 I)`.

    Args:
        means: ``(K, d)`` component means.
        stds: one standard deviation for all components, or ``(K,)`` of them.
        weights: ``(K,)`` non-negative mixture weights (normalised here); uniform if omitted.
    """

    has_log_prob = True

    def __init__(self, means, stds=1.0, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        _checks.tensor(means, "means", ndim=2, min_rows=1)
        k, self.dim = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(k).clone()
        if stds.shape != (k,):
            raise ValueError(f"stds must be a number or have shape ({k},), got shape {tuple(stds.shape)}")
        if not bool((stds > 0).all()):
            raise ValueError("stds must all be > 0")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got shape {tuple(weights.shape)}")
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    def _sample(self, n, generator):
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp, None] * noise).float()

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, K)`` matrix of log w_k + log N(x; m_k, s_k^2 I)."""
        x = self._check_points(x)
        means, stds, w = (t.to(x.device, x.dtype) for t in (self.means, self.stds, self.weights))
        sq = torch.cdist(x, means).square()                                  # (n, K)
        return (w.log() - 0.5 * sq / stds.square()
                - self.dim * (stds.log() + 0.5 * math.log(2 * math.pi)))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_probs(x), dim=1)

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """The cumulative distribution function of a 1-D mixture, sum_k w_k Phi((x - m_k) / s_k); x of shape (n,) or (n, 1)."""
        if self.dim != 1:
            raise ValueError(f"cdf needs a 1-D mixture, this one has dim {self.dim}")
        _checks.tensor(x, "x", ndim=(1, 2), floating=True)
        if x.ndim == 2 and x.shape[1] != 1:
            raise ValueError(f"x must have shape (n,) or (n, 1), got {tuple(x.shape)}")
        x = x.reshape(-1, 1)
        means, stds, w = (t.to(x.device, x.dtype) for t in (self.means[:, 0], self.stds, self.weights))
        return (w * 0.5 * (1 + torch.erf((x - means) / (stds * math.sqrt(2))))).sum(1)

    def subset(self, components) -> "GaussianMixture":
        """The mixture of the given components only, weights renormalised (e.g. one class's density)."""
        idx = torch.as_tensor(components, dtype=torch.long)
        if idx.ndim != 1 or len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(self.weights):
            raise ValueError(f"components must be a non-empty list of indices in 0..{len(self.weights) - 1}")
        return GaussianMixture(self.means[idx], self.stds[idx], self.weights[idx])

    def mean(self) -> torch.Tensor:
        """Mixture mean sum_k w_k m_k: shape (d,), float64."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Mixture covariance sum_k w_k (s_k^2 I + m_k m_k^T) - mean mean^T: shape (d, d), float64."""
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second = second + (self.weights * self.stds**2).sum() * torch.eye(self.dim, dtype=torch.float64)
        mu = self.mean()
        return second - torch.outer(mu, mu)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={len(self.weights)}, dim={self.dim})"


def gaussian_ring(k: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """``k`` equal-weight Gaussians with means evenly spaced on a circle."""
    k = _checks.integer(k, "k", minimum=1)
    radius = _checks.real(radius, "radius", positive=True)
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return GaussianMixture(radius * torch.stack([angles.cos(), angles.sin()], 1), std)


class Moons(ToyDistribution):
    """Two interleaved half circles (the layout of scikit-learn's ``make_moons``) plus Gaussian noise."""

    def __init__(self, noise: float = 0.05):
        self.noise = _checks.real(noise, "noise", nonnegative=True)

    def _sample(self, n, generator):
        t = math.pi * torch.rand(n, generator=generator)
        upper = torch.rand(n, generator=generator) < 0.5
        x = torch.where(upper, t.cos(), 1 - t.cos())
        y = torch.where(upper, t.sin(), 0.5 - t.sin())
        pts = torch.stack([x, y], 1) + self.noise * torch.randn(n, 2, generator=generator)
        return pts - torch.tensor([0.5, 0.25])                              # centre the pair


class Rings(ToyDistribution):
    """Concentric circles of the given radii (points spread by arc length) plus Gaussian noise."""

    def __init__(self, radii=(1.0, 2.0), noise: float = 0.05):
        radii = torch.as_tensor(radii, dtype=torch.float32)
        if radii.ndim != 1 or len(radii) == 0 or bool((radii <= 0).any()):
            raise ValueError(f"radii must be a non-empty list of positive numbers, got {radii.tolist()}")
        self.radii, self.noise = radii, _checks.real(noise, "noise", nonnegative=True)

    def _sample(self, n, generator):
        ring = torch.multinomial(self.radii / self.radii.sum(), n, replacement=True, generator=generator)
        theta = 2 * math.pi * torch.rand(n, generator=generator)
        r = self.radii[ring]
        pts = torch.stack([r * theta.cos(), r * theta.sin()], 1)
        return pts + self.noise * torch.randn(n, 2, generator=generator)


class Checkerboard(ToyDistribution):
    """Uniform density on the dark squares of a ``squares x squares`` board on [-half_width, half_width]^2.

    The density is 1 / (dark area) on dark squares and 0 elsewhere, so ``log_prob`` is exact
    (``-inf`` off the board).
    """

    has_log_prob = True

    def __init__(self, squares: int = 4, half_width: float = 2.0):
        self.squares = _checks.integer(squares, "squares", minimum=2)
        self.half_width = _checks.real(half_width, "half_width", positive=True)
        self.cell = 2 * self.half_width / self.squares
        self.n_dark = (self.squares * self.squares + 1) // 2

    def _cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.floor((x + self.half_width) / self.cell).long()).unbind(-1)

    def _sample(self, n, generator):
        dark = torch.tensor([(i, j) for i in range(self.squares) for j in range(self.squares) if (i + j) % 2 == 0])
        pick = dark[torch.randint(len(dark), (n,), generator=generator)]     # (n, 2) cell indices
        # Keep offsets a hair inside the square: in float32, pick + u can round up to pick + 1.
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        return ((pick + u) * self.cell - self.half_width).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_points(x)
        i, j = self._cells(x)
        inside = (i >= 0) & (i < self.squares) & (j >= 0) & (j < self.squares) & ((i + j) % 2 == 0)
        log_density = -math.log(self.n_dark * self.cell ** 2)
        return torch.where(inside, torch.full_like(x[:, 0], log_density), torch.full_like(x[:, 0], -math.inf))


class SwissRoll(ToyDistribution):
    """The 2-D swiss roll: a spiral t (cos t, sin t), t in [1.5 pi, 4.5 pi], scaled to about [-3, 3]^2."""

    def __init__(self, noise: float = 0.1):
        self.noise = _checks.real(noise, "noise", nonnegative=True)

    def _sample(self, n, generator):
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
        pts = torch.stack([t * t.cos(), t * t.sin()], 1) / 5.0
        return pts + self.noise * torch.randn(n, 2, generator=generator)


TOY_DISTRIBUTIONS = {
    "gaussian_ring": gaussian_ring,
    "moons": Moons,
    "rings": Rings,
    "checkerboard": Checkerboard,
    "swiss_roll": SwissRoll,
}


def toy(name: str, **kwargs) -> ToyDistribution:
    """Build a toy distribution by name: one of ``TOY_DISTRIBUTIONS``' keys, with its keyword arguments."""
    _checks.choice(name, "name", list(TOY_DISTRIBUTIONS))
    return TOY_DISTRIBUTIONS[name](**kwargs)


# --------------------------------------------------------------------------- scikit-learn's sets

@dataclass
class Dataset:
    """Features ``X`` (n, p), labels ``y`` (n,) and their names."""

    X: torch.Tensor
    y: torch.Tensor
    feature_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"Dataset(X={tuple(self.X.shape)}, y={tuple(self.y.shape)}, "
                f"classes={len(self.target_names)}, device={self.X.device})")


_SKLEARN_LOADERS = ("digits", "iris", "breast_cancer", "wine")


def load_dataset(name: str, *, device=None, dtype: torch.dtype = torch.float32) -> Dataset:
    """Load one of scikit-learn's bundled classification sets (shipped with the package, no download)."""
    _checks.choice(name, "name", _SKLEARN_LOADERS)
    import sklearn.datasets  # imported here: most notebooks never need scikit-learn

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    dev = get_device(device)
    return Dataset(
        X=torch.as_tensor(bunch.data, dtype=dtype, device=dev),
        y=torch.as_tensor(bunch.target, dtype=torch.long, device=dev),
        feature_names=[str(f) for f in getattr(bunch, "feature_names", [])],
        target_names=[str(t) for t in bunch.target_names],
    )


def train_test_split(X: torch.Tensor, y: torch.Tensor, *, test_fraction: float = 0.25,
                     generator: torch.Generator | None = None):
    """Shuffle with ``generator`` and split into ``(X_train, X_test, y_train, y_test)``."""
    _checks.tensor(X, "X", min_rows=2)
    _checks.tensor(y, "y", ndim=1)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of rows, got {len(X)} and {len(y)}")
    test_fraction = _checks.real(test_fraction, "test_fraction")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, min(len(X) - 1, round(test_fraction * len(X))))
    perm = torch.randperm(len(X), generator=generator).to(X.device)
    test, train = perm[:n_test], perm[n_test:]
    return X[train], X[test], y[train.to(y.device)], y[test.to(y.device)]

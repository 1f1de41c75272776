r"""Energy-based models: an energy network E(x, y), its training losses, and implicit inference.

Chapter "Energy-based models" (``book/ebm.md``); equation labels refer to that page. A conditional
energy model scores a pair (x, y); low energy means compatible, and p(y | x) = exp(-E(x, y)) / Z(x).
Prediction is implicit, y_hat(x) = argmin_y E(x, y), found by sampling rather than read off a head.

Shapes: ``x`` is ``(n, dx)``; candidate answers are ``(n, m, dy)`` (m per input) or ``(n, dy)`` (one
each); energies are ``(n, m)`` or ``(n,)``. ``bounds`` is a ``(2, dy)`` tensor: row 0 the lower, row 1
the upper corner of the box of answers searched and sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, nets, sde, train as _train
from .device import get_device, inverse_cdf, rand, randn

__all__ = ["EnergyMLP", "check_bounds", "uniform_in", "info_nce_loss", "energy_loss", "hinge_loss", "grid_nll", "ml_surrogate_loss",
           "energy_score", "cd_loss", "dfo_argmin", "langevin_argmin", "ImplicitRegressor",
           "ExplicitRegressor", "DensityEnergy", "box_grid", "quadrature_log_z", "quadrature_nll",
           "grid_density", "far_mass", "fit_cd", "TabularMDP", "chain_mdp", "soft_value",
           "boltzmann_policy", "soft_value_iteration", "soft_q_learning", "policy_return",
           "SelfNormalised", "gaussian_log_prob", "nce_loss", "fit_nce"]


class EnergyMLP(nn.Module):
    """E(x, y): an MLP on the concatenated pair, one scalar out; eq. (ebm-conditional).

    ``forward(x, y)`` takes x ``(n, dx)`` and y ``(n, dy)`` -> ``(n,)`` or y ``(n, m, dy)`` -> ``(n, m)``.
    ReLU units: the energy is piecewise linear, so the argmin can jump as x moves.
    """

    def __init__(self, x_dim: int = 1, y_dim: int = 1, hidden: int = 64, layers: int = 3):
        super().__init__()
        self.x_dim = _checks.integer(x_dim, "x_dim", minimum=1)
        self.y_dim = _checks.integer(y_dim, "y_dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        layers = _checks.integer(layers, "layers", minimum=1)
        self.net = nets.mlp(self.x_dim + self.y_dim, *[hidden] * layers, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _checks.tensor(x, "x", ndim=2, last_dim=self.x_dim, floating=True)
        _checks.tensor(y, "y", ndim=(2, 3), last_dim=self.y_dim, floating=True)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
        if y.ndim == 2:
            return self.net(torch.cat([x, y], dim=1)).squeeze(-1)                 # (n,)
        xs = x[:, None, :].expand(-1, y.shape[1], -1)                              # (n, m, dx)
        return self.net(torch.cat([xs, y], dim=2)).squeeze(-1)                     # (n, m)


def check_bounds(bounds, y_dim: int | None = None) -> torch.Tensor:
    """Return ``bounds`` as a float ``(2, dy)`` tensor with lower < upper, else raise."""
    bounds = torch.as_tensor(bounds, dtype=torch.float32) if not isinstance(bounds, torch.Tensor) else bounds
    _checks.tensor(bounds, "bounds", ndim=2, floating=True)
    if bounds.shape[0] != 2 or (y_dim is not None and bounds.shape[1] != y_dim):
        want = f"(2, {y_dim})" if y_dim is not None else "(2, dy)"
        raise ValueError(f"bounds must have shape {want} (lower row, upper row), got {tuple(bounds.shape)}")
    if not bool((bounds[0] < bounds[1]).all()):
        raise ValueError("bounds: every lower value (row 0) must be below its upper value (row 1)")
    return bounds


def uniform_in(bounds: torch.Tensor, *shape: int, generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
    """Uniform draws in the box ``bounds``, shape ``(*shape, dy)``; drawn on the CPU from ``generator``."""
    bounds = check_bounds(bounds)
    lo, hi = bounds[0].to(get_device(device)), bounds[1].to(get_device(device))
    u = rand(*shape, bounds.shape[1], generator=generator, device=device, dtype=bounds.dtype)
    return lo + (hi - lo) * u


def info_nce_loss(model: Callable, x: torch.Tensor, y: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """InfoNCE with counter-examples, eq. (ebm-infonce): cross-entropy of picking y among {y} + counter.

    ``y`` ``(n, dy)`` are the observed answers, ``counter`` ``(n, K, dy)`` the counter-examples; the
    logits are minus the energies. Returns the mean over the n rows.
    """
    _checks.tensor(y, "y", ndim=2, floating=True)
    _checks.tensor(counter, "counter", ndim=3, floating=True)
    if counter.shape[0] != y.shape[0] or counter.shape[2] != y.shape[1]:
        raise ValueError(f"counter must have shape ({y.shape[0]}, K, {y.shape[1]}) to match y, "
                         f"got {tuple(counter.shape)}")
    candidates = torch.cat([y[:, None, :], counter], dim=1)                       # (n, K + 1, dy)
    logits = -model(x, candidates)                                                 # (n, K + 1)
    target = torch.zeros(len(y), dtype=torch.long, device=y.device)               # the observed one
    return F.cross_entropy(logits, target)


def energy_loss(model: Callable, x: torch.Tensor, y: torch.Tensor, counter: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The energy loss, eq. (ebm-energy-loss): mean E(x, y) at the observed answers, nothing else.

    It only pushes energies down, so a model that can lower every energy at once (a bias) minimises it
    without learning anything: the collapse the margin losses prevent. ``counter`` is ignored (accepted
    so that every loss of this module has one signature)."""
    return model(x, y).mean()


def hinge_loss(model: Callable, x: torch.Tensor, y: torch.Tensor, counter: torch.Tensor, *,
               margin: float = 1.0, exclude: float = 0.05) -> torch.Tensor:
    """The hinge (margin) loss, eq. (ebm-hinge): mean of max(0, margin + E(x, y) - E(x, y_bar)), where
    y_bar is the *most offending* counter-example, the one of lowest energy among those farther than
    ``exclude`` from y (closer ones count as correct answers). ``counter`` is ``(n, K, dy)``."""
    margin = _checks.real(margin, "margin", positive=True)
    exclude = _checks.real(exclude, "exclude", nonnegative=True)
    _checks.tensor(counter, "counter", ndim=3, floating=True)
    if counter.shape[0] != y.shape[0] or counter.shape[2] != y.shape[1]:
        raise ValueError(f"counter must have shape ({y.shape[0]}, K, {y.shape[1]}) to match y, "
                         f"got {tuple(counter.shape)}")
    e_counter = model(x, counter)                                                  # (n, K)
    wrong = (counter - y[:, None, :]).norm(dim=-1) > exclude                       # (n, K)
    offending = torch.where(wrong, e_counter, torch.full_like(e_counter, math.inf)).min(1).values
    gap = margin + model(x, y) - offending                                         # (n,)
    return F.relu(torch.where(torch.isinf(offending), torch.zeros_like(gap), gap)).mean()


def grid_nll(model: Callable, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Exact mean negative log-likelihood when y ranges over the finite set ``grid``, eq. (ebm-nll).

    -log p(y | x) = E(x, y) + log sum_g exp(-E(x, g)); ``grid`` is ``(G, dy)``. The normaliser is
    computed by brute force, which only a tiny answer space allows: a reference for the tests.
    """
    _checks.tensor(grid, "grid", ndim=2, floating=True, min_rows=1)
    g = grid[None].expand(x.shape[0], -1, -1)                                     # (n, G, dy)
    return (model(x, y) + torch.logsumexp(-model(x, g), dim=1)).mean()


def ml_surrogate_loss(model: Callable, x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor,
                      log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """A loss whose parameter gradient is the positive minus the negative phase, eq. (ebm-ml-grad).

    mean over rows of E(x, y) - sum_j w_j E(x, y'_j), with the negatives ``(n, M, dy)`` and weights
    w = softmax(``log_weights``) (uniform if omitted, i.e. the negatives are samples of the model),
    held constant: no gradient flows through them. Its *value* means nothing; its gradient does.
    """
    _checks.tensor(negatives, "negatives", ndim=3, floating=True)
    e_neg = model(x, negatives.detach())                                           # (n, M)
    if log_weights is None:
        w = torch.full_like(e_neg, 1.0 / e_neg.shape[1])
    else:
        if log_weights.shape != e_neg.shape:
            raise ValueError(f"log_weights must have the negatives' shape {tuple(e_neg.shape)}, "
                             f"got {tuple(log_weights.shape)}")
        w = torch.softmax(log_weights.detach(), dim=1)
    return (model(x, y) - (w * e_neg).sum(1)).mean()


def energy_score(energy: Callable, x: torch.Tensor, temperature: float = 1.0) -> Callable:
    """grad_y log p(y | x) = -grad_y E(x, y) / T as a function of y alone (for :func:`mlbook.sde.langevin`).

    ``y`` may be ``(n, dy)`` or ``(n, m, dy)``; the gradient is taken by autograd, also inside ``no_grad``.
    With ``x=None`` the energy is unconditional and is called as ``energy(y)``.
    """
    temperature = _checks.real(temperature, "temperature", positive=True)

    def score(y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            e = energy(yg) if x is None else energy(x, yg)
            (grad,) = torch.autograd.grad(e.sum(), yg)
        return -grad / temperature

    return score


def cd_loss(model: Callable, x: torch.Tensor, y: torch.Tensor, *, n_steps: int = 10, step_size: float = 0.01,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Contrastive divergence CD-k, eq. (ebm-cd): the negatives are k Langevin steps started at the data.

    Returns :func:`ml_surrogate_loss` with one negative per row, y' = Langevin_k(y) under p(. | x).
    """
    n_steps = _checks.integer(n_steps, "n_steps", minimum=1)
    negatives = sde.langevin(energy_score(model, x), y.detach(), step_size, n_steps, generator=generator)
    return ml_surrogate_loss(model, x, y, negatives[:, None, :])


def _check_inputs(energy, x, bounds):
    if not callable(energy):
        raise TypeError("energy must be callable as energy(x, y)")
    _checks.tensor(x, "x", ndim=2, floating=True, min_rows=1)
    return check_bounds(bounds).to(x.device, x.dtype)


@torch.no_grad()
def dfo_argmin(energy: Callable, x: torch.Tensor, bounds, *, n_samples: int = 256, n_iters: int = 3,
               noise: float = 0.1, shrink: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Derivative-free argmin_y E(x, y), eq. (ebm-dfo): sample, reweight by exp(-E), resample, jitter.

    Start from ``n_samples`` uniform candidates per row in ``bounds``; each of ``n_iters`` rounds
    resamples them with probabilities softmax(-E), adds Gaussian noise of std ``noise`` times the box
    width (shrunk by ``shrink`` every round) and clips to the box. Returns the lowest-energy candidate
    of the last round, ``(n, dy)``. Only energy evaluations: no gradients.
    """
    bounds = _check_inputs(energy, x, bounds)
    n_samples = _checks.integer(n_samples, "n_samples", minimum=1)
    n_iters = _checks.integer(n_iters, "n_iters", minimum=0)
    noise = _checks.real(noise, "noise", nonnegative=True)
    shrink = _checks.real(shrink, "shrink", positive=True)
    n, width = x.shape[0], bounds[1] - bounds[0]
    y = uniform_in(bounds, n, n_samples, generator=generator, device=x.device).to(x.dtype)  # (n, m, dy)
    rows = torch.arange(n, device=x.device)[:, None]
    scale = noise
    for _ in range(n_iters):
        probs = torch.softmax(-energy(x, y), dim=1).cpu().float()                  # (n, m)
        idx = torch.multinomial(probs, n_samples, replacement=True, generator=generator).to(x.device)
        y = y[rows, idx] + scale * width * randn(*y.shape, generator=generator, device=x.device, dtype=x.dtype)
        y = torch.maximum(torch.minimum(y, bounds[1]), bounds[0])
        scale *= shrink
    best = energy(x, y).argmin(dim=1)                                              # (n,)
    return y[rows[:, 0], best]


@torch.no_grad()
def langevin_argmin(energy: Callable, x: torch.Tensor, bounds, *, n_samples: int = 16, n_steps: int = 100,
                    step_size: float = 1e-3, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Implicit inference by Langevin dynamics, eq. (ebm-langevin-inference).

    ``n_samples`` chains per row start uniform in ``bounds`` and run :func:`mlbook.sde.langevin` on
    p(y | x) ~ exp(-E(x, y) / T) for ``n_steps`` steps (clipped to the box after the run); the
    lowest-energy final state of each row is returned, ``(n, dy)``. A low temperature concentrates the
    chains near the minima; the noise lets them leave shallow ones.
    """
    bounds = _check_inputs(energy, x, bounds)
    n_samples = _checks.integer(n_samples, "n_samples", minimum=1)
    y = uniform_in(bounds, x.shape[0], n_samples, generator=generator, device=x.device).to(x.dtype)
    y = sde.langevin(energy_score(energy, x, temperature), y, step_size, n_steps, generator=generator)
    if not bool(torch.isfinite(y).all()):
        raise FloatingPointError("Langevin inference diverged: lower step_size (or raise temperature)")
    y = torch.maximum(torch.minimum(y, bounds[1]), bounds[0])
    best = energy(x, y).argmin(dim=1)
    return y[torch.arange(x.shape[0], device=x.device), best]


# ---------------------------------------------------------------------------- estimators

def _targets(y, name: str = "y", *, device, n_rows: int) -> torch.Tensor:
    y = torch.as_tensor(y, dtype=torch.float32) if not isinstance(y, torch.Tensor) else y.float()
    y = y[:, None] if y.ndim == 1 else y
    y = _checks.features(y, name, device=device, dtype=torch.float32)
    if y.shape[0] != n_rows:
        raise ValueError(f"X and {name} must have the same number of rows, got {n_rows} and {y.shape[0]}")
    return y


class _Regressor:
    """fit/predict plumbing shared by the implicit and the explicit regressor (scikit-learn style)."""

    def __init__(self, *, hidden: int, layers: int, steps: int, lr: float, batch_size: int, seed: int, device):
        self.hidden, self.layers, self.steps, self.lr = hidden, layers, steps, lr
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.model_ = None

    def _prepare(self, X, y):
        _checks.integer(self.steps, "steps", minimum=1)
        _checks.integer(self.seed, "seed", minimum=0)
        dev = get_device(self.device)
        X = _checks.features(X, "X", device=dev, dtype=torch.float32)
        return dev, X, _targets(y, device=dev, n_rows=X.shape[0])

    def _inputs(self, X) -> torch.Tensor:
        _checks.fitted(self, "model_")
        return _checks.features(X, "X", n_features=self.n_features_in_, device=next(self.model_.parameters()).device,
                                dtype=torch.float32)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] if self.y_dim_ == 1 else y


class ImplicitRegressor(_Regressor):
    """Implicit regression: fit E(x, y) by InfoNCE with uniform counter-examples, predict argmin_y E.

    The recipe of implicit behavioural cloning, eqs. (ebm-infonce) and (ebm-implicit). Answers are
    searched in the box spanned by the training targets, widened by ``margin`` of its width on each side.

    Args:
        n_counter: counter-examples K per training pair, drawn uniformly in the box every step.
        loss: ``"infonce"`` (eq. (ebm-infonce)), ``"hinge"`` (:func:`hinge_loss` with margin
            ``hinge_margin``) or ``"energy"`` (:func:`energy_loss`, which collapses: for comparison).
        inference: ``"dfo"`` (:func:`dfo_argmin`) or ``"langevin"`` (:func:`langevin_argmin`).
        inference_kwargs: passed on to the inference function.
    """

    def __init__(self, *, n_counter: int = 64, hidden: int = 64, layers: int = 3, steps: int = 1500,
                 lr: float = 1e-3, batch_size: int = 64, margin: float = 0.05, inference: str = "dfo",
                 inference_kwargs: dict | None = None, loss: str = "infonce", hinge_margin: float = 1.0,
                 seed: int = 0, device=None):
        super().__init__(hidden=hidden, layers=layers, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                         device=device)
        self.n_counter, self.margin = n_counter, margin
        self.inference, self.inference_kwargs = inference, inference_kwargs
        self.loss, self.hinge_margin = loss, hinge_margin

    def fit(self, X, y, *, show_progress: bool | None = False) -> "ImplicitRegressor":
        n_counter = _checks.integer(self.n_counter, "n_counter", minimum=1)
        margin = _checks.real(self.margin, "margin", nonnegative=True)
        _checks.choice(self.inference, "inference", ("dfo", "langevin"))
        _checks.choice(self.loss, "loss", ("infonce", "hinge", "energy"))
        dev, X, Y = self._prepare(X, y)
        lo, hi = Y.min(0).values, Y.max(0).values
        pad = margin * (hi - lo).clamp_min(1e-6)
        self.bounds_ = torch.stack([lo - pad, hi + pad + (hi == lo) * 1e-3])      # (2, dy)
        self.n_features_in_, self.y_dim_ = X.shape[1], Y.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)                                               # the initial weights
        model = EnergyMLP(X.shape[1], Y.shape[1], self.hidden, self.layers).to(dev)

        def loss_fn(m, batch):
            xb, yb = batch
            counter = uniform_in(self.bounds_, len(yb), n_counter, generator=gen, device=dev)
            if self.loss == "hinge":
                return hinge_loss(m, xb, yb, counter, margin=self.hinge_margin)
            if self.loss == "energy":
                return energy_loss(m, xb, yb)
            return info_nce_loss(m, xb, yb, counter)

        self.losses_ = _train.train(model, loss_fn, (X, Y), steps=self.steps, lr=self.lr,
                                    batch_size=self.batch_size, generator=gen, device=dev,
                                    desc="InfoNCE", show_progress=show_progress)
        self.model_ = model
        return self

    @torch.no_grad()
    def energy(self, X, Y) -> torch.Tensor:
        """Energies of the candidates ``Y`` ``(n, m, dy)`` (or ``(n, m)`` when dy = 1) for the rows of X."""
        X = self._inputs(X)
        Y = torch.as_tensor(Y, dtype=torch.float32).to(X.device)
        Y = Y[..., None] if Y.ndim == 2 and self.y_dim_ == 1 else Y
        return self.model_(X, Y)

    def predict(self, X, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """argmin_y E(x, y) for each row of X, by the chosen inference; ``(n,)`` if y was 1-D."""
        X = self._inputs(X)
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        search = dfo_argmin if self.inference == "dfo" else langevin_argmin
        return self._out(search(self.model_, X, self.bounds_, generator=gen, **(self.inference_kwargs or {})))


class MLP(nn.Module):
    """A plain ReLU MLP x -> y, the explicit model."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int, layers: int):
        super().__init__()
        self.net = nets.mlp(x_dim, *[hidden] * layers, y_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ExplicitRegressor(_Regressor):
    """The explicit baseline, eq. (ebm-explicit): an MLP y = f(x) fitted by mean squared error."""

    def __init__(self, *, hidden: int = 64, layers: int = 3, steps: int = 1500, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0, device=None):
        super().__init__(hidden=hidden, layers=layers, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                         device=device)

    def fit(self, X, y, *, show_progress: bool | None = False) -> "ExplicitRegressor":
        dev, X, Y = self._prepare(X, y)
        self.n_features_in_, self.y_dim_ = X.shape[1], Y.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        model = MLP(X.shape[1], Y.shape[1], _checks.integer(self.hidden, "hidden", minimum=1),
                    _checks.integer(self.layers, "layers", minimum=1)).to(dev)
        self.losses_ = _train.train(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), (X, Y), steps=self.steps,
                                    lr=self.lr, batch_size=self.batch_size, generator=gen, device=dev,
                                    desc="MSE", show_progress=show_progress)
        self.model_ = model
        return self

    @torch.no_grad()
    def predict(self, X) -> torch.Tensor:
        return self._out(self.model_(self._inputs(X)))


# ---------------------------------------------------------------------------- densities on the plane

class DensityEnergy(nn.Module):
    """An unconditional energy E(x) on R^d, eq. (ebm-boltzmann): a smooth (SiLU) MLP, ``(n, d) -> (n,)``."""

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        layers = _checks.integer(layers, "layers", minimum=1)
        self.net = nets.mlp(self.dim, *[hidden] * layers, 1, activation=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.tensor(x, "x", ndim=2, last_dim=self.dim, floating=True)
        return self.net(x).squeeze(-1)                                             # (n,)


def box_grid(box: float, n: int, *, device=None, dtype: torch.dtype = torch.float32
             ) -> tuple[torch.Tensor, float]:
    """The n x n grid of [-box, box]^2 as ``(n * n, 2)`` points (first coordinate fastest), and the
    area of one cell, (2 box / (n - 1))^2: the weights of the quadrature of :func:`quadrature_log_z`."""
    box = _checks.real(box, "box", positive=True)
    n = _checks.integer(n, "n", minimum=2)
    t = torch.linspace(-box, box, n, device=get_device(device), dtype=dtype)
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1), (2 * box / (n - 1)) ** 2


def _check_energy(energy) -> None:
    if not callable(energy):
        raise TypeError("energy must be callable as energy(x) on points x of shape (n, 2)")


@torch.no_grad()
def quadrature_log_z(energy: Callable, box: float, n: int = 200, *, device=None) -> torch.Tensor:
    """log Z = log of the integral of exp(-E) over [-box, box]^2 by the Riemann sum on an n x n grid.

    The normaliser of eq. (ebm-boltzmann), in two dimensions, where quadrature is cheap; mass outside
    the box is ignored, so the box must cover the data with room to spare.
    """
    _check_energy(energy)
    grid, area = box_grid(box, n, device=device)
    return torch.logsumexp(-energy(grid), dim=0) + math.log(area)


@torch.no_grad()
def quadrature_nll(energy: Callable, data: torch.Tensor, box: float, n: int = 200) -> float:
    """The exact mean negative log-likelihood of eq. (ebm-nll), mean E(x_i) + log Z, with log Z by
    :func:`quadrature_log_z` on an n x n grid of [-box, box]^2 (the density restricted to the box)."""
    _check_energy(energy)
    _checks.tensor(data, "data", ndim=2, last_dim=2, floating=True, min_rows=1)
    box = _checks.real(box, "box", positive=True)
    if bool((data.abs() > box).any()):
        raise ValueError(f"data must lie inside the box [-{box}, {box}]^2; widen the box")
    return float(energy(data).mean() + quadrature_log_z(energy, box, n, device=data.device))


@torch.no_grad()
def grid_density(energy: Callable, box: float, n: int = 200, *, device=None) -> torch.Tensor:
    """The density exp(-E) / Z on the n x n grid of :func:`box_grid`, shape ``(n, n)`` (row = second
    coordinate), normalised so that its sum times the cell area is 1."""
    _check_energy(energy)
    grid, area = box_grid(box, n, device=device)
    return (torch.softmax(-energy(grid), dim=0) / area).reshape(n, n)


@torch.no_grad()
def far_mass(energy: Callable, data: torch.Tensor, box: float, radius: float, n: int = 200) -> float:
    """Probability that the model puts at distance > ``radius`` from every data point (in the box):
    the mass of spurious modes that no chain started at the data visits."""
    _check_energy(energy)
    _checks.tensor(data, "data", ndim=2, last_dim=2, floating=True, min_rows=1)
    radius = _checks.real(radius, "radius", positive=True)
    grid, _ = box_grid(box, n, device=data.device, dtype=data.dtype)
    far = torch.cdist(grid, data).min(dim=1).values > radius                       # (n * n,)
    return float(torch.softmax(-energy(grid), dim=0)[far].sum())


def fit_cd(energy: nn.Module, data: torch.Tensor, *, persistent: bool = False, k: int = 1,
           step_size: float = 0.01, steps: int = 500, lr: float = 1e-3, batch_size: int = 128,
           box: float = 6.0, generator: torch.Generator | None = None, device=None,
           callback: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Fit an unconditional energy by contrastive divergence, eq. (ebm-cd), or persistent CD.

    Every gradient step runs ``k`` unadjusted Langevin steps (:func:`mlbook.sde.langevin`, step
    ``step_size``) and descends the surrogate of eq. (ebm-surrogate) with these negatives. CD-k starts
    the chains at the batch of data; persistent CD (``persistent=True``) keeps ``batch_size`` chains,
    started uniform in [-box, box]^2, and continues them from one gradient step to the next. Trains
    with :func:`mlbook.train.train` (Adam); returns the surrogate's values (meaningless but for trends).
    """
    if not isinstance(energy, nn.Module):
        raise TypeError(f"energy must be a torch.nn.Module, got {type(energy).__name__}")
    _checks.tensor(data, "data", ndim=2, floating=True, min_rows=1)
    k = _checks.integer(k, "k", minimum=1)
    step_size = _checks.real(step_size, "step_size", positive=True)
    box = _checks.real(box, "box", positive=True)
    batch_size = _checks.integer(batch_size, "batch_size", minimum=1)
    dev = get_device(device)
    lo = torch.full((data.shape[1],), -box)
    chains = uniform_in(torch.stack([lo, -lo]), batch_size, generator=generator, device=dev)

    def loss_fn(model, batch):
        nonlocal chains
        (xb,) = batch if isinstance(batch, (tuple, list)) else (batch,)
        start = chains[: len(xb)] if persistent else xb
        neg = sde.langevin(energy_score(model, None), start.detach(), step_size, k, generator=generator)
        if not bool(torch.isfinite(neg).all()):
            raise FloatingPointError("Langevin chains diverged: lower step_size or lr")
        if persistent:
            chains = torch.cat([neg.detach(), chains[len(xb):]])
        return model(xb).mean() - model(neg.detach()).mean()

    return _train.train(energy, loss_fn, data.to(dev), steps=steps, lr=lr, batch_size=batch_size,
                        generator=generator, device=dev, desc="CD", show_progress=False,
                        callback=callback)


# ------------------------------------------------------------------ soft Q-learning on a small MDP

class TabularMDP:
    """A finite MDP: ``P`` ``(S, A, S)`` transition probabilities, ``R`` ``(S, A)`` expected rewards,
    ``terminal`` ``(S,)`` booleans (a terminal state ends the episode and has value 0), ``start`` the
    state every episode begins in. Float64 tensors on one device."""

    def __init__(self, P: torch.Tensor, R: torch.Tensor, terminal: torch.Tensor, start: int):
        _checks.tensor(P, "P", ndim=3, floating=True)
        n_s, n_a, n_next = P.shape
        if n_next != n_s or n_a < 1:
            raise ValueError(f"P must have shape (S, A, S), got {tuple(P.shape)}")
        if bool((P < 0).any()) or not torch.allclose(P.sum(-1), torch.ones_like(P[..., 0])):
            raise ValueError("every row P[s, a] must be a probability distribution over next states")
        _checks.tensor(R, "R", ndim=2, floating=True)
        if R.shape != (n_s, n_a):
            raise ValueError(f"R must have shape {(n_s, n_a)}, got {tuple(R.shape)}")
        _checks.tensor(terminal, "terminal", ndim=1)
        if terminal.dtype != torch.bool or terminal.shape != (n_s,):
            raise ValueError(f"terminal must be a boolean tensor of shape ({n_s},)")
        start = _checks.integer(start, "start", minimum=0)
        if start >= n_s or bool(terminal[start]):
            raise ValueError(f"start must be a non-terminal state in 0..{n_s - 1}")
        self.P, self.R, self.terminal, self.start = P, R, terminal, start


def chain_mdp(n_states: int = 7, start: int = 1, near_reward: float = 0.2, far_reward: float = 1.0,
              *, device=None) -> TabularMDP:
    """A corridor of ``n_states`` cells; actions 0 (left) and 1 (right) move one cell. Stepping into
    cell 0 pays ``near_reward``, into the last cell ``far_reward``; both end the episode. Starting near
    the left end, a random walk finds the small reward long before the large one."""
    n = _checks.integer(n_states, "n_states", minimum=3)
    start = _checks.integer(start, "start", minimum=1)
    if start >= n - 1:
        raise ValueError(f"start must be an interior cell, 1..{n - 2}")
    dev = get_device(device)
    P = torch.zeros(n, 2, n, dtype=torch.float64, device=dev)
    R = torch.zeros(n, 2, dtype=torch.float64, device=dev)
    for s in range(n):
        for a, step in enumerate((-1, 1)):
            nxt = s if s in (0, n - 1) else s + step
            P[s, a, nxt] = 1.0
            if s not in (0, n - 1):
                R[s, a] = near_reward if nxt == 0 else far_reward if nxt == n - 1 else 0.0
    terminal = torch.zeros(n, dtype=torch.bool, device=dev)
    terminal[[0, n - 1]] = True
    return TabularMDP(P, R, terminal, start)


def soft_value(Q: torch.Tensor, alpha: float) -> torch.Tensor:
    """V(s) = alpha log sum_a exp(Q(s, a) / alpha), the log-partition function of eq. (ebm-soft-policy)."""
    return alpha * torch.logsumexp(Q / alpha, dim=-1)


def boltzmann_policy(Q: torch.Tensor, alpha: float) -> torch.Tensor:
    """pi(a | s) = exp((Q(s, a) - V(s)) / alpha), eq. (ebm-soft-policy); shape of ``Q``."""
    return torch.softmax(Q / alpha, dim=-1)


def soft_value_iteration(mdp: TabularMDP, gamma: float, alpha: float, *, tol: float = 1e-12,
                         max_iter: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact soft Q and V of ``mdp`` by iterating the soft Bellman equation, eq. (ebm-soft-bellman):
    Q <- R + gamma P V, V = alpha logsumexp(Q / alpha), V = 0 at terminal states. The map is a
    gamma-contraction in the sup norm, so the iteration converges from any start."""
    gamma = _checks.real(gamma, "gamma", positive=True)
    alpha = _checks.real(alpha, "alpha", positive=True)
    if gamma >= 1:
        raise ValueError(f"gamma must be below 1 for the iteration to contract, got {gamma}")
    V = torch.zeros(mdp.P.shape[0], dtype=mdp.P.dtype, device=mdp.P.device)
    for _ in range(_checks.integer(max_iter, "max_iter", minimum=1)):
        Q = mdp.R + gamma * mdp.P @ V                                          # (S, A)
        V_new = torch.where(mdp.terminal, 0.0, soft_value(Q, alpha))
        if float((V_new - V).abs().max()) < tol:
            return Q, V_new
        V = V_new
    raise RuntimeError(f"soft value iteration did not converge in {max_iter} iterations")


def soft_q_learning(mdp: TabularMDP, gamma: float, alpha: float, *, steps: int, lr: float = 0.1,
                    n_agents: int = 1, max_len: int = 50, behaviour: str = "boltzmann",
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Soft Q-learning with a table, ``n_agents`` independent learners run side by side.

    Each agent acts with the Boltzmann policy of its current Q (eq. (ebm-soft-policy)), or with
    ``behaviour="uniform"`` picks actions uniformly at random (the update does not depend on how the
    action was chosen: soft Q-learning is off-policy), and after every
    transition (s, a, r, s') takes one step on the squared soft Bellman residual,
    Q(s, a) += lr (r + gamma V(s') - Q(s, a)), with V(s') = alpha logsumexp(Q(s', .) / alpha) and
    V = 0 at terminal states (the target held fixed: a semi-gradient step). Episodes restart from
    ``mdp.start`` at a terminal state or after ``max_len`` steps. Returns ``Q`` ``(n_agents, S, A)``,
    ``episodes`` (finished per agent) and ``far`` (episodes per agent that ended in each terminal state,
    ``(n_agents, S)``).
    """
    gamma = _checks.real(gamma, "gamma", positive=True)
    alpha = _checks.real(alpha, "alpha", positive=True)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.integer(steps, "steps", minimum=1)
    n_agents = _checks.integer(n_agents, "n_agents", minimum=1)
    max_len = _checks.integer(max_len, "max_len", minimum=1)
    if gamma >= 1 or lr > 1:
        raise ValueError("need gamma < 1 and lr <= 1")
    if behaviour not in ("boltzmann", "uniform"):
        raise ValueError(f"behaviour must be 'boltzmann' or 'uniform', got {behaviour!r}")
    dev = mdp.P.device
    n_s, n_a = mdp.R.shape
    Q = torch.zeros(n_agents, n_s, n_a, dtype=torch.float64, device=dev)
    s = torch.full((n_agents,), mdp.start, dtype=torch.long, device=dev)
    age = torch.zeros(n_agents, dtype=torch.long, device=dev)
    ends = torch.zeros(n_agents, n_s, dtype=torch.long, device=dev)
    rows = torch.arange(n_agents, device=dev)
    for _ in range(steps):
        pi = (boltzmann_policy(Q[rows, s], alpha) if behaviour == "boltzmann"
              else torch.full((n_agents, n_a), 1.0 / n_a, dtype=Q.dtype, device=dev))   # (n, A)
        u = rand(n_agents, 2, generator=generator, device=dev, dtype=torch.float64)
        a = inverse_cdf(pi, u[:, :1])                                          # (n,)
        nxt = inverse_cdf(mdp.P[s, a], u[:, 1:])
        done = mdp.terminal[nxt]
        v_next = torch.where(done, 0.0, soft_value(Q[rows, nxt], alpha))
        target = mdp.R[s, a] + gamma * v_next
        Q[rows, s, a] += lr * (target - Q[rows, s, a])
        ends[rows[done], nxt[done]] += 1
        age = torch.where(done, 0, age + 1)
        restart = done | (age >= max_len)
        age = torch.where(restart, 0, age)
        s = torch.where(restart, mdp.start, nxt)
    return {"Q": Q, "ends": ends, "episodes": ends.sum(-1)}


def policy_return(mdp: TabularMDP, pi: torch.Tensor, gamma: float) -> torch.Tensor:
    """Expected discounted reward from ``mdp.start`` under the policy ``pi`` ``(..., S, A)``, by
    solving the linear Bellman equation V = r_pi + gamma P_pi V (terminal states: V = 0)."""
    gamma = _checks.real(gamma, "gamma", positive=True)
    live = (~mdp.terminal).to(pi.dtype)
    r_pi = (pi * mdp.R).sum(-1) * live                                          # (..., S)
    P_pi = torch.einsum("...sa,sat->...st", pi, mdp.P) * live[:, None] * live[None, :]
    eye = torch.eye(len(live), dtype=pi.dtype, device=pi.device)
    V = torch.linalg.solve(eye - gamma * P_pi, r_pi.unsqueeze(-1)).squeeze(-1)
    return V[..., mdp.start]


# ------------------------------------------------------------------- noise-contrastive estimation

class SelfNormalised(nn.Module):
    """An energy with a learned normaliser: log p(x) = -E(x) - log_z, where ``log_z`` is a free scalar
    trained with the energy by noise-contrastive estimation, eq. (ebm-nce)."""

    def __init__(self, energy: nn.Module, log_z: float = 0.0):
        super().__init__()
        if not isinstance(energy, nn.Module):
            raise TypeError(f"energy must be a torch.nn.Module, got {type(energy).__name__}")
        self.energy = energy
        self.log_z = nn.Parameter(torch.tensor(float(_checks.real(log_z, "log_z"))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.energy(x) - self.log_z                                  # (n,) log p(x)


def gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; 0, std^2 I) of rows ``(n, d)``: the noise density of :func:`fit_nce`."""
    d = x.shape[-1]
    return -0.5 * (x / std).pow(2).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def nce_loss(log_p_data: torch.Tensor, log_p_noise: torch.Tensor, log_q_data: torch.Tensor,
             log_q_noise: torch.Tensor, nu: float) -> torch.Tensor:
    """The NCE loss, eq. (ebm-nce): logistic regression of data against ``nu`` times as many noise
    points, with logit G(x) = log p(x) - log(nu q(x)); mean over data, noise weighted by ``nu``:
    -E_data log sigma(G) - nu E_noise log(1 - sigma(G))."""
    nu = _checks.real(nu, "nu", positive=True)
    g_data = log_p_data - log_q_data - math.log(nu)
    g_noise = log_p_noise - log_q_noise - math.log(nu)
    return F.softplus(-g_data).mean() + nu * F.softplus(g_noise).mean()


def fit_nce(model: SelfNormalised, data: torch.Tensor, *, nu: int = 10, noise_std: float = 2.5,
            steps: int = 500, lr: float = 1e-3, lr_decay: bool = True, batch_size: int = 128,
            generator: torch.Generator | None = None, device=None) -> list[float]:
    """Fit a :class:`SelfNormalised` energy by NCE, eq. (ebm-nce), against Gaussian noise
    N(0, noise_std^2 I), ``nu`` noise points per data point in every batch; the book's training loop
    (Adam, by default with the learning rate decayed to zero so the estimate settles)."""
    if not isinstance(model, SelfNormalised):
        raise TypeError("model must be a SelfNormalised energy (its log_z is learned)")
    _checks.tensor(data, "data", ndim=2, floating=True, min_rows=1)
    nu = _checks.integer(nu, "nu", minimum=1)
    noise_std = _checks.real(noise_std, "noise_std", positive=True)
    dev = get_device(device)

    def loss_fn(m, batch):
        (xb,) = batch if isinstance(batch, (tuple, list)) else (batch,)
        noise = noise_std * randn(nu * len(xb), xb.shape[1], generator=generator, device=dev,
                                  dtype=xb.dtype)
        return nce_loss(m(xb), m(noise), gaussian_log_prob(xb, noise_std),
                        gaussian_log_prob(noise, noise_std), nu)

    return _train.train(model, loss_fn, data.to(dev), steps=steps, lr=lr, lr_decay=lr_decay,
                        batch_size=batch_size, generator=generator, device=dev, desc="NCE",
                        show_progress=False)

"""Normalizing flows, continuous flows, flow matching and rectified flow (chapter book/flows.md).

Discrete flows map data to latent, ``z = f(x)``, through invertible layers; every layer returns
``(y, log|det dy/dx|)`` from ``forward`` and undoes itself in ``inverse``. :class:`Flow` composes
them and scores data by the change of variables, eq. (flow-cov-layers). Continuous flows reuse
the ODE solvers of :mod:`mlbook.ode` (the diffusion chapters' code, not a copy). Time runs as in
the book's EDM table: ``t = 0`` is data, ``t = 1`` is noise, ``x_t = (1 - t) x0 + t x1``.
Equation labels refer to ``book/flows.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import _checks, nets, ode
from .device import get_device

__all__ = ["alternating_masks", "AdditiveCoupling", "AffineCoupling", "Permutation", "Scaling", "Flow",
           "nice", "realnvp", "nll_loss", "logdet_autograd", "standard_normal_log_prob",
           "cnf_log_prob", "sample_ode", "flow_matching_loss", "reflow_pairs", "straightness",
           "one_step_error"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- coupling layers

def _mask(mask, dim: int | None = None) -> torch.Tensor:
    """Check a binary coupling mask (1 = passed through unchanged, 0 = transformed) and return it as float."""
    mask = torch.as_tensor(mask)
    if mask.ndim != 1:
        raise ValueError(f"mask must be 1-D (one entry per coordinate), got shape {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask must hold only 0 and 1, got {mask.tolist()}")
    if dim is not None and len(mask) != dim:
        raise ValueError(f"mask has {len(mask)} entries but the layer acts on dim={dim} coordinates")
    n_kept = int(mask.sum())
    if n_kept == 0 or n_kept == len(mask):
        raise ValueError(f"mask must keep some coordinates (1) and transform the others (0), got {mask.tolist()}: "
                         "an all-0 mask has nothing to condition on, an all-1 mask changes nothing")
    return mask.to(torch.float32)


def alternating_masks(dim: int, n: int) -> list[torch.Tensor]:
    """``n`` masks over ``dim`` coordinates alternating between even (1, 0, 1, ...) and odd (0, 1, 0, ...)."""
    dim = _checks.integer(dim, "dim", minimum=2)
    n = _checks.integer(n, "n", minimum=1)
    even = (torch.arange(dim) % 2 == 0).float()
    return [even if k % 2 == 0 else 1 - even for k in range(n)]


def _mlp(dim: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    """A conditioner network R^dim -> R^out whose last layer starts at zero (the coupling starts as the identity)."""
    net = nets.mlp(dim, *[hidden] * layers, out, activation=nn.SiLU)
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class _Layer(nn.Module):
    dim: int

    def _check(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return _checks.tensor(x, name, ndim=2, last_dim=self.dim, floating=True)


class AdditiveCoupling(_Layer):
    """NICE's additive coupling, eq. (flow-additive): y = x on the mask, y = x + m(x * mask) off it; log|det| = 0."""

    def __init__(self, mask, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.register_buffer("mask", _mask(mask))
        self.dim = len(self.mask)
        self.net = _mlp(self.dim, _checks.integer(hidden, "hidden", minimum=1), self.dim,
                        _checks.integer(layers, "layers", minimum=1))

    def _shift(self, x_kept: torch.Tensor) -> torch.Tensor:
        return self.net(x_kept) * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x, "x")
        m = self.mask.to(x.dtype)
        return x + self._shift(x * m), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, "y")
        m = self.mask.to(y.dtype)
        return y - self._shift(y * m)


class AffineCoupling(_Layer):
    """RealNVP's affine coupling, eq. (flow-affine): off the mask y = x exp(a) + b, log|det| = sum of a, eq. (flow-affine-logdet).

    The book writes the log-scale a and the shift b (the code's ``s`` and ``t``, RealNVP's names).
    The log-scale is ``s = scale * tanh(raw)`` with a learned ``scale`` per coordinate, which keeps
    early training from producing huge exponentials.
    """

    def __init__(self, mask, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.register_buffer("mask", _mask(mask))
        self.dim = len(self.mask)
        self.net = _mlp(self.dim, _checks.integer(hidden, "hidden", minimum=1), 2 * self.dim,
                        _checks.integer(layers, "layers", minimum=1))
        self.scale = nn.Parameter(torch.ones(self.dim))

    def _params(self, x_kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(x_kept).chunk(2, dim=1)                       # (n, d) each
        free = 1 - self.mask.to(x_kept.dtype)
        return self.scale * torch.tanh(raw_s) * free, t * free

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x, "x")
        s, t = self._params(x * self.mask.to(x.dtype))
        return x * s.exp() + t, s.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, "y")
        s, t = self._params(y * self.mask.to(y.dtype))                     # y = x on the mask
        return (y - t) * (-s).exp()


class Permutation(_Layer):
    """Reorders the coordinates, y = x[:, perm]; a permutation matrix has |det| = 1."""

    def __init__(self, perm: Sequence[int]):
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.ndim != 1 or sorted(perm.tolist()) != list(range(len(perm))):
            raise ValueError(f"perm must be a permutation of 0..d-1, got {perm.tolist()}")
        self.dim = len(perm)
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm))

    @classmethod
    def reverse(cls, dim: int) -> "Permutation":
        return cls(list(range(_checks.integer(dim, "dim", minimum=1)))[::-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x, "x")
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._check(y, "y")[:, self.inv]


class Scaling(_Layer):
    """NICE's final diagonal scaling, eq. (flow-nice-scaling): y = x exp(a), log|det| = sum of a.

    The log-scales a are the parameter ``log_scale``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        self.log_scale = nn.Parameter(torch.zeros(self.dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x, "x")
        s = self.log_scale.to(x.dtype)
        return x * s.exp(), s.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._check(y, "y") * (-self.log_scale.to(y.dtype)).exp()


# ---------------------------------------------------------------- the composed flow

def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) for each row of z: shape (n,)."""
    return -0.5 * (z.square().sum(1) + z.shape[1] * math.log(2 * math.pi))


class Flow(nn.Module):
    """A stack of invertible layers data -> latent with a standard-normal latent.

    ``log_prob`` implements eq. (flow-cov-layers): log p(x) = log N(f(x)) + sum of the layers' log|det|.
    ``sample`` draws z ~ N(0, I) and runs the layers backwards; ``intermediates`` returns every
    state along the way (for plotting a Gaussian deformed layer by layer).
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        if len(layers) == 0:
            raise ValueError("a Flow needs at least one layer")
        dims = {getattr(layer, "dim", None) for layer in layers}
        if len(dims) != 1 or None in dims:
            raise ValueError(f"all layers must act on the same dimension, got {sorted(map(str, dims))}")
        self.dim = dims.pop()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f(x) and log|det df/dx| per row."""
        _checks.tensor(x, "x", ndim=2, last_dim=self.dim, floating=True)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """x = f^{-1}(z), layers undone in reverse order."""
        return self.intermediates(z)[-1]

    def intermediates(self, z: torch.Tensor) -> list[torch.Tensor]:
        """[z, after undoing the last layer, ..., x]: ``len(layers) + 1`` states of shape (n, d)."""
        _checks.tensor(z, "z", ndim=2, last_dim=self.dim, floating=True)
        states = [z]
        for layer in reversed(self.layers):
            states.append(layer.inverse(states[-1]))
        return states

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        n = _checks.integer(n, "n", minimum=1)
        p = next(self.parameters(), None)
        dev, dtype = (p.device, p.dtype) if p is not None else (get_device(), torch.float32)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype).to(dev)
        return self.inverse(z)


def nice(dim: int = 2, n_couplings: int = 4, hidden: int = 64, layers: int = 2) -> Flow:
    """NICE: additive couplings with alternating masks, then one diagonal scaling layer."""
    couplings = [AdditiveCoupling(m, hidden, layers) for m in alternating_masks(dim, n_couplings)]
    return Flow(couplings + [Scaling(dim)])


def realnvp(dim: int = 2, n_couplings: int = 4, hidden: int = 64, layers: int = 2) -> Flow:
    """RealNVP: affine couplings with alternating masks."""
    return Flow([AffineCoupling(m, hidden, layers) for m in alternating_masks(dim, n_couplings)])


def nll_loss(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of a batch, eq. (flow-mle); use as ``train(flow, nll_loss, data)``."""
    return -flow.log_prob(x).mean()


def logdet_autograd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """log|det J| of a map R^d -> R^d at each row of ``x`` by brute force: the full Jacobian by autograd.

    O(d) backward passes per point; the check that a layer's cheap log-determinant is right.
    """
    _checks.tensor(x, "x", ndim=2, floating=True)
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], row)   # (d, d)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# ---------------------------------------------------------------- continuous flows

def cnf_log_prob(velocity: Field, x: torch.Tensor, *, n_steps: int = 50, method: str = "rk4",
                 divergence: str = "exact", generator: torch.Generator | None = None) -> torch.Tensor:
    """log p_0(x) of the continuous flow dx/dt = velocity(x, t) with a N(0, I) prior at t = 1.

    Implements eq. (sde-ode-loglik), the instantaneous change of variables of book/diffusion_sde.md,
    by calling :func:`mlbook.ode.log_likelihood` from t = 0 to 1 with an
    exact trace (``divergence="exact"``, d backward passes) or Hutchinson's estimate.
    """
    n_steps = _checks.integer(n_steps, "n_steps", minimum=1)
    ts = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    return ode.log_likelihood(velocity, x, ts, standard_normal_log_prob, method=method,
                              divergence=divergence, generator=generator)[0]


@torch.no_grad()
def sample_ode(velocity: Field, noise: torch.Tensor, *, n_steps: int = 50, method: str = "euler",
               return_path: bool = False):
    """Generate by integrating dx/dt = velocity(x, t) from the noise at t = 1 back to t = 0.

    ``n_steps`` uniform steps of ``method`` (:data:`mlbook.ode.STEPPERS`); Euler costs one network
    evaluation per step, Heun two. With ``return_path`` also the states, shape (n_steps + 1, n, d).
    """
    n_steps = _checks.integer(n_steps, "n_steps", minimum=1)
    ts = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
    path = [noise]
    x = ode.solve(velocity, noise, ts, method=method,
                  callback=(lambda i, t, state: path.append(state)) if return_path else None)
    return (x, torch.stack(path)) if return_path else x


# ---------------------------------------------------------------- flow matching and rectified flow

def flow_matching_loss(model: Field, x0: torch.Tensor, x1: torch.Tensor | None = None, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Conditional flow-matching loss on the straight path, eq. (flow-cfm-loss).

    With x_t = (1 - t) x0 + t x1 and t ~ U(0, 1), regress ``model(x_t, t)`` on x1 - x0. ``x1`` is the
    paired noise (reflow gives coupled pairs); if omitted, independent N(0, I) noise is drawn.
    """
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    if x1 is None:
        x1 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    elif x1.shape != x0.shape:
        raise ValueError(f"x1 must have the shape of x0 {tuple(x0.shape)}, got {tuple(x1.shape)}")
    t = torch.rand(len(x0), 1, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = (1 - t) * x0 + t * x1
    return (model(x_t, t[:, 0]) - (x1 - x0)).square().sum(1).mean()


@torch.no_grad()
def reflow_pairs(velocity: Field, noise: torch.Tensor, *, n_steps: int = 100,
                 method: str = "rk4") -> tuple[torch.Tensor, torch.Tensor]:
    """Reflow's training pairs, eq. (flow-reflow): (x0, x1) = (ODE solution from ``noise``, ``noise``)."""
    return sample_ode(velocity, noise, n_steps=n_steps, method=method), noise


@torch.no_grad()
def straightness(velocity: Field, noise: torch.Tensor, *, n_steps: int = 100, method: str = "rk4") -> float:
    """Straightness S = int_0^1 E||(x1 - x0) - v(x_t, t)||^2 dt along the learned ODE, eq. (flow-straightness).

    Zero exactly when every trajectory is a straight line traversed at constant speed. The
    integral is taken by the trapezoid rule over the ``n_steps + 1`` grid times of a solve from
    t = 1 to 0.
    """
    x0, path = sample_ode(velocity, noise, n_steps=n_steps, method=method, return_path=True)
    ts = torch.linspace(1.0, 0.0, n_steps + 1, dtype=noise.dtype)
    chord = noise - x0                                                     # x1 - x0, (n, d)
    devs = [(chord - velocity(x, t.to(x.device).expand(len(x)))).square().sum(1).mean() for x, t in zip(path, ts)]
    devs = torch.stack(devs)
    return float(0.5 * (devs[1:] + devs[:-1]).mean())                      # trapezoid rule on [0, 1]


@torch.no_grad()
def one_step_error(velocity: Field, noise: torch.Tensor, *, n_steps: int = 100, method: str = "rk4") -> float:
    """Mean squared distance between one Euler step from ``noise`` and the accurate ODE solution.

    The one-step sample is x1 - v(x1, 1); the reference uses ``n_steps`` steps of ``method``.
    """
    one = sample_ode(velocity, noise, n_steps=1, method="euler")
    ref = sample_ode(velocity, noise, n_steps=n_steps, method=method)
    return float((one - ref).square().sum(1).mean())

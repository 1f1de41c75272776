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

    Not the contract of :func:`mlbook.sampling.sample_ode`, which follows a *score* under a noise
    process on a given time grid (the probability-flow ODE of the diffusion chapters); this one
    follows a velocity on ``[0, 1]``, the flows chapter's time, with noise at t = 1.
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


# ---------------------------------------------------------------- Autoregressive flows
# Autoregressive flows (MAF, IAF), planar flows and flows for variational inference, page
# book/flows_autoregressive.md. The masked network is the autoregressive chapter's MADE masks.

from .autoregressive import MaskedLinear, made_masks  # noqa: E402
from .exercises import Case, Verdict, check  # noqa: E402

__all__ += ["MADEConditioner", "MAF", "IAF", "Planar", "maf", "iaf", "planar_flow",
            "sample_and_log_prob", "ReverseKLFit", "fit_reverse_kl", "check_maf_inverse"]


def _order(dim: int, reverse: bool) -> list[int]:
    """``order[d]`` = position of coordinate d: natural (0, 1, ...) or reversed (D-1, ..., 0)."""
    return list(range(dim))[::-1] if reverse else list(range(dim))


class MADEConditioner(nn.Module):
    r"""A continuous MADE: per coordinate a shift and a log-scale that depend only on earlier coordinates.

    ``conditioner(x)`` returns ``(mu, alpha)``, each ``(n, D)``, where ``mu[:, i]`` and
    ``alpha[:, i]`` depend only on the coordinates before i in ``order`` (the shift b_i and the
    log-scale a_i of equation ``flow-ar-maf``, page ``flows_autoregressive``), in one pass. The masks are the
    autoregressive chapter's :func:`mlbook.autoregressive.made_masks`, the output mask stacked
    twice (one copy for the shifts, one for the log-scales). Hidden units are SiLU; the last layer
    starts at zero, so a new layer is the identity. The log-scale is bounded as in
    :class:`AffineCoupling`: ``alpha = scale * tanh(raw)`` with a learned ``scale`` per coordinate.
    ``calls`` counts the forward passes, the unit of cost on the page.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), order: Sequence[int] | None = None):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = [_checks.integer(h, f"hidden[{i}]", minimum=1) for i, h in enumerate(hidden)]
        if not hidden:
            raise ValueError("hidden must name at least one hidden layer width")
        masks = made_masks(self.dim, hidden, order)
        masks[-1] = torch.cat([masks[-1], masks[-1]], dim=0)                 # (2D, h_last)
        layers: list[nn.Module] = []
        for mask in masks[:-1]:
            layers += [MaskedLinear(mask), nn.SiLU()]
        layers.append(MaskedLinear(masks[-1]))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.scale = nn.Parameter(torch.ones(self.dim))
        self.register_buffer("order", torch.as_tensor(list(order) if order is not None
                                                      else range(self.dim), dtype=torch.long))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        mu, raw = self.net(x).chunk(2, dim=1)                                  # (n, D) each
        return mu, self.scale * torch.tanh(raw)


class _Autoregressive(_Layer):
    """An affine autoregressive layer: a MADE conditioner giving each coordinate a shift and a
    log-scale from the coordinates before it in the ordering (reversed with ``reverse``)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), *, reverse: bool = False):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        self.conditioner = MADEConditioner(self.dim, hidden, _order(self.dim, reverse))


class MAF(_Autoregressive):
    r"""A masked autoregressive flow layer (Papamakarios et al. 2017), data -> latent.

    Density direction, one pass, equation ``flow-ar-maf``: z = (x - mu(x)) * exp(-alpha(x)), with
    log|det dz/dx| = -sum_i alpha_i(x), equation ``flow-ar-logdet``. Sampling direction,
    :meth:`inverse`: x_i = z_i exp(alpha_i(x_<i)) + mu_i(x_<i) needs the x_<i first, so it takes D
    passes (each pass fixes one more coordinate in the ordering).
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x, "x")
        mu, alpha = self.conditioner(x)
        return (x - mu) * (-alpha).exp(), -alpha.sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        z = self._check(z, "z")
        x = torch.zeros_like(z)
        for _ in range(self.dim):          # after pass k the first k coordinates (in order) are exact
            mu, alpha = self.conditioner(x)
            x = z * alpha.exp() + mu
        return x

    def push(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = inverse(z) and log|det dx/dz| = sum_i alpha_i(x): D passes, then one more."""
        x = self.inverse(z)
        return x, -self(x)[1]


class IAF(_Autoregressive):
    r"""An inverse autoregressive flow layer (Kingma et al. 2016), data -> latent like every layer here.

    The conditioner reads the latent: x = z * exp(alpha(z)) + mu(z), equation ``flow-ar-iaf``, with
    alpha_i, mu_i depending on z_<i. Sampling (:meth:`inverse`, :meth:`push`) is one pass with
    log|det dx/dz| = sum_i alpha_i(z); the density of an outside point x (:meth:`forward`) must
    solve for z one coordinate at a time: D passes.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x, "x")
        z = torch.zeros_like(x)
        for _ in range(self.dim):
            mu, alpha = self.conditioner(z)
            z = (x - mu) * (-alpha).exp()
        # the last pass read z with all but the last coordinate exact, and alpha_i reads only z_<i
        return z, -alpha.sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.push(z)[0]

    def push(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = z exp(alpha(z)) + mu(z) and log|det dx/dz| = sum_i alpha_i(z): one pass."""
        z = self._check(z, "z")
        mu, alpha = self.conditioner(z)
        return z * alpha.exp() + mu, alpha.sum(1)


class Planar(_Layer):
    r"""A planar flow layer (Rezende & Mohamed 2015), written in the sampling direction.

    :meth:`push`: y = z + u_hat tanh(w^T z + b) (the page writes the bias b as c), equation ``flow-ar-planar``, with
    log|det dy/dz| = log|1 + u_hat^T psi(z)|, psi(z) = (1 - tanh^2(w^T z + b)) w, equation
    ``flow-ar-planar-logdet``. The map is invertible when w^T u_hat >= -1; the paper's
    reparameterisation u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(a) = -1 + softplus(a),
    equation ``flow-ar-planar-uhat``, gives w^T u_hat = m(w^T u) > -1 for every u and w.
    The inverse has no closed form but reduces to one monotone scalar equation, solved by
    bisection in :meth:`forward` (the data -> latent direction the :class:`Flow` container uses).
    """

    def __init__(self, dim: int, *, init_scale: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        init_scale = _checks.real(init_scale, "init_scale", nonnegative=True)
        self.w = nn.Parameter(init_scale * torch.randn(self.dim, generator=generator))
        self.u = nn.Parameter(init_scale * torch.randn(self.dim, generator=generator))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """The constrained u with w^T u_hat = -1 + softplus(w^T u) > -1."""
        wu = self.w @ self.u
        return self.u + (nn.functional.softplus(wu) - 1 - wu) * self.w / self.w.square().sum().clamp_min(1e-12)

    def push(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._check(z, "z")
        w, b, u = self.w.to(z.dtype), self.b.to(z.dtype), self.u_hat().to(z.dtype)
        h = torch.tanh(z @ w + b)                                              # (n,)
        psi_u = (1 - h.square()) * (w @ u)                                     # u^T psi(z), (n,)
        return z + h[:, None] * u, torch.log((1 + psi_u).abs())

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.push(z)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z with push(z) = x, by bisection on a = w^T z, and log|det dz/dx| = -log|1 + u_hat^T psi(z)|.

        With c = w^T u_hat > -1, a solves a + c tanh(a + b) = w^T x, whose left side increases in a;
        the root lies within |c| of w^T x.
        """
        x = self._check(x, "x")
        w, b, u = self.w.to(x.dtype), self.b.to(x.dtype), self.u_hat().to(x.dtype)
        c, s = w @ u, x @ w
        lo, hi = s - c.abs() - 1e-6, s + c.abs() + 1e-6
        for _ in range(80 if x.dtype == torch.float64 else 40):
            mid = 0.5 * (lo + hi)
            above = mid + c * torch.tanh(mid + b) > s
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        a = 0.5 * (lo + hi)
        z = x - torch.tanh(a + b)[:, None] * u
        return z, -self.push(z)[1]


def maf(dim: int, n_layers: int = 4, hidden: Sequence[int] = (64, 64)) -> Flow:
    """A stack of MAF layers, the ordering reversed from one layer to the next."""
    n_layers = _checks.integer(n_layers, "n_layers", minimum=1)
    return Flow([MAF(dim, hidden, reverse=k % 2 == 1) for k in range(n_layers)])


def iaf(dim: int, n_layers: int = 4, hidden: Sequence[int] = (64, 64)) -> Flow:
    """A stack of IAF layers, the ordering reversed from one layer to the next."""
    n_layers = _checks.integer(n_layers, "n_layers", minimum=1)
    return Flow([IAF(dim, hidden, reverse=k % 2 == 1) for k in range(n_layers)])


def planar_flow(dim: int, n_layers: int, *, generator: torch.Generator | None = None) -> Flow:
    """``n_layers`` planar layers on a standard-normal base (small random initial w and u)."""
    n_layers = _checks.integer(n_layers, "n_layers", minimum=1)
    return Flow([Planar(dim, generator=generator) for _ in range(n_layers)])


def _push(layer: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer in the sampling direction: x = layer^{-1}(z) and log|det dx/dz|."""
    if hasattr(layer, "push"):
        return layer.push(z)
    x = layer.inverse(z)
    return x, -layer(x)[1]


def sample_and_log_prob(flow: Flow, n: int | None = None, *, z: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draw x from the flow and return ``(x, log q(x))`` together, differentiably (reparameterised).

    log q(x) = log N(z; 0, I) - sum_k log|det dx/dz| over the layers, run from the latent to the
    data: equation ``flow-ar-sample-logq``. Pass ``n`` (fresh z on the flow's device) or ``z``
    itself. One pass per IAF or planar layer; a MAF layer needs D + 1.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be an mlbook.flows.Flow, got {type(flow).__name__}")
    if (n is None) == (z is None):
        raise ValueError("give exactly one of n (number of samples) and z (latent points)")
    if z is None:
        n = _checks.integer(n, "n", minimum=1)
        p = next(flow.parameters(), None)
        dev, dtype = (p.device, p.dtype) if p is not None else (get_device(), torch.float32)
        z = torch.randn(n, flow.dim, generator=generator, dtype=dtype).to(dev)
    _checks.tensor(z, "z", ndim=2, last_dim=flow.dim, floating=True, min_rows=1)
    log_q = standard_normal_log_prob(z)
    x = z
    for layer in reversed(flow.layers):
        x, ld = _push(layer, x)
        log_q = log_q - ld
    return x, log_q


class ReverseKLFit:
    """What :func:`fit_reverse_kl` returns: the loss per step and the final bounds on log Z.

    ``elbo`` is the mean of log p~(x) - log q(x) over ``n_eval`` fresh samples (equation
    ``flow-ar-elbo``), ``elbo_se`` its standard error; ``log_z_is`` the importance-sampling
    estimate log mean exp(log p~ - log q), also below log Z in expectation but tighter.
    ``kl = log Z - elbo`` for a known ``log Z``.
    """

    def __init__(self, losses: list[float], elbo: float, elbo_se: float, log_z_is: float):
        self.losses, self.elbo, self.elbo_se, self.log_z_is = losses, elbo, elbo_se, log_z_is

    def __repr__(self) -> str:
        return (f"ReverseKLFit(elbo={self.elbo:.4f} ± {self.elbo_se:.4f}, "
                f"log_z_is={self.log_z_is:.4f}, steps={len(self.losses)})")


def fit_reverse_kl(flow: Flow, log_target: Callable[[torch.Tensor], torch.Tensor], *, steps: int,
                   batch_size: int = 256, lr: float = 5e-3, n_eval: int = 8192,
                   generator: torch.Generator | None = None, device=None,
                   desc: str = "reverse KL") -> ReverseKLFit:
    r"""Fit the flow q to an unnormalised log-density log p~ by minimising the reverse KL.

    Minimises E_q[log q(x) - log p~(x)] = KL[q, p] - log Z (equation ``flow-ar-elbo``) over the
    flow's parameters with reparameterised samples x = T(z), z ~ N(0, I), through the book's one
    training loop :func:`mlbook.train.train` (the batches are the latent draws). Returns a
    :class:`ReverseKLFit` with the ELBO, which is below log Z by exactly KL[q, p].
    ``log_target`` maps ``(n, d)`` points to ``(n,)`` log-densities, differentiably.
    """
    from .train import train

    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be an mlbook.flows.Flow, got {type(flow).__name__}")
    if not callable(log_target):
        raise TypeError("log_target must be callable: (n, d) points -> (n,) log-densities")
    n_eval = _checks.integer(n_eval, "n_eval", minimum=2)
    dim = flow.dim

    dtype = next(flow.parameters()).dtype

    def latents(n: int, generator=None) -> torch.Tensor:
        return torch.randn(n, dim, generator=generator, dtype=dtype)

    def loss(model: Flow, z: torch.Tensor) -> torch.Tensor:
        x, log_q = sample_and_log_prob(model, z=z)
        log_p = log_target(x)
        if log_p.shape != log_q.shape:
            raise ValueError(f"log_target must return shape {tuple(log_q.shape)}, got {tuple(log_p.shape)}")
        return (log_q - log_p).mean()

    losses = train(flow, loss, latents, steps=steps, lr=lr, batch_size=batch_size, lr_decay=True,
                   generator=generator, device=device, desc=desc)
    flow.eval()
    with torch.no_grad():
        p = next(flow.parameters())
        z = torch.randn(n_eval, dim, generator=generator).to(p.device, p.dtype)
        x, log_q = sample_and_log_prob(flow, z=z)
        log_w = (log_target(x) - log_q).double()
    return ReverseKLFit(losses, float(log_w.mean()), float(log_w.std() / math.sqrt(n_eval)),
                        float(torch.logsumexp(log_w, 0) - math.log(n_eval)))


def check_maf_inverse(fn: Callable[[MAF, torch.Tensor], torch.Tensor]) -> Verdict:
    """Checker for the reader's MAF sampling pass ``fn(layer, z) -> x`` (page ``flows_autoregressive``).

    ``layer`` is a :class:`MAF` with random weights whose ``layer.conditioner(x)`` returns
    ``(mu, alpha)``; ``fn`` must return x with ``layer(x)[0] == z``, for natural and reversed
    orderings, in 2 to 5 dimensions, with at most D calls of the conditioner.
    """
    def layer_and_z(dim: int, reverse: bool, seed: int) -> tuple[MAF, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        layer = MAF(dim, (16, 16), reverse=reverse).double()
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(0.6 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return layer, torch.randn(7, dim, generator=g, dtype=torch.float64)

    def inverts(layer: MAF, z: torch.Tensor):
        def test(x) -> bool:
            passes = layer.conditioner.calls                     # the reader's calls only, so far
            return (isinstance(x, torch.Tensor) and x.shape == z.shape and passes <= layer.dim
                    and bool(torch.allclose(layer(x)[0], z, atol=1e-8)))
        return test

    cases = []
    for dim, reverse, seed in [(2, False, 0), (3, False, 1), (5, False, 2), (4, True, 3)]:
        layer, z = layer_and_z(dim, reverse, seed)
        order = "reversed" if reverse else "natural"
        cases.append(Case(f"D = {dim}, {order} order: layer(x) returns z, in at most D passes",
                          (layer, z), inverts(layer, z),
                          "x_i needs mu_i and alpha_i at x_<i, unknown at first: start from x = 0 "
                          "and recompute x = z * exp(alpha(x)) + mu(x) D times."))
    return check(fn, cases, name=getattr(fn, "__name__", "your inverse"))


# ---------------------------------------------------------------- Flows on images
# Dequantization, bits per dimension and RealNVP's multi-scale architecture (page
# book/flows_images.md). Images are stored flat, (n, c*h*w) in channel-major order, so that the
# multi-scale flow has the interface of :class:`Flow` and :func:`logdet_autograd` applies to it.

from . import exercises as _exercises  # noqa: E402

__all__ += ["squeeze", "unsqueeze", "checkerboard_mask", "channel_mask", "LogitTransform",
            "MultiScaleFlow", "dequantize", "dequantized_nll", "bits_per_dim",
            "IndependentCategorical", "fit_full_gaussian", "check_squeeze"]


def _image(x: torch.Tensor, name: str) -> torch.Tensor:
    x = _checks.tensor(x, name, ndim=4)
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"{name} must have even height and width to squeeze 2x2 blocks, "
                         f"got shape {tuple(x.shape)} (n, c, h, w)")
    return x


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Space to channels, eq. (flowimg-squeeze): (n, c, h, w) -> (n, 4c, h/2, w/2).

    Every 2x2 block of every channel becomes four channels at one position; channel
    ``4k + 2i + j`` of the output holds pixel (i, j) of the blocks of input channel k. No value
    changes place in memory order in a way that needs a Jacobian: it is a permutation, |det| = 1.
    """
    n, c, h, w = _image(x, "x").shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2)                       # (n, c, h/2, i, w/2, j)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`: (n, 4c, h, w) -> (n, c, 2h, 2w)."""
    x = _checks.tensor(x, "x", ndim=4)
    n, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"x must have a multiple of 4 channels to unsqueeze, got shape {tuple(x.shape)}")
    x = x.reshape(n, c4 // 4, 2, 2, h, w)                            # (n, c, i, j, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)


def _shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"shape must be (channels, height, width), got {tuple(shape)}")
    c, h, w = (_checks.integer(s, "shape entry", minimum=1) for s in shape)
    return c, h, w


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> torch.Tensor:
    """RealNVP's checkerboard mask on an image of ``shape = (c, h, w)``, flattened to c*h*w entries.

    1 (kept) where ``(row + column) % 2 == parity`` in every channel, 0 (transformed) elsewhere.
    """
    c, h, w = _shape(shape)
    parity = _checks.choice(parity, "parity", (0, 1))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((rows + cols) % 2 == parity).float()
    return board.expand(c, h, w).reshape(-1)


def channel_mask(shape: Sequence[int], parity: int = 0) -> torch.Tensor:
    """RealNVP's channel mask on ``shape = (c, h, w)``: keeps the first half of the channels
    (``parity=0``) or the second half (``parity=1``), flattened to c*h*w entries."""
    c, h, w = _shape(shape)
    parity = _checks.choice(parity, "parity", (0, 1))
    if c % 2:
        raise ValueError(f"a channel mask needs an even number of channels, got shape {(c, h, w)}")
    first = (torch.arange(c) < c // 2).float()
    keep = first if parity == 0 else 1 - first
    return keep[:, None, None].expand(c, h, w).reshape(-1)


class LogitTransform(_Layer):
    """The logit pre-transform of data in [0, 1), eq. (flowimg-logit).

    y = logit(alpha + (1 - 2 alpha) v); log|det| = sum_j [log(1 - 2 alpha) - log s_j - log(1 - s_j)]
    with s = alpha + (1 - 2 alpha) v. The margin ``alpha`` keeps the logit finite at 0 and 1; the
    inverse maps R onto the slightly wider interval (-alpha, 1 - alpha) / (1 - 2 alpha), so a
    model built on it puts a little mass outside [0, 1)^D (samples may need clipping).
    """

    def __init__(self, dim: int, alpha: float = 0.05):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        self.alpha = _checks.real(alpha, "alpha", positive=True)
        if not self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self._check(v, "v")
        s = self.alpha + (1 - 2 * self.alpha) * v
        if bool(((s <= 0) | (s >= 1)).any()):
            raise ValueError(f"LogitTransform expects data in [0, 1] (its support is slightly wider, "
                             f"alpha + (1 - 2 alpha) v in (0, 1) with alpha = {self.alpha}); "
                             f"dequantize and divide by the number of levels first")
        logdet = (math.log(1 - 2 * self.alpha) - s.log() - torch.log1p(-s)).sum(1)
        return s.log() - torch.log1p(-s), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, "y")
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


class MultiScaleFlow(nn.Module):
    """RealNVP's multi-scale flow on images stored flat, (n, c*h*w); eqs. (flowimg-multiscale).

    Per scale: ``n_couplings`` affine couplings with alternating checkerboard masks, a squeeze
    (:func:`squeeze`), ``n_couplings`` couplings with alternating channel masks, and a factor-out:
    the second half of the channels leaves as latent, the first half goes on to the next scale.
    After ``n_scales`` scales, ``n_final`` checkerboard couplings act on what is left. Every
    coupling is an :class:`AffineCoupling` (an MLP conditioner over the whole current tensor).
    With ``alpha`` set, a :class:`LogitTransform` comes first and the flow models data in [0, 1).

    The latent ``z`` concatenates the factored-out parts, finest scale first, then the final
    block; all of it is N(0, I) under the model, so ``log_prob`` is eq. (flow-cov-layers) with the
    squeezes and splits contributing log|det| = 0. ``sample(temperature=T)`` draws z ~ N(0, T^2 I).
    """

    def __init__(self, shape: Sequence[int] = (1, 8, 8), n_scales: int = 2, n_couplings: int = 3,
                 n_final: int = 4, hidden: int = 64, layers: int = 2, alpha: float | None = 0.05):
        super().__init__()
        c, h, w = _shape(shape)
        n_scales = _checks.integer(n_scales, "n_scales", minimum=1)
        n_couplings = _checks.integer(n_couplings, "n_couplings", minimum=1)
        n_final = _checks.integer(n_final, "n_final", minimum=1)
        if h % 2**n_scales or w % 2**n_scales:
            raise ValueError(f"{n_scales} scales halve height and width {n_scales} times: "
                             f"{h}x{w} is not divisible by {2**n_scales}")
        self.shape, self.dim = (c, h, w), c * h * w
        self.pre = LogitTransform(self.dim, alpha) if alpha is not None else None
        self.in_shapes, self.checker, self.channel = [], nn.ModuleList(), nn.ModuleList()
        for _ in range(n_scales):
            self.in_shapes.append((c, h, w))
            self.checker.append(nn.ModuleList(
                AffineCoupling(checkerboard_mask((c, h, w), k % 2), hidden, layers)
                for k in range(n_couplings)))
            c, h, w = 4 * c, h // 2, w // 2                            # after the squeeze
            self.channel.append(nn.ModuleList(
                AffineCoupling(channel_mask((c, h, w), k % 2), hidden, layers)
                for k in range(n_couplings)))
            c = c // 2                                                 # half leaves as latent
        self.final_shape = (c, h, w)
        self.final = nn.ModuleList(AffineCoupling(checkerboard_mask((c, h, w), k % 2), hidden, layers)
                                   for k in range(n_final))

    @property
    def latent_sizes(self) -> list[int]:
        """Sizes of the latent blocks: one per scale (finest first), then the final block."""
        sizes = [c * h * w // 2 for c, h, w in self.in_shapes]         # 2c channels at h/2 x w/2
        return sizes + [math.prod(self.final_shape)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f(x), shape (n, c*h*w), and log|det df/dx| per row."""
        x = _checks.tensor(x, "x", ndim=2, last_dim=self.dim, floating=True)
        n, logdet, zs = len(x), x.new_zeros(len(x)), []
        if self.pre is not None:
            x, logdet = self.pre(x)
        for (c, h, w), checker, channel in zip(self.in_shapes, self.checker, self.channel):
            for layer in checker:
                x, ld = layer(x)
                logdet = logdet + ld
            x = squeeze(x.reshape(n, c, h, w)).reshape(n, -1)         # (n, 4c * h/2 * w/2)
            for layer in channel:
                x, ld = layer(x)
                logdet = logdet + ld
            x = x.reshape(n, 4 * c, h // 2, w // 2)
            zs.append(x[:, 2 * c:].reshape(n, -1))                     # factored out
            x = x[:, :2 * c].reshape(n, -1)                            # goes on
        for layer in self.final:
            x, ld = layer(x)
            logdet = logdet + ld
        return torch.cat(zs + [x], dim=1), logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """x = f^{-1}(z): the final couplings undone, then each scale from the coarsest."""
        z = _checks.tensor(z, "z", ndim=2, last_dim=self.dim, floating=True)
        n = len(z)
        *parts, x = torch.split(z, self.latent_sizes, dim=1)
        for layer in reversed(self.final):
            x = layer.inverse(x)
        for (c, h, w), checker, channel, part in zip(reversed(self.in_shapes), reversed(self.checker),
                                                     reversed(self.channel), reversed(parts)):
            x = torch.cat([x.reshape(n, 2 * c, h // 2, w // 2),
                           part.reshape(n, 2 * c, h // 2, w // 2)], dim=1).reshape(n, -1)
            for layer in reversed(channel):
                x = layer.inverse(x)
            x = unsqueeze(x.reshape(n, 4 * c, h // 2, w // 2)).reshape(n, -1)
            for layer in reversed(checker):
                x = layer.inverse(x)
        return self.pre.inverse(x) if self.pre is not None else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row, eq. (flow-cov-layers) with a N(0, I) latent."""
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet

    def sample(self, n: int, *, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples x = f^{-1}(T z), z ~ N(0, I); T < 1 trades diversity for typical-looking samples."""
        n = _checks.integer(n, "n", minimum=1)
        temperature = _checks.real(temperature, "temperature", nonnegative=True)
        p = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype).to(p.device)
        return self.inverse(temperature * z)


def _levels_data(x: torch.Tensor, levels: int) -> torch.Tensor:
    x = _checks.tensor(x, "x", min_rows=1)
    if x.is_floating_point() and not bool((x == x.round()).all()):
        raise ValueError("x must hold integer pixel values 0, 1, ..., levels - 1 (not yet "
                         "dequantized or rescaled)")
    if bool(((x < 0) | (x > levels - 1)).any()):
        raise ValueError(f"x must hold values in 0..{levels - 1} for levels={levels}, got values "
                         f"from {x.min().item()} to {x.max().item()}")
    return x


def dequantize(x: torch.Tensor, levels: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization, eq. (flowimg-dequant): v = (x + u) / K with u ~ U[0, 1)^D.

    ``x`` holds integers 0..K-1 (K = ``levels``); the result lies in [0, 1)^D and is float32
    (float64 if ``x`` is float64).
    """
    levels = _checks.integer(levels, "levels", minimum=2)
    x = _levels_data(x, levels)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    u = torch.rand(x.shape, generator=generator, dtype=dtype).to(x.device)
    return (x.to(dtype) + u) / levels


def dequantized_nll(model: nn.Module, x: torch.Tensor, levels: int, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean of -log p(v) over a batch at fresh dequantized points v, eq. (flowimg-dequant-bound).

    A training loss: ``train(flow, lambda m, b: dequantized_nll(m, b, 17, generator=g), x)``.
    The model's ``log_prob`` is a density on [0, 1)^D (add D log K for the density of x + u).
    """
    v = dequantize(x, levels, generator=generator)
    return -model.log_prob(v).mean()


def bits_per_dim(log_prob: torch.Tensor, dim: int, *, levels: int | None) -> float:
    """Mean negative log-likelihood in bits per dimension, eq. (flowimg-bpd).

    With ``levels = K``, ``log_prob`` is the log-density of dequantized data scaled to [0, 1)^D,
    and the result is mean[-(log p(v) - D log K)] / (D log 2), an upper bound (in expectation
    over u) on the discrete model's bits per dimension. With ``levels=None``, ``log_prob`` is
    the log-probability of a discrete model, and the result is exact: mean[-log P(x)] / (D log 2).
    """
    log_prob = _checks.tensor(log_prob, "log_prob", ndim=1, floating=True, min_rows=1)
    dim = _checks.integer(dim, "dim", minimum=1)
    shift = 0.0 if levels is None else dim * math.log(_checks.integer(levels, "levels", minimum=2))
    return float(-(log_prob.double() - shift).mean() / (dim * math.log(2.0)))


class IndependentCategorical:
    """The independent-pixels baseline: P(x) = prod_j pi_j(x_j), one histogram per pixel.

    ``fit`` counts the training images' values per pixel with ``pseudocount`` added to every
    level (so an unseen value keeps a small probability); ``log_prob`` is exact, in nats.
    """

    def __init__(self, levels: int, pseudocount: float = 1.0):
        self.levels = _checks.integer(levels, "levels", minimum=2)
        self.pseudocount = _checks.real(pseudocount, "pseudocount", positive=True)

    def fit(self, x: torch.Tensor) -> "IndependentCategorical":
        x = _levels_data(_checks.tensor(x, "x", ndim=2, min_rows=1), self.levels).long()
        counts = torch.nn.functional.one_hot(x, self.levels).sum(0).double()   # (D, K)
        probs = (counts + self.pseudocount) / (len(x) + self.levels * self.pseudocount)
        self.log_probs_ = probs.log()
        return self

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "log_probs_"):
            raise RuntimeError("call fit before log_prob")
        x = _checks.tensor(x, "x", ndim=2, last_dim=len(self.log_probs_))
        x = _levels_data(x, self.levels).long().to(self.log_probs_.device)
        return self.log_probs_.gather(1, x.T).sum(0)                   # (n,)


def fit_full_gaussian(v: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """The maximum-likelihood Gaussian (sample mean, full covariance with 1/n) of rows of ``v``."""
    v = _checks.tensor(v, "v", ndim=2, floating=True).double()
    if len(v) <= v.shape[1]:
        raise ValueError(f"a full covariance in {v.shape[1]} dimensions needs more than "
                         f"{v.shape[1]} rows, got {len(v)}")
    mean = v.mean(0)
    cov = (v - mean).T @ (v - mean) / len(v)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def check_squeeze(fn: Callable[[torch.Tensor], torch.Tensor]) -> _exercises.Verdict:
    """Checker for the reader's ``squeeze(x)``: (n, c, h, w) -> (n, 4c, h/2, w/2), each 2x2 block
    of each channel moved to four channels at the block's position. Any order of the ``4c`` values
    at a position passes: every fixed arrangement is a permutation, as good for a flow as ours."""
    Case, check = _exercises.Case, _exercises.check
    g = torch.Generator().manual_seed(0)

    def blocks_land(x):
        def test(y):
            n, c, h, w = x.shape
            if tuple(y.shape) != (n, 4 * c, h // 2, w // 2):
                return False
            want = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
            want = want.reshape(n, h // 2, w // 2, 4 * c).sort(-1).values
            got = y.permute(0, 2, 3, 1).sort(-1).values
            return bool(torch.equal(want, got))
        return test

    x1 = torch.arange(16.0).reshape(1, 1, 4, 4)
    x2 = torch.randn(2, 3, 6, 4, generator=g)
    cases = [
        Case("a 1x1x4x4 image of the numbers 0..15", (x1,),
             lambda y: isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 4, 2, 2),
             "the output has 4 times the channels and half the height and width."),
        Case("the same image: pixels 0, 1, 4, 5 at position (0, 0)", (x1,), blocks_land(x1),
             "position (i, j) of the output must hold the 2x2 block at rows 2i, 2i+1 and "
             "columns 2j, 2j+1 of the input; reshape to (n, c, h/2, 2, w/2, 2) and permute."),
        Case("a batch of 2 images with 3 channels, 6x4", (x2,), blocks_land(x2),
             "keep each image in its own row of the batch and move only whole 2x2 blocks: "
             "reshape to (n, c, h/2, 2, w/2, 2), then permute the two 2-axes next to c."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "squeeze"))


# ---------------------------------------------------------------- Probability paths and couplings
# Gaussian probability paths x_t = alpha_t x0 + sigma_t eps, the conversions between the four things
# a network can predict, the exact velocity of a Gaussian mixture, and minibatch optimal-transport
# couplings (page book/flows_paths.md).

from . import exercises as _exercises  # noqa: E402

__all__ += ["PREDICTIONS", "straight_path", "convert_prediction", "mixture_denoiser",
            "mixture_velocity", "ot_pairing", "ot_pair_batch", "ot_flow_matching_loss",
            "few_step_error", "check_ot_pairing"]

PREDICTIONS = ("denoiser", "noise", "score", "velocity")


def straight_path(t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t, d alpha/dt, d sigma/dt) of the straight path alpha_t = 1 - t, sigma_t = t."""
    t = torch.as_tensor(t, dtype=torch.float64) if not isinstance(t, torch.Tensor) else t
    return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)


def convert_prediction(pred: torch.Tensor, x: torch.Tensor, *, source: str, target: str,
                       alpha, sigma, d_alpha=None, d_sigma=None) -> torch.Tensor:
    r"""Convert what a network predicts at x_t = x on a Gaussian path, table ``paths-table``.

    ``source`` and ``target`` are among :data:`PREDICTIONS`: the denoiser D = E[x0 | x_t = x],
    the noise E[eps | x_t = x], the score grad log p_t(x), or the marginal velocity
    v = alpha' D + sigma' E[eps | x_t = x] (eq. ``paths-marginal-velocity``). ``alpha``, ``sigma``
    (and, for the velocity, their time derivatives ``d_alpha``, ``d_sigma``) are numbers or tensors
    that broadcast against x, e.g. of shape (n, 1). Everything goes through the denoiser:
    x = alpha D + sigma eps_hat and score = -eps_hat / sigma.
    """
    _checks.choice(source, "source", PREDICTIONS)
    _checks.choice(target, "target", PREDICTIONS)
    _checks.tensor(x, "x", floating=True)
    _checks.tensor(pred, "pred", floating=True)
    if pred.shape != x.shape:
        raise ValueError(f"pred must have the shape of x {tuple(x.shape)}, got {tuple(pred.shape)}")
    a, s = torch.as_tensor(alpha).to(x), torch.as_tensor(sigma).to(x)
    if not bool((s > 0).all()):
        raise ValueError("sigma must be > 0: at sigma = 0 (the data end) x is the data point, "
                         "and noise and score are undefined")
    if "velocity" in (source, target):
        if d_alpha is None or d_sigma is None:
            raise ValueError("converting a velocity needs the path's derivatives d_alpha and d_sigma")
        da, ds = torch.as_tensor(d_alpha).to(x), torch.as_tensor(d_sigma).to(x)
        det = da * s - a * ds                       # alpha' sigma - alpha sigma', never 0 on a path
        if not bool((det != 0).all()):
            raise ValueError("d_alpha * sigma - alpha * d_sigma must be nonzero: the noise-to-signal "
                             "ratio must change with t")
    if source == target:
        return pred
    if source == "denoiser":
        den = pred
    elif source == "noise":
        if not bool((a != 0).all()):
            raise ValueError("alpha must be nonzero to recover the denoiser from a noise prediction")
        den = (x - s * pred) / a
    elif source == "score":
        if not bool((a != 0).all()):
            raise ValueError("alpha must be nonzero to recover the denoiser from a score")
        den = (x + s * s * pred) / a
    else:                                           # velocity: solve v = a' D + s' eps, x = a D + s eps
        den = (s * pred - ds * x) / det
    if target == "denoiser":
        return den
    eps = (x - a * den) / s
    if target == "noise":
        return eps
    if target == "score":
        return -eps / s
    return da * den + ds * eps


def _per_row(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """A number, or one value per row of x, as a column (n, 1) of x's dtype and device."""
    v = torch.as_tensor(value).to(x)
    if v.numel() == 1:
        return v.reshape(1, 1).expand(len(x), 1)
    if v.numel() == len(x):
        return v.reshape(len(x), 1)
    raise ValueError(f"{name} must be a number or hold one value per row of x ({len(x)}), "
                     f"got shape {tuple(v.shape)}")


def _mixture_posterior(mixture, x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x0 | x], E[eps | x]) for x = alpha x0 + sigma eps, x0 from a GaussianMixture."""
    from .data import GaussianMixture

    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    _checks.tensor(x, "x", ndim=2, last_dim=mixture.dim, floating=True)
    a, s = _per_row(alpha, x, "alpha"), _per_row(sigma, x, "sigma")             # (n, 1) each
    means, stds, w = mixture.means.to(x), mixture.stds.to(x), mixture.weights.to(x)
    var = a**2 * stds**2 + s**2                                                    # (n, K)
    if not bool((var > 0).all()):
        raise ValueError("alpha and sigma must not both be zero")
    diff = x[:, None, :] - a[:, :, None] * means                                   # (n, K, d)
    logits = w.log() - 0.5 * diff.square().sum(-1) / var - 0.5 * x.shape[1] * var.log()
    resp = logits.softmax(dim=1)[..., None]                                        # (n, K, 1)
    x0 = means + (a * stds**2 / var)[..., None] * diff                             # (n, K, d)
    eps = (s / var)[..., None] * diff                                              # (n, K, d)
    return (resp * x0).sum(1), (resp * eps).sum(1)


def mixture_denoiser(mixture, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    r"""E[x0 | alpha x0 + sigma eps = x] exactly, for x0 from a GaussianMixture and eps ~ N(0, I).

    Given component k (mean m_k, std l_k), x is Gaussian with mean alpha m_k and variance
    c_k = alpha^2 l_k^2 + sigma^2, and E[x0 | x, k] = m_k + (alpha l_k^2 / c_k)(x - alpha m_k); the
    denoiser averages these with the responsibilities of x. Works at alpha = 0 (the prior mean).
    ``alpha`` and ``sigma`` are numbers or one value per row of x.
    """
    return _mixture_posterior(mixture, x, alpha, sigma)[0]


def mixture_velocity(mixture) -> Field:
    """The exact marginal velocity of the straight path, eq. (flow-marginal-velocity), for mixture data.

    v(x, t) = E[eps - x0 | x_t = x] = E[eps | x] - D(x, t) (eq. ``paths-marginal-velocity`` with
    alpha' = -1, sigma' = 1), finite at every t in [0, 1]. Data from a GaussianMixture, independent
    N(0, I) noise; a field ``v(x, t)`` for :func:`sample_ode` that stands in for a perfectly trained
    flow-matching network.
    """
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).to(x).expand(len(x))                                # (n,)
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError("the straight path's time t must lie in [0, 1]")
        den, eps = _mixture_posterior(mixture, x, 1 - t, t)
        return eps - den
    return velocity


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation ``perm`` minimising sum_i ||x0[i] - x1[perm[i]]||^2 (eq. ``paths-ot-batch``).

    Solved exactly by the Hungarian method (``scipy.optimize.linear_sum_assignment``), O(n^3).
    """
    from scipy.optimize import linear_sum_assignment

    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    _checks.tensor(x1, "x1", ndim=2, floating=True, min_rows=1)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    cost = torch.cdist(x0.double(), x1.double()).square().cpu().numpy()           # (n, n)
    rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(len(x0), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(x0.device)


def ot_pair_batch(x0: torch.Tensor, x1: torch.Tensor, ot_batch: int) -> torch.Tensor:
    """Reorder the noise ``x1`` so that within each consecutive group of ``ot_batch`` rows it is
    optimally paired with ``x0`` (minibatch OT); ``ot_batch = 1`` keeps the independent pairs."""
    ot_batch = _checks.integer(ot_batch, "ot_batch", minimum=1)
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    if x1.shape != x0.shape:
        raise ValueError(f"x1 must have the shape of x0 {tuple(x0.shape)}, got {tuple(x1.shape)}")
    if len(x0) % ot_batch:
        raise ValueError(f"the batch ({len(x0)} rows) must be a multiple of ot_batch={ot_batch}")
    if ot_batch == 1:
        return x1
    out = torch.empty_like(x1)
    for start in range(0, len(x0), ot_batch):
        group = slice(start, start + ot_batch)
        out[group] = x1[group][ot_pairing(x0[group], x1[group])]
    return out


def ot_flow_matching_loss(model: Field, x0: torch.Tensor, *, ot_batch: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow matching, eq. (flow-cfm-loss), on minibatch-OT pairs: fresh N(0, I) noise, paired with
    the data by :func:`ot_pair_batch` within groups of ``ot_batch`` rows."""
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    x1 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return flow_matching_loss(model, x0, ot_pair_batch(x0, x1, ot_batch), generator=generator)


@torch.no_grad()
def few_step_error(velocity: Field, noise: torch.Tensor, steps: int, *, n_steps: int = 100,
                   method: str = "rk4") -> float:
    """Mean squared distance between ``steps`` Euler steps from ``noise`` and the accurate solution
    (``n_steps`` of ``method``) of the same ODE; ``steps = 1`` is :func:`one_step_error`."""
    steps = _checks.integer(steps, "steps", minimum=1)
    few = sample_ode(velocity, noise, n_steps=steps, method="euler")
    ref = sample_ode(velocity, noise, n_steps=n_steps, method=method)
    return float((few - ref).square().sum(1).mean())


def check_ot_pairing(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> _exercises.Verdict:
    """Checker for the coding exercise: ``fn(x0, x1)`` returns a permutation ``perm`` (a long tensor)
    that pairs x0[i] with x1[perm[i]] at the least total squared distance.

    Cases: a permutation of the right length; two points in one dimension (sorted pairing); and
    batches of 5 and 30 points in two dimensions, whose total cost must equal the Hungarian
    method's optimum (for 5 points also the brute force over all 120 permutations).
    """
    import itertools

    gen = torch.Generator().manual_seed(3)

    def cost(x0, x1, perm):
        return float((x0 - x1[perm]).square().sum())

    def is_perm(perm, n):
        return (isinstance(perm, torch.Tensor) and perm.shape == (n,)
                and sorted(perm.tolist()) == list(range(n)))

    def optimal(x0, x1, best):
        return lambda perm: is_perm(perm, len(x0)) and cost(x0, x1, perm) <= best + 1e-9

    line0 = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    line1 = torch.tensor([[1.2], [-0.1]], dtype=torch.float64)
    cases = [_exercises.Case("4 points: the result is a permutation of 0..3",
                             (torch.randn(4, 2, generator=gen, dtype=torch.float64),
                              torch.randn(4, 2, generator=gen, dtype=torch.float64)),
                             lambda p: is_perm(p, 4),
                             "return a long tensor perm of length n holding each index once."),
             _exercises.Case("1-D: x0 = (0, 1), x1 = (1.2, -0.1)", (line0, line1),
                             lambda p: is_perm(p, 2) and p.tolist() == [1, 0],
                             "perm[i] is the index of the noise point paired with x0[i]; in 1-D "
                             "the optimal pairing matches sorted orders.")]
    x0 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    brute = min(cost(x0, x1, torch.tensor(p)) for p in itertools.permutations(range(5)))
    cases.append(_exercises.Case("5 points in 2-D against all 120 permutations", (x0, x1),
                                 optimal(x0, x1, brute),
                                 "minimise the sum of squared distances over whole permutations "
                                 "(scipy.optimize.linear_sum_assignment), not greedily point by point."))
    x0 = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    best = cost(x0, x1, ot_pairing(x0, x1))
    cases.append(_exercises.Case("30 points in 2-D", (x0, x1), optimal(x0, x1, best),
                                 "a greedy nearest-neighbour pairing is not optimal; solve the "
                                 "assignment problem on the matrix of squared distances."))
    return _exercises.check(fn, cases, name=getattr(fn, "__name__", "your pairing"))

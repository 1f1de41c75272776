"""Stochastic differential equations on their own: forward simulation and the 1-D Fokker-Planck equation.

Used by the continuous-time diffusion chapter to check, particle against density, that the
Fokker-Planck equation (``book/diffusion_sde.md``, eq. sde-fokker-planck) describes an SDE's law.
An SDE here is dx = drift(x, t) dt + g(t) dw with a scalar diffusion coefficient g.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks, ode
from .diffusion import VP, _as_t
from .train import progress

__all__ = ["euler_maruyama", "fokker_planck_1d", "langevin", "ou_marginal", "total_variation", "SubVP",
           "reverse_sde_density_1d", "flow_density_1d", "likelihood_bound_1d", "kl_on_grid"]


@torch.no_grad()
def euler_maruyama(drift: Callable, g: Callable, x: torch.Tensor, ts, *,
                   generator: torch.Generator | None = None, show_progress: bool | None = None) -> torch.Tensor:
    """Simulate dx = drift(x, t) dt + g(t) dw forward through the times ``ts``; return the states at every time.

    Returns a tensor of shape ``(len(ts), *x.shape)``; ``x`` is the state at ``ts[0]``.
    """
    _checks.tensor(x, "x", floating=True)
    ts = ode.check_grid(ts)
    if not bool((ts.diff() > 0).all()):
        raise ValueError("ts must increase: this simulates the SDE forward in time")
    states = [x]
    for i in progress(range(len(ts) - 1), desc="Euler-Maruyama", enabled=show_progress):
        t, h = float(ts[i]), float(ts[i + 1] - ts[i])
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x + h * drift(x, t) + float(g(t)) * math.sqrt(h) * z
        states.append(x)
    return torch.stack(states)


@torch.no_grad()
def langevin(grad_log_density: Callable, x: torch.Tensor, step_size: float, n_steps: int, *,
             generator: torch.Generator | None = None, callback: Callable | None = None) -> torch.Tensor:
    """Unadjusted Langevin algorithm: x <- x + (h/2) grad log p(x) + sqrt(h) z, h = ``step_size``, eq. (score-langevin).

    The convention of ``book/diffusion_score.md``: the step multiplies the *half* score, so in terms
    of an energy p ~ exp(-E) one step is x - (h/2) grad E(x) + sqrt(h) z. ``grad_log_density(x)`` returns
    a tensor shaped like ``x`` (any shape; every entry is one coordinate of one chain); the noise z is
    standard normal, drawn on the CPU from ``generator``. ``callback(i, x)`` sees the state after step
    i (0-based). No Metropolis correction: for h > 0 the chain's stationary law is only close to p.
    """
    if not callable(grad_log_density):
        raise TypeError("grad_log_density must be callable as grad_log_density(x)")
    _checks.tensor(x, "x", floating=True)
    h = _checks.real(step_size, "step_size", positive=True)
    n_steps = _checks.integer(n_steps, "n_steps", minimum=0)
    for i in range(n_steps):
        grad = grad_log_density(x)
        if not isinstance(grad, torch.Tensor) or grad.shape != x.shape:
            raise ValueError(f"grad_log_density must return a tensor of x's shape {tuple(x.shape)}, "
                             f"got {tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__}")
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x + 0.5 * h * grad + math.sqrt(h) * z
        if callback is not None:
            callback(i, x)
    return x


def _bernoulli(z: torch.Tensor) -> torch.Tensor:
    """B(z) = z / (e^z - 1) for z >= 0, with B(0) = 1 (the Scharfetter-Gummel weight)."""
    small = z < 1e-6
    return torch.where(small, 1 - z / 2, z / torch.expm1(torch.where(small, torch.ones_like(z), z)))


def fokker_planck_1d(drift: Callable, g: Callable, p0: torch.Tensor, grid: torch.Tensor, ts, *,
                     max_dt: float | None = None) -> torch.Tensor:
    """Solve dp/dt = -d(F p)/dx + g^2/2 d^2p/dx^2 on a uniform grid, eq. (sde-fokker-planck).

    Finite volumes with zero-flux walls, so probability is conserved exactly. The flux through the
    face between cells L and R is Scharfetter-Gummel's, exact for a constant drift between the two
    cell centres: with D = g^2/2 and the cell Peclet number P = F dx / D,

        flux = F+ p_L - F- p_R + (D / dx) B(|P|) (p_L - p_R),     B(z) = z / (e^z - 1),

    where F+ = max(F, 0) and F- = max(-F, 0). Where diffusion dominates (P -> 0) it is the central
    scheme, second order in dx; where drift dominates (|P| large, or g = 0) it is upwind. Explicit
    time steps: each step maps the density through a matrix with non-negative entries whose
    columns sum to one when dt is at most the inverse of the largest outflow rate of a cell, so
    the density stays non-negative and its total variation cannot grow, at any noise level (the
    step used is 0.9 of that bound, or ``max_dt`` if smaller).

    ``p0`` is the density at the cell centres ``grid`` at time ``ts[0]``; returns the density at
    every time in ``ts``, shape ``(len(ts), len(grid))``. ``drift(x, t)`` and ``g(t)`` as in
    :func:`euler_maruyama`.
    """
    _checks.tensor(grid, "grid", ndim=1, floating=True, min_rows=3)
    _checks.tensor(p0, "p0", ndim=1, floating=True)
    if p0.shape != grid.shape:
        raise ValueError(f"p0 must have the shape of grid {tuple(grid.shape)}, got {tuple(p0.shape)}")
    dx = float(grid[-1] - grid[0]) / (len(grid) - 1)
    if dx <= 0 or not torch.allclose(grid.diff().double(), torch.full_like(grid[1:], dx, dtype=torch.float64),
                                     rtol=1e-4, atol=0):     # 1e-4: float32 linspace grids pass
        raise ValueError("grid must be uniformly spaced and increasing")
    if max_dt is not None:
        max_dt = _checks.real(max_dt, "max_dt", positive=True)
    ts = ode.check_grid(ts)
    if not bool((ts.diff() > 0).all()):
        raise ValueError("ts must increase")
    faces = (grid[:-1] + grid[1:]).double() / 2
    p = p0.double().clone()
    out = [p.clone()]
    t = float(ts[0])
    for t_next in ts[1:].tolist():
        while t < t_next - 1e-15:
            half_g2 = 0.5 * float(g(t)) ** 2
            f = drift(faces, t).double()                                        # (cells - 1,)
            if not bool(torch.isfinite(f).all()) or not math.isfinite(half_g2):
                raise ValueError(f"drift or g is not finite at t = {t:.4g}")
            up, down = f.clamp_min(0), (-f).clamp_min(0)
            if half_g2 > 0:
                mix = half_g2 / dx * _bernoulli(f.abs() * dx / half_g2)        # (D/dx) B(|P|)
            else:
                mix = torch.zeros_like(f)
            # Outflow rate of each cell: to the right through its right face, to the left through
            # its left face. A step of at most 1/rate keeps every coefficient non-negative.
            rate = torch.zeros_like(p)
            rate[:-1] += up + mix
            rate[1:] += down + mix
            limit = 0.9 * dx / max(float(rate.max()), 1e-300)
            if max_dt is not None:
                limit = min(limit, max_dt)
            dt = min(limit, t_next - t)
            flux = up * p[:-1] - down * p[1:] + mix * (p[:-1] - p[1:])        # at interior faces
            dp = torch.zeros_like(p)
            dp[:-1] -= flux / dx
            dp[1:] += flux / dx
            p = p + dt * dp
            t += dt
        out.append(p.clone())
    return torch.stack(out).to(p0.dtype)


def ou_marginal(x0_mean: float, x0_var: float, theta: float, s: float, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance at time t of the OU process dx = -theta x dt + s dw from N(x0_mean, x0_var), eq. (sde-ou)."""
    theta = _checks.real(theta, "theta", positive=True)
    t = torch.as_tensor(t, dtype=torch.float64)
    decay = torch.exp(-theta * t)
    return x0_mean * decay, x0_var * decay**2 + s * s / (2 * theta) * (1 - decay**2)


def total_variation(p: torch.Tensor, q: torch.Tensor, dx: float) -> float:
    """TV distance 1/2 int |p - q| between two densities on the same uniform grid of spacing dx."""
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return 0.5 * float((p - q).abs().sum()) * _checks.real(dx, "dx", positive=True)


class SubVP(VP):
    r"""The sub-VP SDE of Song et al. (2021): dx = -beta/2 x dt + sqrt(beta (1 - e^{-2 B(t)})) dw.

    B(t) = int_0^t beta is the VP integral, so the drift, the signal scale alpha_t = e^{-B/2} and the
    linear beta(t) are those of :class:`~mlbook.diffusion.VP`; only the diffusion is smaller. The
    noise standard deviation is sigma_t = 1 - e^{-B(t)}, so sigma_t^2 = (1 - e^{-B})^2 <= 1 - e^{-B},
    the VP variance, at every t (page ``diffusion_sde``, the sub-VP SDE). g^2 follows from
    eq. (sde-coefficients): d sigma_t^2/dt - 2 f sigma_t^2 = beta (1 - e^{-2B}).
    """

    def sigma(self, t) -> torch.Tensor:
        return -torch.expm1(-self._int_beta(t))

    def g2(self, t) -> torch.Tensor:
        return self.beta(t) * -torch.expm1(-2 * self._int_beta(_as_t(t)))

    def __repr__(self) -> str:
        return f"SubVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


def _uniform_grid(grid: torch.Tensor) -> float:
    _checks.tensor(grid, "grid", ndim=1, floating=True, min_rows=3)
    dx = float(grid[-1] - grid[0]) / (len(grid) - 1)
    if dx <= 0 or not torch.allclose(grid.diff().double(), torch.full_like(grid[1:], dx, dtype=torch.float64),
                                     rtol=1e-4, atol=0):
        raise ValueError("grid must be uniformly spaced and increasing")
    return dx


def _score_1d(score: Callable, y: torch.Tensor, t: float) -> torch.Tensor:
    """score(x, t) on points y of shape (m,), called as the samplers call it: x (m, 1), t (m,)."""
    return score(y[:, None], torch.full((len(y),), t, dtype=y.dtype))[:, 0]


def reverse_sde_density_1d(score: Callable, process, grid: torch.Tensor, *, t_end: float = 0.0,
                           max_dt: float | None = None) -> torch.Tensor:
    """The density at time ``t_end`` of the reverse-time SDE model, by the Fokker-Planck equation.

    The model starts from the process's prior N(0, prior_std^2) at t = 1 and runs the reverse SDE
    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar (eq. sde-reverse) down to ``t_end``; in the
    reverse clock tau = 1 - t this is a forward SDE, whose density :func:`fokker_planck_1d` evolves.
    ``score(x, t)`` takes x of shape (m, 1) and t of shape (m,), as the samplers call it. Returns the
    density at the points of ``grid`` (page ``diffusion_sde_reverse``, the likelihood bound).
    """
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    _uniform_grid(grid)
    t_end = _checks.real(t_end, "t_end", nonnegative=True)
    if not t_end < 1:
        raise ValueError(f"t_end must be < 1, got {t_end}")
    x = grid.double()
    prior = process.prior_log_prob(x[:, None]).exp()

    def drift(y: torch.Tensor, tau: float) -> torch.Tensor:
        t = torch.tensor(1.0 - tau, dtype=torch.float64)
        return -process.f(t) * y + process.g2(t) * _score_1d(score, y, 1.0 - tau)

    def g(tau: float) -> float:
        return float(process.g2(torch.tensor(1.0 - tau, dtype=torch.float64))) ** 0.5

    ts = torch.tensor([0.0, 1.0 - t_end], dtype=torch.float64)
    return fokker_planck_1d(drift, g, prior, x, ts, max_dt=max_dt)[-1]


def flow_density_1d(score: Callable, process, grid: torch.Tensor, *, t_end: float = 0.0,
                    n_steps: int = 400) -> torch.Tensor:
    """The density at ``t_end`` of the probability-flow ODE model, by the change of variables.

    Each grid point is carried by the ODE dx/dt = f x - g^2/2 score (eq. sde-pf-ode) from ``t_end``
    to t = 1 with RK4; in one dimension the flow map phi is increasing, and the model density is
    prior(phi(x)) phi'(x), with phi' by finite differences along the grid (eq. sde-ode-loglik in
    one dimension). Returns the density at the points of ``grid``.
    """
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    _uniform_grid(grid)
    n_steps = _checks.integer(n_steps, "n_steps", minimum=2)
    t_end = _checks.real(t_end, "t_end", nonnegative=True)
    x = grid.double()[:, None]

    def velocity(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)[:1]
        return process.f(t) * y - 0.5 * process.g2(t) * _score_1d(score, y[:, 0], float(t))[:, None]

    ends = ode.solve(velocity, x, torch.linspace(t_end, 1.0, n_steps + 1, dtype=torch.float64), method="rk4")
    slope = torch.gradient(ends[:, 0], spacing=(x[:, 0],))[0]
    return process.prior_log_prob(ends).exp() * slope


def kl_on_grid(p: torch.Tensor, q: torch.Tensor, dx: float) -> float:
    """KL(p || q) = int p log(p / q) dx by the midpoint rule on a uniform grid; terms with p = 0 vanish."""
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    dx = _checks.real(dx, "dx", positive=True)
    p, q = p.double(), q.double()
    if bool((p < 0).any()) or bool(((q <= 0) & (p > 0)).any()):
        raise ValueError("p must be non-negative and q positive wherever p is")
    keep = p > 0
    return float((p[keep] * (p[keep] / q[keep]).log()).sum() * dx)


def likelihood_bound_1d(score: Callable, exact, process, grid: torch.Tensor, *,
                        n_times: int = 400) -> tuple[float, float]:
    """The two terms of the likelihood-weighted bound on KL(p_data || p_model) for the reverse-SDE model.

    Returns ``(score_term, prior_term)``: score_term = 1/2 int_0^1 g(t)^2 E_{p_t} (score - grad log p_t)^2 dt
    by the trapezoidal rule over ``n_times`` intervals and quadrature on ``grid``, and prior_term =
    KL(p_1 || prior). ``exact`` is the exact model of the data (a :class:`~mlbook.diffusion.MixtureScore`:
    its marginals and scores). Their sum bounds KL(p_0 || p_model) (page ``diffusion_sde_reverse``, the
    likelihood bound of Song, Durkan, Murray and Ermon, 2021).
    """
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    dx = _uniform_grid(grid)
    n_times = _checks.integer(n_times, "n_times", minimum=2)
    x = grid.double()
    ts = torch.linspace(0.0, 1.0, n_times + 1, dtype=torch.float64)
    values = []
    for t in ts.tolist():
        p_t = exact.marginal(t).log_prob(x[:, None]).exp()
        err = _score_1d(score, x, t) - _score_1d(exact, x, t)
        values.append(float(process.g2(torch.tensor(t))) * float((p_t * err**2).sum() * dx))
    score_term = 0.5 * float(torch.trapezoid(torch.tensor(values, dtype=torch.float64), ts))
    p_1 = exact.marginal(1.0).log_prob(x[:, None]).exp()
    prior_term = kl_on_grid(p_1, process.prior_log_prob(x[:, None]).exp(), dx)
    return score_term, prior_term


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
from .train import progress

__all__ = ["euler_maruyama", "fokker_planck_1d", "langevin", "ou_marginal", "total_variation"]


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


def fokker_planck_1d(drift: Callable, g: Callable, p0: torch.Tensor, grid: torch.Tensor, ts, *,
                     max_dt: float | None = None) -> torch.Tensor:
    """Solve dp/dt = -d(F p)/dx + g^2/2 d^2p/dx^2 on a uniform grid, eq. (sde-fokker-planck).

    Finite volumes with zero-flux walls (probability is conserved exactly), central differences for
    the drift flux, explicit time steps below the diffusive stability limit. ``p0`` is the density
    at the cell centres ``grid`` at time ``ts[0]``; returns the density at every time in ``ts``,
    shape ``(len(ts), len(grid))``. ``drift(x, t)`` and ``g(t)`` as in :func:`euler_maruyama`.
    """
    _checks.tensor(grid, "grid", ndim=1, floating=True, min_rows=3)
    _checks.tensor(p0, "p0", ndim=1, floating=True)
    if p0.shape != grid.shape:
        raise ValueError(f"p0 must have the shape of grid {tuple(grid.shape)}, got {tuple(p0.shape)}")
    dx = float(grid[-1] - grid[0]) / (len(grid) - 1)
    if dx <= 0 or not torch.allclose(grid.diff().double(), torch.full_like(grid[1:], dx, dtype=torch.float64),
                                     rtol=1e-4, atol=0):     # 1e-4: float32 linspace grids pass
        raise ValueError("grid must be uniformly spaced and increasing")
    ts = ode.check_grid(ts)
    if not bool((ts.diff() > 0).all()):
        raise ValueError("ts must increase")
    faces = (grid[:-1] + grid[1:]) / 2
    p = p0.double().clone()
    out = [p.clone()]
    t = float(ts[0])
    for t_next in ts[1:].tolist():
        while t < t_next - 1e-15:
            g2 = float(g(t)) ** 2
            f = drift(faces.double(), t)
            # Stable explicit step: diffusion needs dt <= dx^2 / g^2; drift needs dt |F| <= dx.
            limit = 0.4 * dx * dx / max(g2, 1e-12)
            limit = min(limit, 0.4 * dx / max(float(f.abs().max()), 1e-12))
            if max_dt is not None:
                limit = min(limit, max_dt)
            dt = min(limit, t_next - t)
            flux = f * 0.5 * (p[:-1] + p[1:]) - 0.5 * g2 * (p[1:] - p[:-1]) / dx   # at interior faces
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

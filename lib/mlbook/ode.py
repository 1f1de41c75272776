"""Ordinary differential equations: fixed-step solvers, divergences and ODE log-likelihoods.

Shared by the diffusion chapters (the probability-flow ODE) and the flows chapter (continuous
normalizing flows, flow matching). A velocity field is any callable ``f(x, t)`` with ``x`` of
shape ``(n, d)`` and ``t`` a tensor of shape ``(n,)``, returning ``(n, d)``. Equation labels refer
to ``book/diffusion_sde_reverse.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import _checks

__all__ = ["euler_step", "heun_step", "rk4_step", "STEPPERS", "check_grid", "solve",
           "divergence_exact", "divergence_hutchinson", "log_likelihood", "empirical_order"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _at(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype).expand(x.shape[0])


def euler_step(f: Field, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One Euler step from time t to s, eq. (sde-ode-euler): global error O(h)."""
    return x + (s - t) * f(x, _at(t, x))


def heun_step(f: Field, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One Heun step (explicit trapezoid) from t to s, eq. (sde-ode-heun): global error O(h^2)."""
    h = s - t
    d1 = f(x, _at(t, x))
    d2 = f(x + h * d1, _at(s, x))
    return x + 0.5 * h * (d1 + d2)


def rk4_step(f: Field, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One classical Runge-Kutta step from t to s, eq. (sde-ode-rk4): global error O(h^4)."""
    h = s - t
    mid = t + 0.5 * h
    k1 = f(x, _at(t, x))
    k2 = f(x + 0.5 * h * k1, _at(mid, x))
    k3 = f(x + 0.5 * h * k2, _at(mid, x))
    k4 = f(x + h * k3, _at(s, x))
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


STEPPERS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def check_grid(ts, name: str = "ts") -> torch.Tensor:
    """Return ``ts`` as a 1-D float64 tensor of at least two strictly monotone times."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least two times, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{name} must be finite")
    steps = ts.diff()
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError(f"{name} must be strictly increasing or strictly decreasing")
    return ts


def solve(f: Field, x: torch.Tensor, ts, *, method: str = "rk4",
          callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate dx/dt = f(x, t) from ``ts[0]`` to ``ts[-1]`` through every time in ``ts``.

    ``ts`` may decrease (integrating backward in time). ``callback(i, t, x)`` is called after
    step i with the state at time ``ts[i + 1]``.
    """
    _checks.choice(method, "method", list(STEPPERS))
    _checks.tensor(x, "x", ndim=2, floating=True)
    ts = check_grid(ts).to(x.device, x.dtype)
    step = STEPPERS[method]
    for i in range(len(ts) - 1):
        x = step(f, x, ts[i], ts[i + 1])
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


def _value_and_divergence(f: Field, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None):
    """f(x, t) and its divergence: exact (d backward passes) when z is None, else z^T (df/dx) z."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x, t)
        if not v.requires_grad:            # a field that ignores x (a translation) has divergence 0
            return v.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if z is None:
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(x.shape[1]):
                div = div + torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i]
        else:
            div = (torch.autograd.grad((v * z).sum(), x)[0] * z).sum(dim=1)
    return v.detach(), div.detach()


def divergence_exact(f: Field, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """div f at each row of ``x`` by d backward passes (exact; use for small d): shape (n,)."""
    return _value_and_divergence(f, x, t, None)[1]


def divergence_hutchinson(f: Field, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Hutchinson's unbiased estimate z^T (df/dx) z of div f, eq. (sde-hutchinson): shape (n,).

    ``z`` has the shape of ``x`` with E[z z^T] = I (Rademacher or Gaussian); one vector-Jacobian
    product per call, whatever the dimension.
    """
    if z.shape != x.shape:
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    return _value_and_divergence(f, x, t, z)[1]


def log_likelihood(f: Field, x0: torch.Tensor, ts, prior_log_prob: Callable[[torch.Tensor], torch.Tensor], *,
                   method: str = "rk4", divergence: str = "exact",
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact log-density under the flow of dx/dt = f, eq. (sde-ode-loglik).

    Integrates the state x and the accumulated divergence from ``ts[0]`` (data) to ``ts[-1]``
    (prior) and returns ``(log p_0(x0), x_1)`` with log p_0(x0) = log p_1(x_1) + int div f dt.
    With ``divergence="hutchinson"`` one Rademacher probe per point, fixed along the path, gives
    an unbiased estimate of the integral.
    """
    _checks.choice(divergence, "divergence", ["exact", "hutchinson"])
    _checks.tensor(x0, "x0", ndim=2, floating=True)
    n, d = x0.shape
    probe = None
    if divergence == "hutchinson":  # one Rademacher probe per point, fixed along the path
        probe = (torch.randint(0, 2, (n, d), generator=generator) * 2 - 1).to(x0.device, x0.dtype)

    def augmented(state, t):
        v, div = _value_and_divergence(f, state[:, :d], t, probe)
        return torch.cat([v, div[:, None]], dim=1)

    state = torch.cat([x0, torch.zeros(n, 1, dtype=x0.dtype, device=x0.device)], dim=1)
    state = solve(augmented, state, ts, method=method)
    x1, integral = state[:, :d], state[:, d]
    return prior_log_prob(x1) + integral, x1


def empirical_order(n_steps, errors) -> float:
    """Convergence order p from errors ~ C h^p: minus the least-squares slope of log(error) on log(n_steps)."""
    n = torch.as_tensor(n_steps, dtype=torch.float64)
    e = torch.as_tensor(errors, dtype=torch.float64)
    if n.shape != e.shape or n.ndim != 1 or len(n) < 2:
        raise ValueError("n_steps and errors must be 1-D sequences of the same length, at least 2")
    if not bool(((n > 0) & (e > 0)).all()):
        raise ValueError("n_steps and errors must be positive")
    lx, ly = n.log(), e.log()
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / (lx - lx.mean()).square().sum()
    return float(-slope)

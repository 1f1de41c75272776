"""Stochastic approximation, optimisers and learning-rate schedules.

Two chapters share this module. Page ``stochastic_approximation``: the Robbins-Monro iteration
(equation ``sa-rm``) with steps ``c / t**a`` (equation ``sa-steps``), its exact mean-square
error on a linear root-finding problem, the asymptotic rates (``sa-rate-a``),
Polyak-Ruppert averaging and the Cramer-Rao bound it reaches (``sa-cramer-rao``). Page
``optimisers``: SGD with heavy-ball or Nesterov momentum (``opt-heavy-ball``, ``opt-nesterov``),
Adam with its bias correction (``opt-adam``), L2 against decoupled weight decay (``opt-adamw``),
warm-up and cosine schedules (``opt-warmup-cosine``), and the scale rules in the spirit of Amos
(``opt-scale-rule``, ``opt-wd-rule``, ``opt-equilibrium``).

The optimisers follow ``torch.optim``'s conventions (the same state, the same order of
operations), so that their updates can be compared with PyTorch's to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from . import _checks
from .exercises import Case, Verdict, check

__all__ = [
    "step_sizes", "linear_root", "SAResult", "robbins_monro", "exact_mse",
    "asymptotic_mse", "cramer_rao", "log_log_slope",
    "SGD", "Adam", "warmup_cosine", "inverse_sqrt", "equilibrium_rms", "valley",
    "valley_grad", "trajectory", "adam_step_reference", "check_adam_step",
]


# ---------------------------------------------------------------- stochastic approximation

def step_sizes(steps: int, *, c: float, a: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """The steps ``eta_t = c * t**(-a)`` for t = 1..steps (page ``stochastic_approximation``,
    equation ``sa-steps``). The Robbins-Monro conditions hold for 1/2 < a <= 1."""
    steps = _checks.integer(steps, "steps", minimum=1)
    c = _checks.real(c, "c", positive=True)
    a = _checks.real(a, "a", nonnegative=True)
    t = torch.arange(1, steps + 1, dtype=dtype)
    return c * t.pow(-a)


def linear_root(k: float, sigma: float, root: float = 0.0) -> Callable:
    """A noisy root-finding problem: observe ``Y = -k (theta - root) + sigma * xi``, xi ~ N(0, 1).

    Returns ``observe(theta, generator) -> Y``, vectorised over a tensor of parallel runs. The mean
    field ``h(theta) = -k (theta - root)`` has slope ``-k`` at its root (equation ``sa-linear``).
    """
    k = _checks.real(k, "k", positive=True)
    sigma = _checks.real(sigma, "sigma", nonnegative=True)
    root = _checks.real(root, "root")

    def observe(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return -k * (theta - root) + sigma * noise.to(theta.device)

    return observe


@dataclass
class SAResult:
    """Iterates of a Robbins-Monro run at the recorded times.

    ``t`` (m,) the recorded times; ``theta`` (m, runs) the iterate theta_t; ``average`` (m, runs)
    the Polyak-Ruppert average of theta_1..theta_t (equation ``sa-average``).
    """

    t: torch.Tensor
    theta: torch.Tensor
    average: torch.Tensor


def robbins_monro(observe: Callable, theta0: torch.Tensor, *, steps: int, c: float,
                  a: float = 1.0, record: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> SAResult:
    """Run ``theta_{t+1} = theta_t + eta_t Y_t`` (equation ``sa-rm``) on parallel runs.

    Args:
        observe: ``observe(theta, generator)`` returns one noisy observation of h(theta) per run.
        theta0: (runs,) starting points theta_1.
        steps: number of updates; the iterates are theta_1 .. theta_{steps+1}.
        c, a: step sizes ``eta_t = c t^-a`` (equation ``sa-steps``).
        record: increasing times in 1..steps+1 at which to keep theta_t and the running average
            (default: every time; pass a few for long runs with many parallel runs).
    """
    if not callable(observe):
        raise TypeError("observe must be callable as observe(theta, generator)")
    theta = _checks.tensor(theta0, "theta0", ndim=1, floating=True).clone()
    eta = step_sizes(steps, c=c, a=a, dtype=theta.dtype).tolist()
    if record is None:
        record = torch.arange(1, steps + 2)
    record = _checks.tensor(record, "record", ndim=1)
    if len(record) == 0 or int(record.min()) < 1 or int(record.max()) > steps + 1:
        raise ValueError(f"record times must lie in 1..{steps + 1}, got {record.tolist()[:5]}...")
    if bool((record[1:] <= record[:-1]).any()):
        raise ValueError("record times must be strictly increasing")
    wanted = set(int(r) for r in record)
    total = torch.zeros_like(theta)
    thetas, averages = [], []
    for t in range(1, steps + 2):                       # theta is theta_t here
        total += theta
        if t in wanted:
            thetas.append(theta.clone())
            averages.append(total / t)
        if t <= steps:
            theta = theta + eta[t - 1] * observe(theta, generator)
    return SAResult(record.clone(), torch.stack(thetas), torch.stack(averages))


def exact_mse(steps: int, *, c: float, a: float, k: float, sigma: float,
              start: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean-square errors on :func:`linear_root`, of the iterate and of the average.

    Propagates the second moments of delta_t = theta_t - root and of the sum S_t of
    delta_1..delta_t through delta_{t+1} = (1 - k eta_t) delta_t + eta_t sigma xi_t
    (equation ``sa-linear-error``), starting at delta_1 = ``start``. Returns two (steps+1,)
    tensors: E[delta_t^2] and E[(S_t / t)^2] for t = 1..steps+1.
    """
    k = _checks.real(k, "k", positive=True)
    sigma = _checks.real(sigma, "sigma", nonnegative=True)
    start = _checks.real(start, "start")
    eta = step_sizes(steps, c=c, a=a).tolist()
    dd, ds, ss = start**2, start**2, start**2          # E d^2, E d S, E S^2 at t = 1
    iterate, average = [dd], [ss]
    for t, e in enumerate(eta, start=1):
        rho = 1.0 - k * e
        d_sprev = rho * ds                               # E d_{t+1} S_t (noise independent)
        dd = rho**2 * dd + (e * sigma) ** 2              # E d_{t+1}^2
        ss = ss + 2 * d_sprev + dd                       # S_{t+1} = S_t + d_{t+1}
        ds = d_sprev + dd
        iterate.append(dd)
        average.append(ss / (t + 1) ** 2)
    return torch.tensor(iterate, dtype=torch.float64), torch.tensor(average, dtype=torch.float64)


def asymptotic_mse(t: torch.Tensor, *, c: float, a: float, k: float,
                   sigma: float) -> torch.Tensor:
    """The leading term of E[(theta_t - root)^2] for steps c t^-a on a linear problem.

    ``c sigma^2 / (2k) t^-a`` for 1/2 < a < 1 (equation ``sa-rate-a``) and
    ``c^2 sigma^2 / ((2ck - 1) t)`` for a = 1 with 2ck > 1 (both in equation ``sa-rate-a``).
    """
    c, k = _checks.real(c, "c", positive=True), _checks.real(k, "k", positive=True)
    a, sigma = _checks.real(a, "a"), _checks.real(sigma, "sigma", nonnegative=True)
    t = torch.as_tensor(t, dtype=torch.float64)
    if 0.5 < a < 1:
        return c * sigma**2 / (2 * k) * t.pow(-a)
    if a == 1:
        if 2 * c * k <= 1:
            raise ValueError(f"with a = 1 the rate 1/t needs 2ck > 1, got 2ck = {2 * c * k:g}; "
                             "the error then decays like t^(-2ck)")
        return c**2 * sigma**2 / ((2 * c * k - 1) * t)
    raise ValueError(f"the rates are derived for 1/2 < a <= 1, got a = {a:g}")


def cramer_rao(t: torch.Tensor, *, k: float, sigma: float) -> torch.Tensor:
    """The bound ``sigma^2 / (k^2 t)`` on the variance of any unbiased estimate of the root from
    t observations of the linear Gaussian problem (equation ``sa-cramer-rao``)."""
    k = _checks.real(k, "k", positive=True)
    sigma = _checks.real(sigma, "sigma", nonnegative=True)
    return sigma**2 / (k**2 * torch.as_tensor(t, dtype=torch.float64))


def log_log_slope(t: torch.Tensor, values: torch.Tensor) -> float:
    """Least-squares slope of log(values) against log(t): the exponent of a power law."""
    t = torch.as_tensor(t, dtype=torch.float64)
    values = torch.as_tensor(values, dtype=torch.float64)
    if t.shape != values.shape or t.ndim != 1 or len(t) < 2:
        raise ValueError(f"t and values must be 1-D of the same length >= 2, got "
                         f"{tuple(t.shape)} and {tuple(values.shape)}")
    if bool((t <= 0).any()) or bool((values <= 0).any()):
        raise ValueError("a log-log slope needs positive t and positive values")
    x, y = t.log(), values.log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# ---------------------------------------------------------------- optimisers

class _Optimizer:
    """Shared plumbing: a list of tensors that require gradients, and ``zero_grad``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float,
                 scales: Sequence[float] | None = None):
        self.params = [p for p in params]
        if not self.params or not all(isinstance(p, torch.Tensor) for p in self.params):
            raise TypeError("params must be a non-empty iterable of tensors")
        if not all(p.requires_grad for p in self.params):
            raise ValueError("every parameter must require gradients")
        self.lr = _checks.real(lr, "lr", positive=True)
        self.weight_decay = _checks.real(weight_decay, "weight_decay", nonnegative=True)
        if scales is None:
            scales = [1.0] * len(self.params)
        if len(scales) != len(self.params):
            raise ValueError(f"scales needs one number per parameter ({len(self.params)}), "
                             f"got {len(scales)}")
        self.scales = [_checks.real(q, "scales", positive=True) for q in scales]
        self.t = 0

    def lrs(self) -> list[float]:
        """The learning rate of each parameter: ``lr`` times its scale."""
        return [self.lr * q for q in self.scales]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class SGD(_Optimizer):
    """SGD with heavy-ball or Nesterov momentum and L2 weight decay, as ``torch.optim.SGD``
    (no dampening).

    Heavy ball (equation ``opt-heavy-ball``): ``b = mu b + g``, ``theta -= lr b``, with
    ``b = g`` at the first step. Nesterov (equation ``opt-nesterov``): the step uses
    ``g + mu b`` instead of ``b``. ``g`` includes ``weight_decay * theta``. ``scales`` gives
    each parameter the learning rate ``lr * scale``.
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, scales: Sequence[float] | None = None):
        super().__init__(params, lr, weight_decay, scales)
        self.momentum = _checks.real(momentum, "momentum", nonnegative=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for i, (p, lr) in enumerate(zip(self.params, self.lrs())):
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                b = self.buffers[i]
                b = g.clone() if b is None else b.mul_(self.momentum).add_(g)
                self.buffers[i] = b
                g = g.add(b, alpha=self.momentum) if self.nesterov else b
            p.add_(g, alpha=-lr)


class Adam(_Optimizer):
    """Adam with bias correction (equation ``opt-adam``), as ``torch.optim.Adam``/``AdamW``.

    ``decoupled=False``: weight decay is an L2 term added to the gradient before the moments
    (``torch.optim.Adam``). ``decoupled=True``: the parameter shrinks by ``lr * weight_decay``
    outside the adaptive step (equation ``opt-adamw``, ``torch.optim.AdamW``).
    ``lr`` may be changed between steps (a schedule sets ``opt.lr``). ``scales`` gives each
    parameter its own learning rate ``lr * scale`` (the scale rule, equation ``opt-scale-rule``;
    torch.optim does the same with one parameter group per tensor).
    """

    def __init__(self, params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False,
                 scales: Sequence[float] | None = None):
        super().__init__(params, lr, weight_decay, scales)
        if len(betas) != 2 or not all(0 <= _checks.real(b, "betas") < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = _checks.real(eps, "eps", nonnegative=True)
        self.decoupled = bool(decoupled)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for p, m, v, lr in zip(self.params, self.m, self.v, self.lrs()):
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay and self.decoupled:
                p.mul_(1 - lr * self.weight_decay)
            elif self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - self.beta1)                        # m = b1 m + (1 - b1) g
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            p.sub_(adam_step_reference(m, v, self.t, lr=lr, betas=(self.beta1, self.beta2),
                                       eps=self.eps))

    def direction(self, i: int) -> torch.Tensor:
        """The normalised update u = m_hat / (sqrt(v_hat) + eps) of parameter ``i`` at the
        last step: the step is ``lr * u`` (equation ``opt-adam``)."""
        if self.t == 0:
            raise ValueError("no step has been taken yet")
        return adam_step_reference(self.m[i], self.v[i], self.t, lr=1.0,
                                   betas=(self.beta1, self.beta2), eps=self.eps)


def adam_step_reference(m: torch.Tensor, v: torch.Tensor, t: int, *, lr: float,
                        betas: tuple[float, float], eps: float) -> torch.Tensor:
    """The bias-corrected Adam step ``lr * m_hat / (sqrt(v_hat) + eps)`` at step t >= 1
    (equation ``opt-adam``), with ``m_hat = m / (1 - b1^t)`` and ``v_hat = v / (1 - b2^t)``."""
    t = _checks.integer(t, "t", minimum=1)
    b1, b2 = betas
    denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
    return (lr / (1 - b1**t)) * m / denom


# ---------------------------------------------------------------- schedules

def warmup_cosine(step: int, *, total: int, warmup: int, peak: float, final: float = 0.0,
                  start_factor: float | None = None) -> float:
    """Learning rate at step ``step`` (0-based) of a linear warm-up then cosine decay
    (equation ``opt-warmup-cosine``).

    During warm-up, ``peak * (f + (1 - f) step / warmup)`` with ``f = start_factor``
    (default ``1 / warmup``); from ``warmup`` to ``total``,
    ``final + (peak - final) (1 + cos(pi (step - warmup) / (total - warmup))) / 2``.
    The same numbers as torch's ``SequentialLR`` of ``LinearLR`` and ``CosineAnnealingLR``.
    """
    step = _checks.integer(step, "step", minimum=0)
    total = _checks.integer(total, "total", minimum=1)
    warmup = _checks.integer(warmup, "warmup", minimum=0)
    if warmup >= total:
        raise ValueError(f"warmup ({warmup}) must be shorter than total ({total})")
    peak = _checks.real(peak, "peak", positive=True)
    final = _checks.real(final, "final", nonnegative=True)
    if step < warmup:
        f = 1 / warmup if start_factor is None else _checks.real(start_factor, "start_factor")
        if not 0 < f <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {f}")
        return peak * (f + (1 - f) * step / warmup)
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return final + (peak - final) * (1 + math.cos(math.pi * progress)) / 2


def inverse_sqrt(step: int, *, peak: float, tau: float) -> float:
    """The decay ``peak / sqrt(1 + step / tau)``: steps ~ t^(-1/2) once step >> tau."""
    step = _checks.integer(step, "step", minimum=0)
    peak = _checks.real(peak, "peak", positive=True)
    tau = _checks.real(tau, "tau", positive=True)
    return peak / math.sqrt(1 + step / tau)


# ---------------------------------------------------------------- the scale rules

def equilibrium_rms(*, lr: float, decay: float, update_rms: float) -> float:
    """Per-entry size at which decoupled weight decay balances updates orthogonal to theta
    (equation ``opt-equilibrium``): ``lr * update_rms / sqrt(decay (2 - decay))`` where
    ``decay`` is the per-step shrink factor (``lr * weight_decay`` in torch's AdamW)."""
    lr = _checks.real(lr, "lr", positive=True)
    decay = _checks.real(decay, "decay", positive=True)
    update_rms = _checks.real(update_rms, "update_rms", nonnegative=True)
    if decay >= 1:
        raise ValueError(f"the per-step decay must be below 1, got {decay}")
    return lr * update_rms / math.sqrt(decay * (2 - decay))


# ---------------------------------------------------------------- a 2-D valley

def valley(xy: torch.Tensor, *, curvature: float = 10.0) -> torch.Tensor:
    """An ill-conditioned quadratic valley ``(x^2 + curvature y^2) / 2`` evaluated on (..., 2)."""
    xy = _checks.tensor(xy, "xy", last_dim=2)
    return 0.5 * (xy[..., 0] ** 2 + curvature * xy[..., 1] ** 2)


def valley_grad(xy: torch.Tensor, *, curvature: float = 10.0) -> torch.Tensor:
    """Gradient of :func:`valley`."""
    xy = _checks.tensor(xy, "xy", last_dim=2)
    return torch.stack([xy[..., 0], curvature * xy[..., 1]], dim=-1)


def trajectory(make_optimizer: Callable[[list[torch.Tensor]], object], start, steps: int, *,
               curvature: float = 10.0) -> torch.Tensor:
    """Points visited by an optimiser on :func:`valley` from ``start``: a (steps + 1, 2) tensor.

    ``make_optimizer([xy])`` builds the optimiser (this module's or ``torch.optim``'s).
    """
    steps = _checks.integer(steps, "steps", minimum=1)
    xy = torch.tensor(start, dtype=torch.float64).reshape(2).requires_grad_(True)
    opt = make_optimizer([xy])
    points = [xy.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        valley(xy, curvature=curvature).backward()
        opt.step()
        points.append(xy.detach().clone())
    return torch.stack(points)


# ---------------------------------------------------------------- the coding exercise

def check_adam_step(fn: Callable) -> Verdict:
    """Checker for the reader's bias-corrected Adam update (page ``optimisers``).

    ``fn(theta, grad, m, v, t, lr, beta1, beta2, eps)`` returns ``(theta, m, v)`` after step
    ``t`` (1-based). The checker runs it on the valley and compares the point reached with
    ``torch.optim.Adam`` from the same start: after the first step, where a missing bias
    correction shows most, and after 50 steps with two values of beta2.
    """
    if not callable(fn):
        raise TypeError(f"the exercise needs a function, got {type(fn).__name__}")
    start = [1.5, -0.8]

    def run(steps: int, beta2: float) -> torch.Tensor:
        theta = torch.tensor(start, dtype=torch.float64)
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        for t in range(1, steps + 1):
            theta, m, v = fn(theta.clone(), valley_grad(theta), m.clone(), v.clone(), t,
                             0.1, 0.9, beta2, 1e-8)
        return theta

    def torch_adam(steps: int, beta2: float) -> torch.Tensor:
        make = lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.9, beta2), eps=1e-8)  # noqa: E731
        return trajectory(make, start, steps)[-1]

    def same_as_torch(steps: int, beta2: float) -> Callable[[object], bool]:
        want = torch_adam(steps, beta2)
        return lambda r: isinstance(r, torch.Tensor) and r.shape == want.shape and bool(
            torch.allclose(r.to(want.dtype), want, rtol=1e-9, atol=1e-12))

    cases = [
        Case("the first step (t = 1)", (1, 0.999), same_as_torch(1, 0.999),
             "at t = 1 the corrected moments are g and g^2, so the first step has size lr in "
             "each coordinate: divide m by 1 - beta1^t and v by 1 - beta2^t."),
        Case("50 steps, beta2 = 0.999", (50, 0.999), same_as_torch(50, 0.999),
             "update m and v from their previous values (m = beta1 m + (1 - beta1) g, "
             "v likewise with g^2), correct both, and return the new m and v with theta."),
        Case("50 steps, beta2 = 0.9", (50, 0.9), same_as_torch(50, 0.9),
             "use beta2 for v and beta1 for m, each with its own power of t; eps goes "
             "outside the square root."),
    ]
    return check(run, cases, name=getattr(fn, "__name__", "your Adam step"))

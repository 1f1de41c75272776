r"""Samplers for diffusion models, one short function each, all with the same signature::

    sample_xxx(score, process, x, ts, *, generator=None, callback=None, show_progress=None) -> x

``score(x, t)`` is the model's score (``diffusion.score_from_eps`` turns an epsilon model into one;
``diffusion.MixtureScore`` is the exact one); ``process`` gives alpha_t, sigma_t, f and g;
``x`` holds samples at time ``ts[0]``; ``ts`` decreases to the final time. ``callback(i, t, x)``
sees the state after step i, at time ``ts[i + 1]``. Equation labels refer to the diffusion chapters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from . import _checks, ode, sde
from .diffusion import DDPM, EDM, NoiseProcess, _col
from .train import progress

__all__ = ["trajectory", "CountingScore", "probability_flow", "sample_ancestral", "sample_ddim",
           "sample_langevin", "sample_euler_maruyama", "sample_pc", "sample_ode", "sample_heun_edm",
           "invert_ddim", "sample_dpm_solver_2", "sample_dpmpp_2m", "half_log_snr", "classifier_guided_score", "cfg_score", "SAMPLERS"]


Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]     # score(x (n, d), t (n,)) -> (n, d)
Callback = Callable[[int, float, torch.Tensor], None]           # callback(i, t, x) after step i
Times = torch.Tensor | Sequence[float]


def _setup(score, process, x, ts, *, allow_single: bool = False):
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
    _checks.tensor(x, "x", ndim=2, floating=True)
    single = torch.as_tensor(ts, dtype=torch.float64)
    if allow_single and single.shape == (1,) and bool(torch.isfinite(single).all()):
        return single.to(x.device, x.dtype)
    ts = ode.check_grid(ts).to(x.device, x.dtype)
    if not bool((ts.diff() < 0).all()):
        raise ValueError("ts must decrease: samplers run from noise (t near 1) to data (t near 0)")
    return ts


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _steps(ts, show_progress, desc):
    return progress(range(len(ts) - 1), desc=desc, enabled=show_progress)


def _t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.expand(x.shape[0])


def trajectory(sampler, score, process, x, ts, **kwargs) -> torch.Tensor:
    """Run ``sampler`` and return every intermediate state, shape ``(len(ts), n, d)`` (``ts[0]`` first)."""
    states = [x]
    sampler(score, process, x, ts, callback=lambda i, t, state: states.append(state), **kwargs)
    return torch.stack(states)


def probability_flow(score, process: NoiseProcess):
    """The velocity v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t) of the probability-flow ODE, eq. (sde-pf-ode)."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _col(process.f(t), x) * x - 0.5 * _col(process.g2(t), x) * score(x, t)
    return velocity


@torch.no_grad()
def sample_ancestral(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     show_progress: bool | None = None,
                     variance: str = "beta_tilde") -> torch.Tensor:
    """Ancestral sampling: x_s ~ q(x_s | x_t, x0_hat) with Tweedie's x0_hat, eqs. (ddpm-ancestral), (gauss-posterior).

    With a DDPM process and its full grid this is Ho et al.'s sampler; on a coarser grid it takes
    the same Gaussian step between the grid's times. The mean is always the posterior mean;
    ``variance`` picks the step's variance rho^2 (page ``diffusion_ddpm_sampling``, eq. (ddpm-ancestral)):
    ``"beta_tilde"`` (default) the posterior variance of q(x_s | x_t, x_0), ``"beta"`` the forward
    variance sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 of q(x_t | x_s) (beta_t on the full DDPM
    grid). Either way a step that ends where the posterior variance is zero (s = 0 on a DDPM grid)
    adds no noise.
    """
    variance = _checks.choice(variance, "variance", ("beta_tilde", "beta"))
    ts = _setup(score, process, x, ts)
    for i in _steps(ts, show_progress, "ancestral"):
        t, s = _t(ts[i], x), _t(ts[i + 1], x)
        a, sig = _col(process.alpha(t), x), _col(process.sigma(t), x)
        x0_hat = (x + sig**2 * score(x, t)) / a                                   # eq. (score-tweedie)
        mean, std = process.posterior(x, x0_hat, t, s)
        if variance == "beta":
            var_ts = sig**2 - (a / _col(process.alpha(s), x)) ** 2 * _col(process.sigma(s), x) ** 2
            std = torch.where(std > 0, var_ts.clamp_min(0).sqrt(), torch.zeros_like(std))
        x = mean + std * _noise(x, generator)
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


@torch.no_grad()
def sample_ddim(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                show_progress: bool | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM, eq. (ddim-update): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z.

    c = eta times the DDPM posterior std between t and s, eq. (ddim-eta): eta = 0 is deterministic
    (an Euler step of the probability-flow ODE in the coordinates x / alpha, sigma / alpha), eta = 1
    has the ancestral sampler's noise level.
    """
    ts = _setup(score, process, x, ts)
    eta = _checks.real(eta, "eta")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    for i in _steps(ts, show_progress, "DDIM"):
        t, s = _t(ts[i], x), _t(ts[i + 1], x)
        a_t, sig_t = _col(process.alpha(t), x), _col(process.sigma(t), x)
        a_s, sig_s = _col(process.alpha(s), x), _col(process.sigma(s), x)
        eps = -sig_t * score(x, t)                                                # eq. (score-eps)
        x0_hat = (x - sig_t * eps) / a_t
        c = eta * process.posterior(x, x0_hat, t, s)[1]
        x = a_s * x0_hat + (sig_s**2 - c**2).clamp_min(0).sqrt() * eps + c * _noise(x, generator)
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


@torch.no_grad()
def invert_ddim(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                callback: Callback | None = None, show_progress: bool | None = None) -> torch.Tensor:
    """DDIM inversion: the deterministic DDIM map run forward in time, from data towards noise.

    ``ts`` *increases*; each step from t to a later r is the eta = 0 step of eq. (ddim-update) with
    the roles of the times exchanged, x_r = alpha_r x0_hat + sigma_r eps_hat(x_t, t): Euler's method
    for the probability-flow ODE in the coordinates x / alpha, sigma / alpha, eq. (ddim-euler), run
    upwards (page ``diffusion_fast``, DDIM inversion). ``sample_ddim`` on the reversed grid decodes.
    """
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
    _checks.tensor(x, "x", ndim=2, floating=True)
    ts = ode.check_grid(ts).to(x.device, x.dtype)
    if not bool((ts.diff() > 0).all()):
        raise ValueError("ts must increase: inversion runs from data (t near 0) to noise (t near 1)")
    for i in _steps(ts, show_progress, "DDIM inversion"):
        t, r = _t(ts[i], x), _t(ts[i + 1], x)
        a_t, sig_t = _col(process.alpha(t), x), _col(process.sigma(t), x)
        eps = -sig_t * score(x, t)                                                # eq. (score-eps)
        x = _col(process.alpha(r), x) * (x - sig_t * eps) / a_t + _col(process.sigma(r), x) * eps
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


@torch.no_grad()
def sample_langevin(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    show_progress: bool | None = None,
                    n_steps: int = 10, step_scale: float = 0.1, denoise: bool = True) -> torch.Tensor:
    """Annealed Langevin dynamics over the noise levels sigma_t of ``ts``, eq. (score-annealed).

    A single time in ``ts`` gives plain Langevin dynamics, eq. (score-langevin), at that level.

    At each level, ``n_steps`` updates x <- x + eta/2 score + sqrt(eta) z with eta = step_scale * sigma_t^2:
    the energy-based chapter's :func:`mlbook.sde.langevin` run on the score of that level.
    ``denoise`` ends with Tweedie's estimate of x_0 at the last level, removing its residual noise.
    """
    ts = _setup(score, process, x, ts, allow_single=True)    # one level: plain Langevin
    n_steps = _checks.integer(n_steps, "n_steps", minimum=1)
    step_scale = _checks.real(step_scale, "step_scale", positive=True)
    levels = range(len(ts))
    for i in progress(levels, desc="Langevin", enabled=show_progress):
        t = _t(ts[i], x)
        eta = step_scale * float(process.sigma(ts[i])) ** 2
        x = sde.langevin(lambda y: score(y, t), x, eta, n_steps, generator=generator)
        if callback is not None and i > 0:
            callback(i - 1, float(ts[i]), x)
    if denoise:
        t = _t(ts[-1], x)
        sig, a = _col(process.sigma(t), x), _col(process.alpha(t), x)
        x = (x + sig**2 * score(x, t)) / a
    return x


@torch.no_grad()
def sample_euler_maruyama(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                          generator: torch.Generator | None = None, callback: Callback | None = None,
                          show_progress: bool | None = None) -> torch.Tensor:
    """The reverse-time SDE by Euler-Maruyama, eqs. (sde-reverse) and (sde-euler-maruyama)."""
    ts = _setup(score, process, x, ts)
    for i in _steps(ts, show_progress, "reverse SDE"):
        t, h = _t(ts[i], x), ts[i] - ts[i + 1]
        f, g2 = _col(process.f(t), x), _col(process.g2(t), x)
        x = x - h * (f * x - g2 * score(x, t)) + (g2 * h).sqrt() * _noise(x, generator)
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


@torch.no_grad()
def sample_pc(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
              generator: torch.Generator | None = None, callback: Callback | None = None,
              show_progress: bool | None = None,
              snr: float = 0.16, n_corrector: int = 1) -> torch.Tensor:
    """Predictor-corrector: an Euler-Maruyama step, then Langevin corrector steps at the new time.

    The corrector's step is eta = 2 (snr ||z|| / ||score||)^2 with the norms averaged over the batch,
    eq. (sde-predictor-corrector).
    """
    ts = _setup(score, process, x, ts)
    snr = _checks.real(snr, "snr", positive=True)
    n_corrector = _checks.integer(n_corrector, "n_corrector", minimum=0)
    for i in _steps(ts, show_progress, "predictor-corrector"):
        t, h = _t(ts[i], x), ts[i] - ts[i + 1]
        f, g2 = _col(process.f(t), x), _col(process.g2(t), x)
        x = x - h * (f * x - g2 * score(x, t)) + (g2 * h).sqrt() * _noise(x, generator)
        s = _t(ts[i + 1], x)
        for _ in range(n_corrector):
            grad, z = score(x, s), _noise(x, generator)
            # Norms averaged over the batch: a per-sample ratio explodes where the score vanishes.
            ratio = z.norm(dim=1).mean() / grad.norm(dim=1).mean().clamp_min(1e-12)
            eta = 2 * (snr * ratio) ** 2
            x = x + eta * grad + (2 * eta).sqrt() * z
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


@torch.no_grad()
def sample_ode(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
               generator: torch.Generator | None = None, callback: Callback | None = None,
               show_progress: bool | None = None,
               method: str = "heun") -> torch.Tensor:
    """The probability-flow ODE, eq. (sde-pf-ode), by Euler, Heun or RK4 (``method``); deterministic.

    It follows a score under ``process`` over the grid ``ts``; :func:`mlbook.flows.sample_ode`
    instead integrates a learned velocity over the flows chapter's ``[0, 1]``."""
    ts = _setup(score, process, x, ts)
    return ode.solve(probability_flow(score, process), x, ts, method=method, callback=callback)


@torch.no_grad()
def sample_heun_edm(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    show_progress: bool | None = None,
                    churn: float = 0.0, s_noise: float = 1.0, s_tmin: float = 0.0,
                    s_tmax: float = math.inf) -> torch.Tensor:
    """Karras et al.'s Heun sampler with optional stochastic churn, eqs. (edm-heun) and (edm-churn).

    Needs the :class:`~mlbook.diffusion.EDM` process (time = noise level); ``ts`` from its
    ``time_grid`` ends at sigma = 0, where the second-order correction is skipped, so N steps cost
    2N - 1 score evaluations. ``churn`` (S_churn) raises the noise by gamma = min(churn / N, sqrt(2) - 1)
    before each step whose level sigma_i lies in the window [s_tmin, s_tmax] (S_tmin, S_tmax; the
    default window holds every level) and adds the matching fresh noise, scaled by ``s_noise``.
    """
    if not isinstance(process, EDM):
        raise TypeError(f"sample_heun_edm needs an EDM process (time = noise level), got {type(process).__name__}")
    ts = _setup(score, process, x, ts)
    churn = _checks.real(churn, "churn", nonnegative=True)
    s_noise = _checks.real(s_noise, "s_noise", nonnegative=True)
    s_tmin = _checks.real(s_tmin, "s_tmin", nonnegative=True)
    s_tmax = math.inf if s_tmax == math.inf else _checks.real(s_tmax, "s_tmax", nonnegative=True)
    if not s_tmax >= s_tmin:
        raise ValueError(f"the churn window needs s_tmin <= s_tmax, got [{s_tmin}, {s_tmax}]")
    n = len(ts) - 1
    gamma_max = min(churn / n, math.sqrt(2) - 1)
    for i in _steps(ts, show_progress, "Heun (EDM)"):
        t, s = ts[i], ts[i + 1]
        gamma = gamma_max if s_tmin <= float(t) <= s_tmax else 0.0        # the churn window
        t_hat = t * (1 + gamma)
        if gamma > 0:
            x = x + s_noise * (t_hat**2 - t**2).sqrt() * _noise(x, generator)
        d = -t_hat * score(x, _t(t_hat, x))                       # dx/dsigma = (x - D) / sigma
        x_next = x + (s - t_hat) * d
        if s > 0:                                                 # trapezoid correction
            d_next = -s * score(x_next, _t(s, x))
            x_next = x + (s - t_hat) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback(i, float(s), x)
    return x


def half_log_snr(process: NoiseProcess, t) -> torch.Tensor:
    """ell_t = log(alpha_t / sigma_t) = -log sigma(t), half the log-SNR lambda_t (page ``diffusion_dpm_solver``, eq. dpm-ell).

    It is +inf where sigma_t = 0 (the end of an EDM grid).
    """
    return torch.log(process.alpha(t)) - torch.log(process.sigma(t))


def _time_at_log_snr(process: NoiseProcess, lam: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The time r between s and t with ell_r = lam (ell decreases in time), by bisection."""
    if isinstance(process, EDM):                                  # ell = -log sigma, sigma = t
        return torch.exp(-lam)
    hi, lo = t.double(), s.double()
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if bool(half_log_snr(process, mid) > lam):                # mid is too early (too clean)
            lo = mid
        else:
            hi = mid
    return (0.5 * (lo + hi)).to(t.dtype)


@torch.no_grad()
def sample_dpm_solver_2(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        show_progress: bool | None = None) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al. 2022, singlestep, midpoint in log-SNR), eq. (dpm-solver-2).

    Each step from t to s evaluates eps_hat at x_t, takes a DPM-Solver-1 step (eq. dpm-solver-1, which
    is DDIM) to the time r whose half log-SNR ell_r (:func:`half_log_snr`) is the midpoint of ell_t and
    ell_s, evaluates eps_hat there and takes the full step with that value: x_s = (alpha_s / alpha_t) x_t
    - sigma_s (e^h - 1) eps_hat(u, r), h = ell_s - ell_t. A step that ends at sigma = 0 (EDM
    grids) is a DPM-Solver-1 step, so N steps cost 2N - 1 evaluations there and 2N otherwise.
    Deterministic; the midpoint times must exist, so discrete DDPM processes are refused.
    """
    if isinstance(process, DDPM):
        raise TypeError("sample_dpm_solver_2 evaluates the score at log-SNR midpoints, which are off a discrete "
                        "DDPM grid; use a continuous process (VP, VE or EDM)")
    ts = _setup(score, process, x, ts)
    for i in _steps(ts, show_progress, "DPM-Solver-2"):
        t, s = ts[i], ts[i + 1]
        a_t, sig_t, a_s, sig_s = process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s)
        eps = -sig_t * score(x, _t(t, x))                                        # eq. (score-eps)
        if float(sig_s) > 0:
            lam_t, lam_s = half_log_snr(process, t), half_log_snr(process, s)
            r = _time_at_log_snr(process, 0.5 * (lam_t + lam_s), t, s)
            a_r, sig_r = process.alpha(r), process.sigma(r)
            u = (a_r / a_t) * (x - sig_t * eps) + sig_r * eps                   # DPM-Solver-1 to r
            eps = -sig_r * score(u, _t(r, x))
        x = (a_s / a_t) * (x - sig_t * eps) + sig_s * eps                        # eq. (dpm-solver-1)
        if callback is not None:
            callback(i, float(s), x)
    return x


@torch.no_grad()
def sample_dpmpp_2m(score: Score, process: NoiseProcess, x: torch.Tensor, ts: Times, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    show_progress: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, multistep, data prediction), eqs. (dpmpp-1) and (dpmpp-2m).

    With x0_hat = (x_t - sigma_t eps_hat) / alpha_t (Tweedie, eq. ddim-x0hat) and h = ell_s - ell_t (:func:`half_log_snr`):
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, where D = x0_hat at t on the first step and
    D = (1 + 1 / (2 q)) x0_hat(t) - 1 / (2 q) x0_hat(t_prev), q = h_prev / h, after it: the slope of
    x0_hat in ell is taken from the previous step, so each step costs one evaluation. A step that
    ends at sigma = 0 uses D = x0_hat(t) (first order), as k-diffusion and diffusers do. Deterministic.
    """
    ts = _setup(score, process, x, ts)
    old, h_old = None, None
    for i in _steps(ts, show_progress, "DPM-Solver++(2M)"):
        t, s = ts[i], ts[i + 1]
        a_t, sig_t, a_s, sig_s = process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s)
        x0 = (x + sig_t**2 * score(x, _t(t, x))) / a_t                           # eq. (score-tweedie)
        if float(sig_s) > 0:
            h = half_log_snr(process, s) - half_log_snr(process, t)
            d = x0 if old is None else x0 + (x0 - old) * (h / (2 * h_old))
            x = (sig_s / sig_t) * x - a_s * torch.expm1(-h) * d                  # eq. (dpmpp-2m)
            old, h_old = x0, h
        else:
            x = a_s * x0                                                         # the limit h -> inf
        if callback is not None:
            callback(i, float(s), x)
    return x


class CountingScore:
    """Wraps a score function and counts its evaluations (the NFE of a sampler run)."""

    def __init__(self, score):
        if not callable(score):
            raise TypeError("score must be callable as score(x, t)")
        self.score, self.calls = score, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score(x, t)


def classifier_guided_score(score, class_log_prob, y: torch.Tensor, scale: float):
    """score(x, t) + scale * grad_x log p_t(y | x), eq. (guide-classifier).

    ``class_log_prob(x, t)`` returns (n, C) log-probabilities of the classes given noisy x; ``y`` holds
    the requested class of each sample, shape (n,).
    """
    scale = _checks.real(scale, "scale")
    if not callable(score) or not callable(class_log_prob):
        raise TypeError("score and class_log_prob must be callables of (x, t)")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = class_log_prob(xg, t)
            if y.shape != (x.shape[0],) or int(y.min()) < 0 or int(y.max()) >= log_p.shape[1]:
                raise ValueError(f"y must hold one class in 0..{log_p.shape[1] - 1} per sample")
            grad = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), xg)[0]
        return score(x, t) + scale * grad

    return guided


def cfg_score(cond_score, y: torch.Tensor, scale: float, null: int):
    """Classifier-free guidance (1 + w) score(x, t | y) - w score(x, t | null), eq. (guide-cfg).

    ``cond_score(x, t, y)`` is a conditional score; label ``null`` means "no condition".
    """
    scale = _checks.real(scale, "scale")
    if not callable(cond_score):
        raise TypeError("cond_score must be callable as cond_score(x, t, y)")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must hold one label per sample, shape ({x.shape[0]},), got {tuple(y.shape)}")
        uncond = torch.full_like(y, null)
        return (1 + scale) * cond_score(x, t, y) - scale * cond_score(x, t, uncond)

    return guided


def _noise_level(process: NoiseProcess, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma_t / alpha_t, the noise level of x_t / alpha_t = x_0 + (sigma_t / alpha_t) eps."""
    return _col(process.sigma(t) / process.alpha(t), x)


def dynamic_threshold_score(score, process: NoiseProcess, *, percentile: float = 0.995,
                            bound: float = 1.0):
    """Dynamic thresholding of the denoised guess (page `diffusion_inverse`, eq. inv-threshold).

    The score gives the Tweedie estimate x0 = (x + sigma_t^2 score) / alpha_t. Per sample,
    s = max(bound, the ``percentile`` quantile of |x0| over its coordinates); x0 is clipped to
    [-s, s] and rescaled by bound / s, so it lies in [-bound, bound] (Imagen: bound = 1). The
    returned score is the one whose Tweedie estimate is the thresholded x0.
    """
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
    p = _checks.real(percentile, "percentile")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1], got {percentile}")
    bound = _checks.real(bound, "bound", positive=True)

    def thresholded(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s2 = _col(process.alpha(t), x), _col(process.sigma(t), x) ** 2
        x0 = (x + s2 * score(x, t)) / a                                    # (n, d)
        s = torch.quantile(x0.abs(), p, dim=1, keepdim=True).clamp_min(bound)  # (n, 1)
        x0 = torch.minimum(torch.maximum(x0, -s), s) * (bound / s)
        return (a * x0 - x) / s2

    return thresholded


def guidance_interval(guided, plain, process: NoiseProcess, sigma_lo: float, sigma_hi: float):
    """The guided score where sigma_lo <= sigma_t / alpha_t <= sigma_hi, ``plain`` elsewhere.

    Guidance in a limited interval of noise levels (page `diffusion_inverse`, eq. inv-interval);
    ``guided`` and ``plain`` are scores score(x, t), e.g. ``cfg_score(...)`` and the conditional
    score. t may be a scalar or one time per sample.
    """
    if not callable(guided) or not callable(plain):
        raise TypeError("guided and plain must be callables of (x, t)")
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
    lo = _checks.real(sigma_lo, "sigma_lo", nonnegative=True)
    hi = _checks.real(sigma_hi, "sigma_hi", positive=True)
    if hi < lo:
        raise ValueError(f"sigma_hi must be >= sigma_lo, got {sigma_hi} < {sigma_lo}")

    def interval(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        level = _noise_level(process, t, x)
        inside = (level >= lo) & (level <= hi)
        if not bool(inside.any()):
            return plain(x, t)
        if bool(inside.all()):
            return guided(x, t)
        return torch.where(inside, guided(x, t), plain(x, t))

    return interval


SAMPLERS = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "langevin": sample_langevin,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "ode": sample_ode,
}  # members run on any process and grid; sample_heun_edm (EDM only), sample_dpm_solver_2 (no DDPM)
# and sample_dpmpp_2m are not here: tests/test_sampling.py names each with its reason

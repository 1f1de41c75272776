r"""Gaussian noising processes, parameterisation conversions, the exact mixture score, the loss.

Every process noises data along :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` for t in [0, 1]
(book notation). Equation labels refer to ``book/diffusion_ddpm.md`` (``ddpm-*``,
``gauss-posterior``), ``book/diffusion_score.md`` (``score-*``) and ``book/diffusion_sde.md``
(``sde-*``). Times are tensors: a scalar or one time per sample, shape ``(n,)``.
"""

from __future__ import annotations

import math

import torch

from . import _checks
from .data import GaussianMixture
from .device import get_device

__all__ = ["NoiseProcess", "VP", "VE", "DDPM", "EDM", "sigma_schedule", "eps_to_x0", "x0_to_eps",
           "eps_to_score", "score_to_eps", "score_from_eps", "MixtureScore", "eps_loss",
           "EDMPrecond", "EpsPrecond", "edm_loss", "score_from_denoiser", "time_at_noise_level",
           "denoiser_from_eps"]


def _time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64 if like is None else like.dtype)
    if like is not None:
        t = t.to(like.device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("t must be finite")
    return t


def _as_t(t) -> torch.Tensor:
    """A tensor time as it is (keeping dtype and device), anything else as float64."""
    return t if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float64)


def _sigma_range(sigma_min, sigma_max) -> tuple[float, float]:
    """Validated noise levels 0 < sigma_min < sigma_max."""
    lo = _checks.real(sigma_min, "sigma_min", positive=True)
    hi = _checks.real(sigma_max, "sigma_max", positive=True)
    if hi <= lo:
        raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")
    return lo, hi


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample (n,) coefficient against x of shape (n, d)."""
    v = v.to(x.device, x.dtype)
    return v[:, None] if v.ndim == 1 else v


class NoiseProcess:
    r"""A path :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`, with its SDE :math:`dx = f x\,dt + g\,dw`.

    Subclasses define :meth:`alpha`, :meth:`sigma`, and for the continuous-time samplers
    :meth:`f` and :meth:`g2`. ``t_min`` is the smallest time a model should be trained on.
    """

    t_min: float = 0.0

    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def f(self, t) -> torch.Tensor:
        """Drift coefficient f(t) = d log alpha_t / dt, eq. (sde-coefficients)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time SDE")

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion g(t)^2 = d sigma_t^2/dt - 2 f(t) sigma_t^2, eq. (sde-coefficients)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time SDE")

    # ------------------------------------------------------------------ the forward process
    def marginal(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps, eq. (ddpm-reparam)."""
        _checks.tensor(x0, "x0", ndim=2, floating=True)
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
        t = _time(t, x0)
        return _col(self.alpha(t), x0) * x0 + _col(self.sigma(t), x0) * eps

    def sample(self, x0: torch.Tensor, t, *, generator: torch.Generator | None = None):
        """Draw x_t ~ q(x_t | x_0) in one step; return ``(x_t, eps)``."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return self.marginal(x0, t, eps), eps

    def sample_time(self, n: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training times, uniform on [t_min, 1]: shape (n,)."""
        u = torch.rand(n, generator=generator)
        return (self.t_min + (1 - self.t_min) * u).to(get_device(device))

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t, s):
        """Mean and std of q(x_s | x_t, x_0) for s < t on this path, eq. (gauss-posterior)."""
        t, s = _time(t, x_t), _time(s, x_t)
        if bool((s >= t).any()):
            raise ValueError("the posterior q(x_s | x_t, x_0) needs s < t")
        a_t, a_s, sig_t, sig_s = self.alpha(t), self.alpha(s), self.sigma(t), self.sigma(s)
        a_ts = a_t / a_s
        var_ts = sig_t**2 - a_ts**2 * sig_s**2          # variance of q(x_t | x_s)
        mean = (_col(a_ts * sig_s**2 / sig_t**2, x_t) * x_t
                + _col(a_s * var_ts / sig_t**2, x_t) * x0)
        std = (var_ts.clamp_min(0) * sig_s**2 / sig_t**2).sqrt()
        return mean, _col(std, x_t)

    def prior_std(self) -> float:
        """Std of the Gaussian the samplers start from at t = 1: sqrt(alpha_1^2 + sigma_1^2).

        It is the exact std of x_1 for data of unit variance per coordinate.
        """
        one = torch.tensor(1.0, dtype=torch.float64)
        return float((self.alpha(one) ** 2 + self.sigma(one) ** 2).sqrt())

    def prior(self, n: int, dim: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n draws from N(0, prior_std^2 I) in R^dim."""
        n = _checks.integer(n, "n", minimum=1)
        dim = _checks.integer(dim, "dim", minimum=1)
        return (self.prior_std() * torch.randn(n, dim, generator=generator)).to(get_device(device))

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of N(0, prior_std^2 I) at the rows of x."""
        var = self.prior_std() ** 2
        return -0.5 * (x.square().sum(1) / var + x.shape[1] * math.log(2 * math.pi * var))

    def time_grid(self, n_steps: int, *, t_min: float | None = None, device=None) -> torch.Tensor:
        """n_steps + 1 uniformly spaced times from 1 down to t_min (default ``self.t_min``)."""
        n_steps = _checks.integer(n_steps, "n_steps", minimum=1)
        t_min = self.t_min if t_min is None else _checks.real(t_min, "t_min", nonnegative=True)
        if not t_min < 1:
            raise ValueError(f"t_min must be < 1, got {t_min}")
        return torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64, device=get_device(device))


class VP(NoiseProcess):
    r"""Variance preserving: :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`, eq. (sde-vp).

    :math:`\alpha_t = \exp(-\tfrac12\int_0^t\beta)`, :math:`\sigma_t^2 = 1 - \alpha_t^2`. The defaults are
    the continuous-time limit of DDPM's linear schedule with T = 1000.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min = _checks.real(beta_min, "beta_min", positive=True)
        self.beta_max = _checks.real(beta_max, "beta_max", positive=True)
        if self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max must exceed beta_min, got {beta_max} <= {beta_min}")
        self.t_min = _checks.real(t_min, "t_min", nonnegative=True)

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _as_t(t) * (self.beta_max - self.beta_min)

    def _int_beta(self, t) -> torch.Tensor:
        t = _as_t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(-0.5 * self._int_beta(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(-self._int_beta(t)))     # accurate near t = 0

    def f(self, t) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t) -> torch.Tensor:
        return self.beta(t)

    def __repr__(self) -> str:
        return f"VP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class VE(NoiseProcess):
    r"""Variance exploding: :math:`\alpha_t = 1`, :math:`\sigma_t = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t`, eq. (sde-ve)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, t_min: float = 0.0):
        self.sigma_min, self.sigma_max = _sigma_range(sigma_min, sigma_max)
        self.t_min = _checks.real(t_min, "t_min", nonnegative=True)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t) -> torch.Tensor:
        return torch.ones_like(_as_t(t))

    def sigma(self, t) -> torch.Tensor:
        t = _as_t(t)
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def f(self, t) -> torch.Tensor:
        return torch.zeros_like(_as_t(t))

    def g2(self, t) -> torch.Tensor:
        return 2 * self._log_ratio * self.sigma(t) ** 2

    def prior_std(self) -> float:
        """VE starts from N(0, sigma_max^2 I): the data's own scale is negligible there."""
        return self.sigma_max

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


class DDPM(NoiseProcess):
    r"""Discrete DDPM with variances :math:`\beta_1..\beta_T`, eq. (ddpm-forward-step).

    Step i sits at time t = i / T, with :math:`\alpha = \sqrt{\bar\alpha_i}` and
    :math:`\sigma = \sqrt{1 - \bar\alpha_i}` (eq. ddpm-marginal); t = 0 is the data. Times off this
    grid are rejected. Build with :meth:`linear` or :meth:`cosine`.
    """

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must all lie in (0, 1)")
        self.betas = betas
        self.T = len(betas)
        self.alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self.t_min = 1.0 / self.T

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DDPM":
        """Ho et al.'s schedule, eq. (ddpm-linear-schedule)."""
        T = _checks.integer(T, "T", minimum=1)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DDPM":
        """Nichol and Dhariwal's schedule, eq. (ddpm-cosine-schedule), betas clipped at ``max_beta``.

        ``s`` is the paper's name for the offset that book/diffusion_ddpm_sampling.md writes delta.
        """
        T = _checks.integer(T, "T", minimum=1)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        return cls(betas)

    def index(self, t) -> torch.Tensor:
        """Step index i = t T for times on the grid {0, 1/T, ..., 1}."""
        t = _as_t(t)
        i = torch.round(t.double() * self.T)
        if bool(((t.double() * self.T - i).abs() > 1e-3).any()) or bool(((i < 0) | (i > self.T)).any()):
            raise ValueError(f"DDPM times must lie on the grid i / T with T = {self.T}")
        return i.long()

    def alpha(self, t) -> torch.Tensor:
        i = self.index(t)
        return self.alpha_bars.to(i.device)[i].sqrt().to(_as_t(t).dtype)

    def sigma(self, t) -> torch.Tensor:
        i = self.index(t)
        return (1 - self.alpha_bars.to(i.device)[i]).sqrt().to(_as_t(t).dtype)

    def sample_time(self, n: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training times: a uniform step index in 1..T, as t = i / T."""
        i = torch.randint(1, self.T + 1, (n,), generator=generator)
        return (i.double() / self.T).to(get_device(device))

    def time_grid(self, n_steps: int | None = None, *, t_min: float | None = None, device=None) -> torch.Tensor:
        """The full ancestral grid T/T, (T-1)/T, ..., 0, or ``n_steps`` evenly spaced steps of it."""
        n_steps = self.T if n_steps is None else _checks.integer(n_steps, "n_steps", minimum=1)
        if self.T % n_steps:
            raise ValueError(f"n_steps must divide T = {self.T}, got {n_steps}")
        return torch.arange(self.T, -1, -(self.T // n_steps), dtype=torch.float64,
                            device=get_device(device)) / self.T

    def posterior_ddpm(self, x_t: torch.Tensor, x0: torch.Tensor, i: int):
        """DDPM's own q(x_{i-1} | x_i, x_0), eqs. (ddpm-posterior-mean) and (ddpm-posterior-var)."""
        i = _checks.integer(i, "i", minimum=1)
        if i > self.T:
            raise ValueError(f"i must be at most T = {self.T}, got {i}")
        beta, ab, ab_prev = self.betas[i - 1], self.alpha_bars[i], self.alpha_bars[i - 1]
        mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x_t
        var = (1 - ab_prev) / (1 - ab) * beta
        return mean, var.sqrt().to(x_t.dtype)

    def __repr__(self) -> str:
        return f"DDPM(T={self.T})"


class EDM(NoiseProcess):
    r"""Karras et al.'s coordinates: :math:`\alpha = 1` and :math:`\sigma(t) = t`, so time *is* the noise level.

    The probability-flow ODE becomes dx/dsigma = (x - D(x; sigma)) / sigma, eq. (edm-ode). Grids for
    the samplers come from :func:`sigma_schedule` (they end at sigma = 0).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min, self.sigma_max = _sigma_range(sigma_min, sigma_max)
        self.sigma_data = _checks.real(sigma_data, "sigma_data", positive=True)
        self.t_min = self.sigma_min

    def alpha(self, t) -> torch.Tensor:
        return torch.ones_like(_as_t(t))

    def sigma(self, t) -> torch.Tensor:
        return _as_t(t).clone()

    def f(self, t) -> torch.Tensor:
        return torch.zeros_like(_as_t(t))

    def g2(self, t) -> torch.Tensor:
        return 2 * _as_t(t)

    def prior_std(self) -> float:
        return self.sigma_max

    def sample_time(self, n: int, *, generator: torch.Generator | None = None, device=None,
                    p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
        """Training noise levels: log sigma ~ N(p_mean, p_std^2), Karras et al.'s choice (eq. edm-lognormal)."""
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.exp(p_mean + p_std * z).to(get_device(device))

    def time_grid(self, n_steps: int, *, kind: str = "karras", rho: float = 7.0, t_min: float | None = None,
                  device=None) -> torch.Tensor:
        """n_steps sampling steps from sigma_max down to sigma_min, then a last step to 0 (see :func:`sigma_schedule`)."""
        return sigma_schedule(n_steps, self.sigma_min if t_min is None else t_min, self.sigma_max,
                              kind=kind, rho=rho, device=device)

    def __repr__(self) -> str:
        return f"EDM(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, sigma_data={self.sigma_data:g})"


def sigma_schedule(n_steps: int, sigma_min: float, sigma_max: float, *, kind: str = "karras", rho: float = 7.0,
                   device=None) -> torch.Tensor:
    """Decreasing noise levels sigma_0 = sigma_max > ... > sigma_{n-1} = sigma_min, then sigma_n = 0.

    ``kind``: "karras" spaces sigma^(1/rho) uniformly, eq. (edm-rho-schedule); "uniform" spaces sigma
    uniformly; "cosine" takes sigma = tan(pi/2 u) for u uniform between the ends, the noise levels of
    the cosine schedule (sqrt(1/abar - 1), eq. ddpm-cosine-schedule, with s = 0).
    """
    n_steps = _checks.integer(n_steps, "n_steps", minimum=1)
    lo, hi = _sigma_range(sigma_min, sigma_max)
    _checks.choice(kind, "kind", ["karras", "uniform", "cosine"])
    rho = _checks.real(rho, "rho", positive=True)
    u = torch.linspace(0, 1, n_steps, dtype=torch.float64) if n_steps > 1 else torch.zeros(1, dtype=torch.float64)
    if kind == "karras":
        sig = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    elif kind == "uniform":
        sig = hi + u * (lo - hi)
    else:
        a, b = math.atan(hi), math.atan(lo)
        sig = torch.tan(a + u * (b - a))
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).to(get_device(device))


# --------------------------------------------------------------------- parameterisations

def _coef(v, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample coefficient in x's dtype and device (Python floats keep full precision)."""
    return _col(torch.as_tensor(v, dtype=x.dtype, device=x.device), x)


def eps_to_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """x_0 = (x_t - sigma eps) / alpha, from eq. (ddpm-reparam)."""
    return (x_t - _coef(sigma, x_t) * eps) / _coef(alpha, x_t)


def x0_to_eps(x_t: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """eps = (x_t - alpha x_0) / sigma, from eq. (ddpm-reparam)."""
    return (x_t - _coef(alpha, x_t) * x0) / _coef(sigma, x_t)


def eps_to_score(eps: torch.Tensor, sigma) -> torch.Tensor:
    """score = -eps / sigma, eq. (score-eps)."""
    return -eps / _coef(sigma, eps)


def score_to_eps(score: torch.Tensor, sigma) -> torch.Tensor:
    """eps = -sigma score, eq. (score-eps)."""
    return -_coef(sigma, score) * score


def score_from_eps(model, process: NoiseProcess):
    """Turn an epsilon-predicting ``model(x, t)`` into a score function ``score(x, t)``, eq. (score-eps)."""
    if not callable(model):
        raise TypeError("model must be callable as model(x, t)")

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_to_score(model(x, t), process.sigma(t))

    return score


# --------------------------------------------------------------------- the exact model

class MixtureScore:
    r"""The exact score of a Gaussian-mixture data set noised by a process, eq. (score-mixture).

    If :math:`p_0 = \sum_k w_k \mathcal N(m_k, s_k^2 I)` then
    :math:`p_t = \sum_k w_k \mathcal N(\alpha_t m_k, (\alpha_t^2 s_k^2 + \sigma_t^2) I)`, eq. (score-smoothing),
    so its score is known in closed form at every t. Calling the object returns the score, so it
    can stand in for a perfectly trained model in every sampler.
    """

    def __init__(self, mixture: GaussianMixture, process: NoiseProcess):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not isinstance(process, NoiseProcess):
            raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
        self.mixture, self.process = mixture, process

    def marginal(self, t: float) -> GaussianMixture:
        """p_t as a GaussianMixture, for one scalar time t."""
        t = _time(t)
        if t.ndim != 0:
            raise ValueError("marginal(t) takes one scalar time")
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        m = self.mixture
        return GaussianMixture(a * m.means, (a * a * m.stds**2 + s * s).sqrt(), m.weights)

    def _components(self, x: torch.Tensor, t):
        """Log-weights (n, K) of the components of p_t at x, with alpha_t (n, 1) or () and v_k (n, K) or (K,).

        Distances come from |x - a m_k|^2 = |x|^2 - 2 a x.m_k + a^2 |m_k|^2, so no (n, K, d) tensor is built.
        """
        x = _checks.tensor(x, "x", ndim=2, last_dim=self.mixture.dim, floating=True)
        t = _time(t, x)
        a, s = _col(self.process.alpha(t), x), _col(self.process.sigma(t), x)     # (n,1) or ()
        m = self.mixture
        means, stds, w = m.means.to(x), m.stds.to(x), m.weights.to(x)
        var = a**2 * stds**2 + s**2                                                # (n,K) or (K,)
        sq = (x.square().sum(1, keepdim=True) - 2 * a * (x @ means.T)
              + a**2 * means.square().sum(1))                                      # (n,K)
        logits = w.log() - 0.5 * sq.clamp_min(0) / var - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)
        return logits, a, var

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """log p_t(x): shape (n,)."""
        logits, _, _ = self._components(x, t)
        return torch.logsumexp(logits, dim=1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) (alpha_t m_k - x) / v_k: shape (n, d)."""
        logits, a, var = self._components(x, t)
        c = torch.softmax(logits, dim=1) / var                                     # r_k / v_k, (n,K)
        return a * (c @ self.mixture.means.to(x)) - c.sum(1, keepdim=True) * x

    __call__ = score

    def class_log_probs(self, x: torch.Tensor, t, classes) -> torch.Tensor:
        """Exact noisy classifier log p_t(y | x), shape (n, C), when class c owns the components ``classes[c]``.

        p_t(y | x) sums the posterior responsibilities of the class's components (eq. guide-bayes).
        """
        logits, _, _ = self._components(x, t)
        total = torch.logsumexp(logits, dim=1, keepdim=True)
        return torch.stack([torch.logsumexp(logits[:, list(c)], dim=1) for c in classes], dim=1) - total

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """The ideal epsilon-prediction E[eps | x_t] = -sigma_t score, eq. (score-eps)."""
        return score_to_eps(self.score(x, t), self.process.sigma(_time(t, x)))


# --------------------------------------------------------------------- training

def eps_loss(model, process: NoiseProcess, x0: torch.Tensor, *, labels: torch.Tensor | None = None,
             p_uncond: float = 0.0, null: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The simple DDPM loss E ||eps_theta(x_t, t) - eps||^2, eq. (ddpm-loss-simple), on a batch x0.

    With ``labels`` the model is conditional, ``model(x_t, t, y)``; each label is replaced by
    ``null`` with probability ``p_uncond`` (label dropout, eq. guide-dropout), so that one network
    learns the conditional and the unconditional score.
    """
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    t = process.sample_time(len(x0), generator=generator, device=x0.device).to(x0.dtype)
    x_t, eps = process.sample(x0, t, generator=generator)
    if labels is None:
        return (model(x_t, t) - eps).square().sum(1).mean()
    p_uncond = _checks.real(p_uncond, "p_uncond")
    if not 0 <= p_uncond <= 1 or null is None:
        raise ValueError("label dropout needs p_uncond in [0, 1] and the null label")
    drop = (torch.rand(len(x0), generator=generator) < p_uncond).to(labels.device)
    y = torch.where(drop, torch.full_like(labels, null), labels)
    return (model(x_t, t, y) - eps).square().sum(1).mean()


class EpsPrecond(torch.nn.Module):
    """The plain epsilon-parameterisation in EDM coordinates: eps_hat = F(c_in x, log(sigma) / 4).

    The baseline that :class:`EDMPrecond` is compared with: same network, same time input, the raw
    noise as target. By default (``sigma_data=None``) the input is not scaled, c_in = 1; with a
    ``sigma_data`` it gets EDM's input scaling c_in = 1 / sqrt(sigma^2 + sigma_data^2) of
    eq. (edm-precond), so that the output parameterisation can be compared on its own. Calling it
    returns the epsilon-prediction.
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float | None = None):
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.sigma_data = None if sigma_data is None else _checks.real(sigma_data, "sigma_data", positive=True)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if self.sigma_data is not None:
            x = x / _col((sigma**2 + self.sigma_data**2).sqrt(), x)                # c_in x
        return self.net(x, sigma.log() / 4)


# --------------------------------------------------------------------- EDM preconditioning

class EDMPrecond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), eq. (edm-precond), around a network F(x, t).

    ``net`` is any module called as ``net(x, t)`` (e.g. :class:`mlbook.nets.TimeMLP`); it receives
    c_noise = log(sigma) / 4 as its time input. Calling the module returns the denoised estimate of x_0.
    ``scale_input=False`` feeds the raw x instead of c_in x (an ablation of the input scaling alone).
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float = 0.5, *, scale_input: bool = True):
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(scale_input, bool):
            raise TypeError(f"scale_input must be True or False, got {scale_input!r}")
        self.net = net
        self.sigma_data = _checks.real(sigma_data, "sigma_data", positive=True)
        self.scale_input = scale_input

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at noise levels sigma, eq. (edm-precond)."""
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        inp = _col(c_in, x) * x if self.scale_input else x
        return _col(c_skip, x) * x + _col(c_out, x) * self.net(inp, c_noise)


def edm_loss(model: EDMPrecond, process: EDM, x0: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """E lambda(sigma) ||D(x0 + sigma eps; sigma) - x0||^2 with lambda = 1 / c_out^2, eq. (edm-loss)."""
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    sigma = process.sample_time(len(x0), generator=generator, device=x0.device).to(x0.dtype)
    x, _ = process.sample(x0, sigma, generator=generator)
    _, c_out, _, _ = model.coefficients(sigma)
    return ((model(x, sigma) - x0).square().sum(1) / c_out**2).mean()


def score_from_denoiser(denoiser, process: NoiseProcess):
    """Score from an x_0-predictor D(x, t): (alpha_t D - x) / sigma_t^2, eq. (score-tweedie)."""
    if not callable(denoiser):
        raise TypeError("denoiser must be callable as denoiser(x, t)")

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = _col(process.alpha(t), x), _col(process.sigma(t), x)
        return (a * denoiser(x, t) - x) / s**2

    return score


def time_at_noise_level(process: NoiseProcess, sigma) -> torch.Tensor:
    """The time t at which sigma_t / alpha_t equals the EDM noise level ``sigma`` (page ``diffusion_fast``, table edm-table).

    Exact for :class:`EDM` (t = sigma); otherwise found by bisection on [0, 1], where sigma_t / alpha_t
    increases. Discrete :class:`DDPM` processes are refused: their times lie on a grid.
    """
    if isinstance(process, DDPM):
        raise TypeError("a DDPM process has times only on its grid; use its continuous limit VP")
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if isinstance(process, EDM):
        return sigma.clone()
    lo, hi = torch.zeros_like(sigma), torch.ones_like(sigma)

    def level(t: torch.Tensor) -> torch.Tensor:
        return process.sigma(t) / process.alpha(t)

    low, high = float(level(torch.tensor(0.0))), float(level(torch.tensor(1.0)))
    if not bool(((sigma >= low) & (sigma <= high)).all()):
        raise ValueError(f"noise levels must lie in [{low:.3g}, {high:.3g}] for {process!r}")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = level(mid) < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def denoiser_from_eps(model, process: NoiseProcess):
    """An EDM denoiser D(x; sigma) from an epsilon model trained on ``process``, eq. (edm-denoiser-from-eps).

    D(x; sigma) = x - sigma eps_hat(alpha_t x, t) at the time t with sigma_t / alpha_t = sigma
    (:func:`time_at_noise_level`): x is in unscaled coordinates, and alpha_t x is a point of the
    training path. The result runs with the EDM samplers (``score_from_denoiser(D, EDM())``); it is
    the analogue of k-diffusion's ``DiscreteEpsDDPMDenoiser`` for a continuous-time VP, VE or other path.
    """
    if not callable(model):
        raise TypeError("model must be callable as model(x, t)")
    if isinstance(process, DDPM) or not isinstance(process, NoiseProcess):
        time_at_noise_level(process, 1.0)                         # raises the clear error

    def denoiser(x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        t = time_at_noise_level(process, sigma)
        a = process.alpha(t).to(x)
        return x - _col(sigma.to(x), x) * model(_col(a, x) * x, t.to(x))

    return denoiser


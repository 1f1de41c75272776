r"""Inverse problems with a diffusion prior (page ``diffusion_inverse``).

A measurement :math:`y = A x_0 + r\,\xi`, :math:`\xi \sim \mathcal N(0, I)`, of a point drawn from
a prior :math:`p_0`; we want samples of the posterior :math:`p(x_0 \mid y)`.

- :func:`gaussian_posterior`: one Gaussian prior, one linear Gaussian measurement (equation
  ``inv-gauss-post``), and its checker for the reader (:func:`check_gaussian_posterior`).
- :func:`mixture_posterior`: the exact posterior of a Gaussian-mixture prior, again a mixture
  (:class:`FullGaussianMixture`, equations ``inv-mix-post`` and ``inv-mix-weights``).
- :class:`PosteriorScore`: the exact score of the noised posterior :math:`p_t(x \mid y)`, in
  closed form at every noise level.
- :func:`likelihood_score`: the prior score plus the gradient of the exact noisy likelihood
  :math:`\log p_t(y \mid x_t)` (equation ``inv-noisy-lik``); equal to :class:`PosteriorScore`.
- :func:`dps_score`: diffusion posterior sampling (Chung et al. 2023), the noisy likelihood
  replaced by the likelihood at Tweedie's denoised point (equation ``inv-dps``), times a step
  size zeta.
- :func:`replace_known`: inpainting by replacement (the known-coordinate projection of
  Lugmayr et al. 2022, without their resampling loops), as a sampler that takes one step of a
  book sampler at a time.

Every score here has the samplers' signature ``score(x, t)`` (``mlbook.sampling``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks
from .data import GaussianMixture
from .diffusion import MixtureScore, NoiseProcess, _col
from .exercises import Case, Verdict, check

__all__ = ["FullGaussianMixture", "gaussian_posterior", "mixture_posterior", "PosteriorScore",
           "noisy_log_likelihood", "likelihood_score", "tweedie_x0", "dps_score", "replace_known",
           "check_gaussian_posterior"]


def _operator(A, dim: int) -> torch.Tensor:
    A = torch.as_tensor(A, dtype=torch.float64)
    if A.ndim != 2 or A.shape[1] != dim:
        raise ValueError(f"A must be a matrix of shape (m, {dim}), got shape {tuple(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError("A must be finite")
    return A


def _measurement(y, m: int) -> torch.Tensor:
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if y.shape != (m,) or not bool(torch.isfinite(y).all()):
        raise ValueError(f"y must hold {m} finite number(s), one per row of A, got {tuple(y.shape)}")
    return y


class FullGaussianMixture:
    r""":math:`\sum_k w_k \mathcal N(\mu_k, \Sigma_k)` with full covariances (a posterior of a mixture
    under a linear measurement is one; :class:`mlbook.data.GaussianMixture` holds isotropic ones).

    Args:
        means: ``(K, d)``; covs: ``(K, d, d)`` symmetric positive definite; weights: ``(K,)``.
    """

    def __init__(self, means, covs, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        _checks.tensor(self.means, "means", ndim=2, min_rows=1)
        k, d = self.means.shape
        if self.covs.shape != (k, d, d) or self.weights.shape != (k,):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}) and weights ({k},), got "
                             f"{tuple(self.covs.shape)} and {tuple(self.weights.shape)}")
        if bool((self.weights < 0).any()) or float(self.weights.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self.weights = self.weights / self.weights.sum()
        self.chol = torch.linalg.cholesky(self.covs)        # raises if a cov is not SPD
        self.dim = d

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, K)`` matrix of log w_k + log N(x; mu_k, Sigma_k)."""
        x = _checks.tensor(x, "x", ndim=2, last_dim=self.dim, floating=True).double()
        diff = x[:, None, :] - self.means.to(x.device)                          # (n, K, d)
        L = self.chol.to(x.device)
        z = torch.linalg.solve_triangular(L, diff.transpose(0, 1).transpose(1, 2),
                                          upper=False)                          # (K, d, n)
        maha = z.square().sum(1).T                                              # (n, K)
        logdet = 2 * L.diagonal(dim1=1, dim2=2).log().sum(1)                    # (K,)
        return (self.weights.to(x.device).log() - 0.5 * maha - 0.5 * logdet
                - 0.5 * self.dim * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_probs(x), dim=1)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws, float64, shape (n, d)."""
        n = _checks.integer(n, "n", minimum=1)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, 1, generator=generator, dtype=torch.float64)
        return self.means[comp] + (self.chol[comp] @ noise)[..., 0]

    def __repr__(self) -> str:
        return f"FullGaussianMixture(K={len(self.weights)}, d={self.dim})"


def gaussian_posterior(mean, cov, A, y, noise_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Posterior of :math:`x \sim \mathcal N(m, S)` given :math:`y = A x + r\xi`, equation
    ``inv-gauss-post``: covariance :math:`S' = S - S A^\top (A S A^\top + r^2 I)^{-1} A S`,
    mean :math:`m' = m + S A^\top (A S A^\top + r^2 I)^{-1} (y - A m)`. Returns ``(m', S')``."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}), got {tuple(cov.shape)}")
    A = _operator(A, d)
    y = _measurement(y, A.shape[0])
    r = _checks.real(noise_std, "noise_std", positive=True)
    gram = A @ cov @ A.T + r * r * torch.eye(A.shape[0], dtype=torch.float64)   # (m, m)
    gain = torch.linalg.solve(gram, A @ cov).T                                  # S A^T G^-1, (d, m)
    post_cov = cov - gain @ A @ cov
    return mean + gain @ (y - A @ mean), 0.5 * (post_cov + post_cov.T)


def mixture_posterior(prior: GaussianMixture, A, y, noise_std: float) -> FullGaussianMixture:
    r"""The exact posterior of a Gaussian-mixture prior under ``y = A x + noise_std * xi``:
    a mixture of the components' posteriors (equation ``inv-mix-post``) with weights
    :math:`\pi_k \mathcal N(y; A m_k, s_k^2 A A^\top + r^2 I)`, normalised (``inv-mix-weights``)."""
    if not isinstance(prior, GaussianMixture):
        raise TypeError(f"prior must be a GaussianMixture, got {type(prior).__name__}")
    A = _operator(A, prior.dim)
    y = _measurement(y, A.shape[0])
    r = _checks.real(noise_std, "noise_std", positive=True)
    eye_d, eye_m = (torch.eye(k, dtype=torch.float64) for k in (prior.dim, A.shape[0]))
    means, covs, logw = [], [], []
    for m_k, s_k, w_k in zip(prior.means, prior.stds, prior.weights):
        mu, cov = gaussian_posterior(m_k, s_k**2 * eye_d, A, y, r)
        means.append(mu)
        covs.append(cov)
        evidence = torch.distributions.MultivariateNormal(A @ m_k, s_k**2 * A @ A.T + r * r * eye_m)
        logw.append(w_k.log() + evidence.log_prob(y))
    weights = torch.softmax(torch.stack(logw), 0)
    return FullGaussianMixture(torch.stack(means), torch.stack(covs), weights)


class PosteriorScore:
    r"""The exact score of the noised posterior :math:`p_t(x \mid y) = \sum_k \pi'_k
    \mathcal N(x; \alpha_t \mu'_k, \alpha_t^2 \Sigma'_k + \sigma_t^2 I)`; callable as ``score(x, t)``."""

    def __init__(self, posterior: FullGaussianMixture, process: NoiseProcess):
        if not isinstance(posterior, FullGaussianMixture):
            raise TypeError(f"posterior must be a FullGaussianMixture, got {type(posterior).__name__}")
        if not isinstance(process, NoiseProcess):
            raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
        self.posterior, self.process = posterior, process

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        _checks.tensor(x, "x", ndim=2, last_dim=self.posterior.dim, floating=True)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        a = self.process.alpha(t).double()[:, None, None, None]                     # (n,1,1,1)
        s = self.process.sigma(t).double()[:, None, None, None]
        p = self.posterior
        eye = torch.eye(p.dim, dtype=torch.float64, device=x.device)
        cov = a**2 * p.covs.to(x.device) + s**2 * eye                               # (n,K,d,d)
        diff = x.double()[:, None, :, None] - a * p.means.to(x.device)[..., None]   # (n,K,d,1)
        sol = torch.linalg.solve(cov, diff)                                         # (n,K,d,1)
        logdet = torch.linalg.slogdet(cov)[1]                                       # (n,K)
        logits = p.weights.to(x.device).log() - 0.5 * (diff * sol).sum((2, 3)) - 0.5 * logdet
        resp = torch.softmax(logits, 1)                                             # (n,K)
        return -(resp[..., None] * sol[..., 0]).sum(1).to(x.dtype)


def noisy_log_likelihood(prior: MixtureScore, A, y, noise_std: float):
    r"""The exact noisy likelihood of a Gaussian-mixture prior as a function ``log_lik(x, t)`` of
    shape (n,), equation ``inv-noisy-lik``:
    :math:`p_t(y \mid x) = \sum_k w_k(x) \mathcal N(y; A \hat m_k(x), c_k A A^\top + r^2 I)`, where
    :math:`\hat m_k = m_k + \alpha_t s_k^2 (x - \alpha_t m_k)/v_k` and
    :math:`c_k = s_k^2 \sigma_t^2 / v_k`, :math:`v_k = \alpha_t^2 s_k^2 + \sigma_t^2`."""
    if not isinstance(prior, MixtureScore):
        raise TypeError(f"prior must be a MixtureScore, got {type(prior).__name__}")
    mix, process = prior.mixture, prior.process
    A = _operator(A, mix.dim)
    y = _measurement(y, A.shape[0])
    r = _checks.real(noise_std, "noise_std", positive=True)
    AAt = A @ A.T                                                                   # (m, m)
    eye_m = torch.eye(A.shape[0], dtype=torch.float64)

    def log_lik(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits, a, var = prior._components(x.double(), t.double())                  # (n,K)
        resp_log = torch.log_softmax(logits, 1)
        s2 = mix.stds.to(x.device) ** 2                                             # (K,)
        means = mix.means.to(x.device)
        m_hat = (means[None]
                 + (a * s2 / var)[..., None] * (x.double()[:, None] - a[..., None] * means))
        c = s2 * (var - a**2 * s2) / var                                            # (n,K)
        cov = c[..., None, None] * AAt.to(x.device) + r * r * eye_m.to(x.device)   # (n,K,m,m)
        resid = (y.to(x.device) - m_hat @ A.to(x.device).T)[..., None]              # (n,K,m,1)
        log_n = -0.5 * ((resid * torch.linalg.solve(cov, resid)).sum((2, 3))
                        + torch.linalg.slogdet(cov)[1] + len(y) * math.log(2 * math.pi))
        return torch.logsumexp(resp_log + log_n, 1)                                 # (n,)

    return log_lik


def likelihood_score(prior: MixtureScore, A, y, noise_std: float):
    """score(x, t) = grad log p_t(x) + grad log p_t(y | x), the prior score guided by the exact
    noisy likelihood (:func:`noisy_log_likelihood`); by Bayes' rule the exact posterior score."""
    log_lik = noisy_log_likelihood(prior, A, y, noise_std)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            grad = torch.autograd.grad(log_lik(xg, t).sum(), xg)[0]
        return prior(x, t) + grad.to(x.dtype)

    return score


def tweedie_x0(score, process: NoiseProcess, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Tweedie's denoiser :math:`\hat x_0 = (x + \sigma_t^2 \nabla \log p_t(x)) / \alpha_t`."""
    a, s = _col(process.alpha(t), x), _col(process.sigma(t), x)
    return (x + s**2 * score(x, t)) / a


def dps_score(score, process: NoiseProcess, A, y, noise_std: float, zeta: float = 1.0):
    r"""Diffusion posterior sampling, equation ``inv-dps``: score(x, t) plus zeta times
    :math:`\nabla_x \log \mathcal N(y; A \hat x_0(x), r^2 I) = -\nabla_x \lVert y - A\hat x_0(x)
    \rVert^2 / (2 r^2)`, the gradient taken through the denoiser :func:`tweedie_x0`.

    ``A`` is (m, d) or a callable operator ``A(x0) -> (n, m)`` (a mask, a blur); ``y`` is (m,) or
    (n, m), one measurement per sample. zeta = 1 plugs Tweedie's point into the likelihood.
    """
    if not callable(score):
        raise TypeError("score must be callable as score(x, t)")
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a NoiseProcess, got {type(process).__name__}")
    r = _checks.real(noise_std, "noise_std", positive=True)
    zeta = _checks.real(zeta, "zeta", nonnegative=True)
    if callable(A):
        operator = A
    else:
        matrix = torch.as_tensor(A, dtype=torch.float64)
        if matrix.ndim != 2:
            raise ValueError(f"A must be a matrix (m, d) or a callable, got shape {tuple(matrix.shape)}")

        def operator(x0: torch.Tensor) -> torch.Tensor:
            if x0.shape[1] != matrix.shape[1]:
                raise ValueError(f"A has {matrix.shape[1]} columns but x has {x0.shape[1]}")
            return x0 @ matrix.to(x0).T
    y = torch.as_tensor(y)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y must be finite")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s_x = score(xg, t)
            x0 = (xg + _col(process.sigma(t), xg) ** 2 * s_x) / _col(process.alpha(t), xg)
            pred = operator(x0)
            target = y.to(pred).expand_as(pred)
            loss = (target - pred).square().sum() / (2 * r * r)
            grad = torch.autograd.grad(loss, xg)[0]
        return s_x.detach() - zeta * grad

    return guided


def replace_known(sampler, score, process: NoiseProcess, x: torch.Tensor, ts, known: torch.Tensor,
                  mask: torch.Tensor, *, jumps: int = 1,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Inpainting by replacement (equation ``inv-replace``): after every step of ``sampler`` (any
    book sampler, run on the two times ``ts[i], ts[i + 1]``), the known coordinates (``mask`` true)
    are overwritten by a fresh draw of the noised truth, :math:`\alpha_s x_{\mathrm{known}} +
    \sigma_s \varepsilon`; at the last time they are set to the truth itself.

    ``jumps > 1`` adds RePaint's resampling (Lugmayr et al. 2022, equation ``inv-repaint``): the
    step from ``ts[i]`` to ``ts[i + 1]`` is taken ``jumps`` times, and between two of them the
    whole state is noised back from ``ts[i + 1]`` to ``ts[i]`` by the forward transition
    :math:`x \mapsto (\alpha_i/\alpha_{i+1}) x + \sqrt{\sigma_i^2 - (\alpha_i/\alpha_{i+1})^2
    \sigma_{i+1}^2}\,\varepsilon`, so that the unknown part gets to agree with the known part.
    ``jumps=1`` is plain replacement (the same random draws as without the argument)."""
    _checks.tensor(x, "x", ndim=2, floating=True)
    if known.shape != x.shape or mask.shape != x.shape:
        raise ValueError(f"known and mask must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(known.shape)} and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {mask.dtype}")
    ts = torch.as_tensor(ts)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError("ts must be a decreasing grid of at least two times")
    jumps = _checks.integer(jumps, "jumps", minimum=1)
    known = known.to(x)

    def noise(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)

    for i in range(len(ts) - 1):
        last = i == len(ts) - 2
        for u in range(1 if last else jumps):
            if u > 0:                                   # back from ts[i + 1] to ts[i]
                ratio = process.alpha(ts[i]) / process.alpha(ts[i + 1])
                spread = (process.sigma(ts[i]) ** 2 - (ratio * process.sigma(ts[i + 1])) ** 2)
                x = float(ratio) * x + float(spread.clamp_min(0).sqrt()) * noise(x)
            x = sampler(score, process, x, ts[i:i + 2], generator=generator, show_progress=False)
            s = ts[i + 1].expand(x.shape[0]).to(x)
            noisy = _col(process.alpha(s), x) * known + _col(process.sigma(s), x) * noise(x)
            x = torch.where(mask, known if last else noisy, x)
    return x


def check_gaussian_posterior(fn: Callable) -> Verdict:
    """Checker for the reader's ``fn(mean, cov, A, y, noise_std) -> (post_mean, post_cov)``, the
    posterior of one Gaussian under one linear Gaussian measurement (equation ``inv-gauss-post``)."""
    cases = []
    settings = [
        ("a 2-D prior, one measurement of the first coordinate",
         ([1.0, -1.0], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]], [2.0], 0.5)),
        ("a correlated 2-D prior, a 1x2 projection",
         ([0.0, 0.5], [[1.0, 0.6], [0.6, 2.0]], [[0.6, 0.8]], [1.0], 0.3)),
        ("a 3-D prior, two measurements",
         ([0.0, 0.0, 1.0], [[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]],
          [[1.0, 1.0, 0.0], [0.0, 1.0, -1.0]], [0.5, -0.5], 1.0)),
    ]
    for what, args in settings:
        want_mean, want_cov = gaussian_posterior(*args)

        def right(out, want_mean=want_mean, want_cov=want_cov):
            try:
                mean, cov = (torch.as_tensor(v, dtype=torch.float64) for v in out)
            except (TypeError, ValueError):
                return False
            return (mean.reshape(-1).shape == want_mean.shape and cov.shape == want_cov.shape
                    and bool(torch.allclose(mean.reshape(-1), want_mean, atol=1e-8))
                    and bool(torch.allclose(cov, want_cov, atol=1e-8)))

        args_t = tuple(torch.as_tensor(a, dtype=torch.float64) if isinstance(a, list) else a
                       for a in args)
        cases.append(Case(what, args_t, right,
                          "the posterior precision is S^-1 + A^T A / r^2; the mean moves from m "
                          "by the gain S A^T (A S A^T + r^2 I)^-1 times the residual y - A m."))
    return check(fn, cases, name="the Gaussian posterior")

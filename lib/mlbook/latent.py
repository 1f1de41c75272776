"""Latent-variable models, continuous and discrete (page ``latent_variables``).

- The variational autoencoder: a Gaussian encoder, a standard-normal prior, a Bernoulli or
  Gaussian decoder, the reparameterised evidence lower bound and an importance-weighted bound
  (:class:`VAE`). Its ``encode``/``decode`` make it a KL-regularised autoencoder to a small
  latent that later chapters can train a prior on.
- Gradients of expectations: the pathwise and score-function estimators on a Gaussian, with a
  baseline, and their exact variances for f(z) = z^2 (:func:`pathwise_gradient`,
  :func:`score_function_gradient`, :func:`gaussian_square_variances`).
- Discrete choices: Gumbel noise, the Gumbel-max sampler, the Gumbel-softmax relaxation and
  the straight-through estimator; per-sample gradient estimators for a categorical
  (:func:`categorical_gradient`); the class probabilities of "argmax of scores plus noise"
  for any noise (:func:`argmax_probabilities`); logsumexp as a smooth maximum.
- Vector quantisation: a quantiser with the codebook and commitment losses, the
  straight-through gradient, exponential-moving-average codebook updates and dead-code
  repair (:class:`VectorQuantizer`); codebook perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import _checks
from .device import get_device, rand, randn
from .exercises import Case, Verdict, check
from .nets import mlp

__all__ = [
    "gaussian_kl_to_standard", "VAE",
    "pathwise_gradient", "score_function_gradient", "gaussian_square_variances",
    "sample_gumbel", "gumbel_max", "gumbel_softmax", "straight_through",
    "categorical_gradient", "exact_categorical_gradient", "argmax_probabilities",
    "cohens_w", "smooth_max", "logsumexp_bounds",
    "VectorQuantizer", "VQVAE", "perplexity", "scalar_quantizer", "quantize_scalar",
    "check_gumbel_max",
]

def _temperature(temperature) -> float:
    return _checks.real(temperature, "temperature", positive=True)


def _logits(logits, name: str = "logits") -> torch.Tensor:
    _checks.tensor(logits, name, floating=True)
    if logits.ndim == 0 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a last dimension of at least one category, "
                         f"got shape {tuple(logits.shape)}")
    return logits


# ====================================================================== the VAE

def gaussian_kl_to_standard(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    r"""KL[N(mean, diag exp(log_var)), N(0, I)], summed over the last axis (the closed form
    of the page's Gaussian KL term, equation ``lat-kl-gauss``): shape ``mean.shape[:-1]``."""
    _checks.tensor(mean, "mean", floating=True)
    _checks.tensor(log_var, "log_var", floating=True)
    if mean.shape != log_var.shape:
        raise ValueError(f"mean and log_var must have the same shape, got {tuple(mean.shape)} "
                         f"and {tuple(log_var.shape)}")
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)


class VAE(nn.Module):
    r"""A variational autoencoder with a diagonal-Gaussian encoder and a N(0, I) prior.

    ``encode(x)`` gives the mean and log-variance of q(z | x); ``decode(z)`` the decoder's
    output (Bernoulli logits, or the Gaussian mean); ``elbo(x)`` the reparameterised evidence
    lower bound per example (page ``latent_variables``, equations ``lat-elbo-recon-kl`` and
    ``lat-reparam``), in nats; ``log_likelihood_bound(x, samples)`` the importance-weighted
    bound, which tightens towards log p(x) as ``samples`` grows.

    Args:
        data_dim: d, the length of a data vector.
        latent_dim: the latent's dimension (4 to 8 for 8x8 digits).
        hidden: width of the two hidden layers of the encoder and of the decoder.
        likelihood: ``"bernoulli"`` (binary data; the decoder gives logits) or ``"gaussian"``
            (real data; the decoder gives the mean of N(mean, noise_std^2 I)).
        noise_std: the Gaussian decoder's fixed standard deviation.
        beta: weight of the KL term in :meth:`loss` (1 is the ELBO; other values give a
            KL-regularised autoencoder, whose loss is no longer a bound).
    """

    def __init__(self, data_dim: int = 64, latent_dim: int = 8, hidden: int = 256, *,
                 likelihood: str = "bernoulli", noise_std: float = 0.1, beta: float = 1.0):
        super().__init__()
        self.data_dim = _checks.integer(data_dim, "data_dim", minimum=1)
        self.latent_dim = _checks.integer(latent_dim, "latent_dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        self.likelihood = _checks.choice(likelihood, "likelihood", ("bernoulli", "gaussian"))
        self.noise_std = _checks.real(noise_std, "noise_std", positive=True)
        self.beta = _checks.real(beta, "beta", nonnegative=True)
        self.encoder = mlp(self.data_dim, hidden, hidden, 2 * self.latent_dim)
        self.decoder = mlp(self.latent_dim, hidden, hidden, self.data_dim)

    def _x(self, x: torch.Tensor) -> torch.Tensor:
        return _checks.tensor(x, "x", ndim=2, last_dim=self.data_dim, floating=True)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each ``(n, latent_dim)``."""
        mean, log_var = self.encoder(self._x(x)).chunk(2, dim=-1)
        return mean, log_var.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for latents ``(n, latent_dim)``: logits or means, ``(n, data_dim)``."""
        _checks.tensor(z, "z", ndim=2, last_dim=self.latent_dim, floating=True)
        return self.decoder(z)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]: the pixel probabilities (Bernoulli) or the mean (Gaussian)."""
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels, given the decoder's output ``out``: shape ``(n,)``."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        var = self.noise_std ** 2
        return (-0.5 * (x - out).square() / var
                - 0.5 * math.log(2 * math.pi * var)).sum(-1)

    def _sample_z(self, mean, log_var, generator, samples=None):
        shape = mean.shape if samples is None else (samples, *mean.shape)
        eps = randn(*shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * log_var).exp() * eps                   # the reparameterisation

    def elbo(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
             return_terms: bool = False):
        """The single-sample reparameterised ELBO per example, in nats: ``(n,)``.

        With ``return_terms`` also the reconstruction term E_q log p(x | z) (one sample) and
        the KL term KL[q(z | x), p(z)] (closed form), so that ``elbo = recon - kl``.
        """
        mean, log_var = self.encode(x)
        z = self._sample_z(mean, log_var, generator)                  # (n, latent_dim)
        recon = self.log_likelihood(x, self.decode(z))               # (n,)
        kl = gaussian_kl_to_standard(mean, log_var)                   # (n,)
        return (recon - kl, recon, kl) if return_terms else recon - kl

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean over the batch of -(recon - beta * KL): minus the ELBO when beta = 1."""
        _, recon, kl = self.elbo(x, generator=generator, return_terms=True)
        return -(recon - self.beta * kl).mean()

    @torch.no_grad()
    def log_likelihood_bound(self, x: torch.Tensor, samples: int = 64, *,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted lower bound on log p(x) from ``samples`` draws of q: ``(n,)``.

        log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x); S = 1 is the ELBO, and the bound rises
        towards log p(x) as S grows (page ``latent_variables``, equation ``lat-iw-bound``).
        """
        samples = _checks.integer(samples, "samples", minimum=1)
        x = self._x(x)
        mean, log_var = self.encode(x)
        z = self._sample_z(mean, log_var, generator, samples)         # (S, n, latent_dim)
        out = self.decode(z.reshape(-1, self.latent_dim)).reshape(samples, *x.shape)
        log_px_z = self.log_likelihood(x.expand(samples, *x.shape), out)   # (S, n)
        log_pz = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * (z - mean).square() / log_var.exp() - 0.5 * log_var
                  - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(samples)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images E[x | z] of ``n`` latents drawn from the prior: ``(n, data_dim)``."""
        n = _checks.integer(n, "n", minimum=1)
        dev = next(self.parameters()).device
        return self.mean_image(randn(n, self.latent_dim, generator=generator, device=dev))


# ====================================================================== gradients of expectations

def _gaussian_params(mu, sigma, n):
    mu = _checks.real(mu, "mu")
    sigma = _checks.real(sigma, "sigma", positive=True)
    n = _checks.integer(n, "n", minimum=1)
    return mu, sigma, n


def pathwise_gradient(f: Callable[[torch.Tensor], torch.Tensor], mu: float, sigma: float,
                      n: int, *, generator: torch.Generator | None = None,
                      device=None) -> torch.Tensor:
    """Per-sample pathwise estimates of the gradient of E_{z ~ N(mu, sigma^2)} f(z).

    Each row is (d/dmu, d/dsigma) of f(mu + sigma * eps) for one eps ~ N(0, 1) (page
    ``latent_variables``, equation ``lat-pathwise``): shape ``(n, 2)``, float64. ``f`` maps a
    tensor of z values elementwise to f(z) and must be differentiable.
    """
    mu, sigma, n = _gaussian_params(mu, sigma, n)
    eps = randn(n, generator=generator, device=device, dtype=torch.float64)
    m = torch.full_like(eps, mu, requires_grad=True)
    s = torch.full_like(eps, sigma, requires_grad=True)
    g_mu, g_sigma = torch.autograd.grad(f(m + s * eps).sum(), (m, s))
    return torch.stack([g_mu, g_sigma], 1)


def score_function_gradient(f: Callable[[torch.Tensor], torch.Tensor], mu: float,
                            sigma: float, n: int, *, baseline: float | str | None = None,
                            generator: torch.Generator | None = None,
                            device=None) -> torch.Tensor:
    """Per-sample score-function (REINFORCE) estimates of the same gradient: ``(n, 2)``.

    Each row is (f(z) - b) * grad log N(z; mu, sigma^2) with respect to (mu, sigma) (page
    ``latent_variables``, equation ``lat-score``). ``baseline`` b: None (0), a number, or
    ``"leave_one_out"``, the mean of f over the other n - 1 samples, which is independent of
    z_i and so keeps every row unbiased (equation ``lat-control-variate``).
    """
    mu, sigma, n = _gaussian_params(mu, sigma, n)
    eps = randn(n, generator=generator, device=device, dtype=torch.float64)
    with torch.no_grad():
        z = mu + sigma * eps
        fz = f(z)
        if baseline is None:
            b = torch.zeros_like(fz)
        elif baseline == "leave_one_out":
            if n < 2:
                raise ValueError("a leave-one-out baseline needs n >= 2 samples")
            b = (fz.sum() - fz) / (n - 1)
        elif isinstance(baseline, str):
            raise ValueError(f"baseline must be None, a number or 'leave_one_out', got {baseline!r}")
        else:
            b = torch.full_like(fz, _checks.real(baseline, "baseline"))
        score = torch.stack([eps / sigma, (eps.square() - 1) / sigma], 1)   # (n, 2)
        return (fz - b)[:, None] * score


def gaussian_square_variances(mu: float, sigma: float) -> dict[str, float]:
    """Exact single-sample variances of the mu-gradient estimators for f(z) = z^2.

    Derived on the page (proposition ``lat-prop-variances``): pathwise 4 sigma^2; score
    function (mu^4 + 14 mu^2 sigma^2 + 15 sigma^4) / sigma^2; score function with the exact
    mean E f = mu^2 + sigma^2 as baseline, 8 mu^2 + 10 sigma^2. The gradient itself is 2 mu.
    """
    mu = _checks.real(mu, "mu")
    sigma = _checks.real(sigma, "sigma", positive=True)
    return {"pathwise": 4 * sigma**2,
            "score": (mu**4 + 14 * mu**2 * sigma**2 + 15 * sigma**4) / sigma**2,
            "score + baseline": 8 * mu**2 + 10 * sigma**2}


# ====================================================================== discrete choices

def sample_gumbel(*shape: int, generator: torch.Generator | None = None, device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U uniform on (0, 1), drawn on the CPU."""
    u = rand(*shape, generator=generator, device=device, dtype=torch.float64)
    u = u.clamp(1e-300 if dtype == torch.float64 else 1e-30, 1.0 - 1e-16)
    return (-torch.log(-torch.log(u))).to(dtype)


def gumbel_max(logits: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """argmax_k (logits_k + g_k), g i.i.d. Gumbel: an exact draw from softmax(logits).

    ``logits`` has shape ``(..., K)``; the result holds category indices, shape ``(...)``
    (page ``latent_variables``, theorem ``lat-thm-gumbel-max``).
    """
    logits = _logits(logits)
    g = sample_gumbel(*logits.shape, generator=generator, device=logits.device,
                      dtype=logits.dtype)
    return (logits + g).argmax(-1)


def gumbel_softmax(logits: torch.Tensor, temperature: float, *,
                   generator: torch.Generator | None = None, hard: bool = False) -> torch.Tensor:
    """softmax((logits + g) / temperature): a relaxed one-hot sample, differentiable in logits.

    With ``hard=True`` the forward value is the one-hot vector of the argmax (the Gumbel-max
    sample) and the gradient is the relaxed sample's (the straight-through Gumbel estimator).
    Shape ``(..., K)`` like ``logits``.
    """
    logits = _logits(logits)
    temperature = _temperature(temperature)
    g = sample_gumbel(*logits.shape, generator=generator, device=logits.device,
                      dtype=logits.dtype)
    soft = torch.softmax((logits + g) / temperature, -1)
    return straight_through(soft) if hard else soft


def straight_through(soft: torch.Tensor) -> torch.Tensor:
    """One-hot of ``soft``'s argmax in the forward pass, ``soft``'s gradient in the backward.

    Written hard + soft - sg(soft): the value is ``hard`` and the derivative is that of soft.
    """
    _logits(soft, "soft")
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard + soft - soft.detach()


ESTIMATORS = ("reinforce", "gumbel_softmax", "straight_through")


def exact_categorical_gradient(f: Callable[[torch.Tensor], torch.Tensor],
                               logits: torch.Tensor) -> torch.Tensor:
    """The gradient of E_{x ~ softmax(logits)} f(x) over the K one-hot vectors x, by summing.

    ``f`` maps a batch of points of the simplex ``(m, K)`` to ``(m,)``; ``logits`` is ``(K,)``.
    """
    logits = _logits(logits)
    if logits.ndim != 1:
        raise ValueError(f"logits must be one vector (K,), got shape {tuple(logits.shape)}")
    theta = logits.detach().clone().requires_grad_(True)
    eye = torch.eye(len(theta), dtype=theta.dtype, device=theta.device)
    value = (torch.softmax(theta, 0) * f(eye)).sum()
    return torch.autograd.grad(value, theta)[0]


def categorical_gradient(f: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor,
                         n: int, estimator: str, *, temperature: float = 1.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample estimates ``(n, K)`` of the gradient of E_{x ~ softmax(logits)} f(x).

    ``estimator``: ``"reinforce"`` (f(x) grad log p(x); unbiased), ``"gumbel_softmax"`` (the
    gradient of f at the relaxed sample; biased for temperature > 0, and it estimates the
    gradient of the relaxed objective) or ``"straight_through"`` (f evaluated at the one-hot
    sample, differentiated through the relaxed one; biased). ``f`` maps ``(m, K)`` to ``(m,)``.
    """
    logits = _logits(logits)
    if logits.ndim != 1:
        raise ValueError(f"logits must be one vector (K,), got shape {tuple(logits.shape)}")
    n = _checks.integer(n, "n", minimum=1)
    _checks.choice(estimator, "estimator", ESTIMATORS)
    temperature = _temperature(temperature)
    theta = logits.detach().expand(n, -1).clone().requires_grad_(True)          # (n, K)
    if estimator == "reinforce":
        x = gumbel_max(theta.detach(), generator=generator)                   # (n,)
        log_p = torch.log_softmax(theta, -1).gather(1, x[:, None])[:, 0]
        with torch.no_grad():
            fx = f(F.one_hot(x, theta.shape[1]).to(theta.dtype))
        return torch.autograd.grad((fx * log_p).sum(), theta)[0]
    y = gumbel_softmax(theta, temperature, generator=generator,
                       hard=estimator == "straight_through")
    return torch.autograd.grad(f(y).sum(), theta)[0]


NOISES = ("gumbel", "normal")


def argmax_probabilities(scores: torch.Tensor, noise: str = "gumbel", *,
                         points: int = 20001) -> torch.Tensor:
    r"""P(argmax_j (scores_j + eps_j) = i) for i.i.d. noise eps, by quadrature: shape ``(K,)``.

    p_i = \int f(t) \prod_{j != i} F(t + s_i - s_j) dt with f, F the noise's density and
    distribution function (page ``latent_variables``, equation ``lat-argmax-prob``). Gumbel
    noise gives softmax(scores); standard normal noise gives a different distribution with the
    same ordering of the p_i as of the scores.
    """
    scores = _logits(scores, "scores").to(torch.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one vector (K,), got shape {tuple(scores.shape)}")
    _checks.choice(noise, "noise", NOISES)
    points = _checks.integer(points, "points", minimum=101)
    spread = float(scores.max() - scores.min())
    if noise == "gumbel":
        t = torch.linspace(-6.0, 45.0 + spread, points, dtype=torch.float64,
                           device=scores.device)
        log_cdf = lambda u: -torch.exp(-u)                                  # noqa: E731
        log_pdf = -t - torch.exp(-t)
    else:
        t = torch.linspace(-10.0 - spread, 10.0 + spread, points, dtype=torch.float64,
                           device=scores.device)
        log_cdf = lambda u: torch.special.log_ndtr(u)                       # noqa: E731
        log_pdf = -0.5 * t.square() - 0.5 * math.log(2 * math.pi)
    diff = scores[:, None] - scores[None, :]                                  # (K, K): s_i - s_j
    logs = log_cdf(t[None, None, :] + diff[:, :, None])                       # (K, K, T)
    logs = logs.sum(1) - logs.diagonal(dim1=0, dim2=1).T                      # drop j = i
    return torch.trapezoid((log_pdf[None, :] + logs).exp(), t, dim=-1)


def cohens_w(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Cohen's effect size w = sqrt(sum_k (f_k - p_k)^2 / p_k) of observed frequencies f.

    A size, not a test: with N draws from p, w^2 is about (K - 1) / N, so w shrinks like
    1/sqrt(N) for a right sampler and tends to a positive constant for a wrong one.
    """
    _checks.tensor(counts, "counts", ndim=1)
    _checks.tensor(probs, "probs", ndim=1)
    if counts.shape != probs.shape:
        raise ValueError(f"counts and probs must have the same shape, got {tuple(counts.shape)} "
                         f"and {tuple(probs.shape)}")
    if bool((probs <= 0).any()):
        raise ValueError("probs must all be > 0")
    total = float(counts.sum())
    if total <= 0:
        raise ValueError("counts must contain at least one draw")
    freq = counts.double() / total
    p = probs.double().to(freq.device)
    return float(((freq - p).square() / p).sum().sqrt())


def smooth_max(x: torch.Tensor, temperature: float, dim: int = -1) -> torch.Tensor:
    """temperature * logsumexp(x / temperature): a smooth maximum, above max(x) by at most
    temperature * log K (page ``latent_variables``, equation ``lat-smooth-max``)."""
    _checks.tensor(x, "x", floating=True)
    temperature = _temperature(temperature)
    return temperature * torch.logsumexp(x / temperature, dim)


def logsumexp_bounds(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds max(x) <= logsumexp(x) <= max(x) + log K along ``dim``."""
    _checks.tensor(x, "x", floating=True)
    top = x.max(dim).values
    return top, top + math.log(x.shape[dim])


# ====================================================================== vector quantisation

def perplexity(codes: torch.Tensor, n_codes: int) -> float:
    """exp of the entropy of the codes' empirical distribution: from 1 (one code used) to
    ``n_codes`` (all used equally often)."""
    _checks.tensor(codes, "codes")
    n_codes = _checks.integer(n_codes, "n_codes", minimum=1)
    if codes.numel() == 0:
        raise ValueError("codes is empty")
    counts = torch.bincount(codes.reshape(-1).long(), minlength=n_codes).double()
    p = counts / counts.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


class VectorQuantizer(nn.Module):
    r"""Nearest-neighbour quantiser of vectors to a codebook of ``n_codes`` entries.

    ``forward(z_e)`` maps ``(..., dim)`` encoder outputs to ``(z, codes, loss)``: ``z`` equals
    the nearest codebook vectors in value but passes gradients straight through to ``z_e``
    (z_e + sg(z_q - z_e)); ``loss`` is the commitment loss beta ||z_e - sg(z_q)||^2, plus the
    codebook loss ||sg(z_e) - z_q||^2 when the codebook is learned by gradient (page
    ``latent_variables``, equation ``lat-vq-loss``).

    With ``ema=True`` the codebook is not a parameter: in training mode each forward pass
    moves every code to an exponential moving average of the vectors assigned to it, the
    online form of k-means' mean step (equation ``lat-ema``). With ``dead_threshold > 0``, a
    code whose moving-average count falls below it is restarted at a random encoder output
    of the batch (dead-code repair).

    Args:
        n_codes: K, the codebook size (at least 1).
        dim: length of each code vector.
        beta: weight of the commitment loss.
        ema: learn the codebook by moving averages (True) or by its gradient (False).
        decay: gamma, the moving averages' decay.
        dead_threshold: the count below which a code is restarted (0 turns repair off).
        generator: draws for initialisation and restarts (made on the CPU).
    """

    def __init__(self, n_codes: int, dim: int, *, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.95, dead_threshold: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(n_codes, int) and not isinstance(n_codes, bool) and n_codes < 1:
            raise ValueError(f"the codebook must have at least one code, got n_codes={n_codes}")
        self.n_codes = _checks.integer(n_codes, "n_codes", minimum=1)
        self.dim = _checks.integer(dim, "dim", minimum=1)
        self.beta = _checks.real(beta, "beta", nonnegative=True)
        self.ema = bool(ema)
        self.decay = _checks.real(decay, "decay", nonnegative=True)
        if self.decay >= 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        self.dead_threshold = _checks.real(dead_threshold, "dead_threshold", nonnegative=True)
        self.generator = generator
        init = torch.randn(self.n_codes, self.dim, generator=generator)
        if self.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("counts", torch.ones(self.n_codes))
            self.register_buffer("sums", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.restarts = 0

    def _check(self, z_e: torch.Tensor) -> torch.Tensor:
        _checks.tensor(z_e, "z_e", floating=True)
        if z_e.ndim == 0 or z_e.shape[-1] != self.dim:
            raise ValueError(f"z_e must have last dimension {self.dim} (the code length), "
                             f"got shape {tuple(z_e.shape)}")
        return z_e

    @torch.no_grad()
    def init_from(self, z: torch.Tensor) -> None:
        """Set the codebook to ``n_codes`` distinct random rows of ``z`` (rows repeat only when
        there are fewer rows than codes)."""
        flat = self._check(z).reshape(-1, self.dim)
        if len(flat) == 0:
            raise ValueError("z has no rows to initialise the codebook from")
        order = torch.randperm(len(flat), generator=self.generator)
        idx = order.repeat(math.ceil(self.n_codes / len(flat)))[:self.n_codes]
        self.codebook.data.copy_(flat[idx.to(flat.device)])
        if self.ema:
            self.counts.fill_(1.0)
            self.sums.copy_(self.codebook)

    def quantize(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every vector: shape ``z_e.shape[:-1]``."""
        flat = self._check(z_e).reshape(-1, self.dim)
        book = self.codebook.to(flat.dtype)
        d2 = (flat.square().sum(1, keepdim=True) - 2 * flat @ book.T
              + book.square().sum(1)[None, :])                               # (m, K)
        return d2.argmin(1).reshape(z_e.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors for indices ``codes``: shape ``(*codes.shape, dim)``."""
        _checks.tensor(codes, "codes")
        if codes.is_floating_point():
            raise TypeError(f"codes must be integer indices, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_codes):
            raise ValueError(f"codes must lie in 0..{self.n_codes - 1}")
        return self.codebook[codes]

    def forward(self, z_e: torch.Tensor):
        codes = self.quantize(z_e)                                           # (...)
        z_q = self.lookup(codes).to(z_e.dtype)                               # (..., dim)
        commitment = (z_e - z_q.detach()).square().sum(-1).mean()
        if self.ema:
            loss = self.beta * commitment
            if self.training:
                self._ema_update(z_e.detach(), codes)
        else:
            loss = (z_e.detach() - z_q).square().sum(-1).mean() + self.beta * commitment
        z = z_e + (z_q - z_e).detach()                                       # straight through
        return z, codes, loss

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z_e.reshape(-1, self.dim).to(self.sums.dtype)
        onehot = F.one_hot(codes.reshape(-1), self.n_codes).to(flat.dtype)    # (m, K)
        g = self.decay
        self.counts.mul_(g).add_((1 - g) * onehot.sum(0))
        self.sums.mul_(g).add_((1 - g) * onehot.T @ flat)
        self.codebook.copy_(self.sums / self.counts.clamp(min=1e-8)[:, None])
        if self.dead_threshold > 0:
            dead = (self.counts < self.dead_threshold).nonzero()[:, 0]
            if len(dead):
                pick = torch.randint(len(flat), (len(dead),), generator=self.generator)
                self.codebook[dead] = flat[pick.to(flat.device)]
                self.sums[dead] = self.codebook[dead]
                self.counts[dead] = 1.0
                self.restarts += len(dead)


# ====================================================================== the coding exercise

def check_gumbel_max(fn: Callable[..., torch.Tensor]) -> Verdict:
    """Checker for the reader's Gumbel-max sampler ``fn(logits, generator)``.

    ``logits`` is ``(m, K)``; ``fn`` must return ``(m,)`` integer indices, each an exact draw
    from softmax of its row. Cases: the shape and dtype; a row with one overwhelming logit;
    and the frequencies of 200,000 draws from a row of four logits, whose Cohen's w must be
    below 0.012 (a right sampler gives about 0.004; taking the argmax without noise, or adding
    Gaussian instead of Gumbel noise, gives more than 0.04).
    """
    gen = torch.Generator().manual_seed(11)
    small = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    sure = torch.tensor([[0.0, 60.0, 0.0, 0.0]], dtype=torch.float64).expand(50, -1)
    row = torch.tensor([1.5, 0.5, 0.0, -1.0], dtype=torch.float64)
    many = row.expand(200_000, -1)
    probs = torch.softmax(row, 0)

    def right_frequencies(idx):
        counts = torch.bincount(idx.reshape(-1).cpu().long(), minlength=4)[:4]
        return cohens_w(counts, probs) < 0.012

    cases = [
        Case("two rows of logits", (small, gen),
             lambda k: isinstance(k, torch.Tensor) and tuple(k.shape) == (2,)
             and not k.is_floating_point(),
             "return one integer index per row: the argmax over the last axis."),
        Case("a row whose second logit is 60 above the rest", (sure, gen),
             lambda k: bool((k == 1).all()),
             "the noise is added to the logits, and the argmax picks the category."),
        Case("200,000 draws from logits (1.5, 0.5, 0, -1)", (many, gen), right_frequencies,
             "without noise the argmax always picks the largest logit; the noise must be "
             "standard Gumbel, -log(-log U) with U uniform on (0, 1)."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "your sampler"))


class VQVAE(nn.Module):
    """An autoencoder whose latent is ``slots`` discrete codes from one shared codebook.

    The encoder maps x ``(n, data_dim)`` to ``slots`` vectors of length ``code_dim``; a
    :class:`VectorQuantizer` replaces each by its nearest code; the decoder maps the codes'
    vectors back. An image is stored as ``slots`` integers in 0..n_codes-1, that is
    ``slots * log2(n_codes)`` bits. ``loss(x)`` is the squared reconstruction error plus the
    quantiser's loss (page ``latent_variables``, equation ``lat-vq-loss``).
    """

    def __init__(self, data_dim: int = 64, slots: int = 4, code_dim: int = 4,
                 n_codes: int = 16, hidden: int = 128, **quantizer_kwargs):
        super().__init__()
        self.data_dim = _checks.integer(data_dim, "data_dim", minimum=1)
        self.slots = _checks.integer(slots, "slots", minimum=1)
        self.code_dim = _checks.integer(code_dim, "code_dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        self.encoder = mlp(self.data_dim, hidden, hidden, self.slots * self.code_dim)
        self.decoder = mlp(self.slots * self.code_dim, hidden, hidden, self.data_dim)
        self.quantizer = VectorQuantizer(n_codes, self.code_dim, **quantizer_kwargs)

    @property
    def bits(self) -> float:
        """Bits per image: slots * log2(n_codes)."""
        return self.slots * math.log2(self.quantizer.n_codes)

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output before quantisation: ``(n, slots, code_dim)``."""
        _checks.tensor(x, "x", ndim=2, last_dim=self.data_dim, floating=True)
        return self.encoder(x).reshape(len(x), self.slots, self.code_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of each image: ``(n, slots)`` integers."""
        return self.quantizer.quantize(self.encode_continuous(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images from codes ``(n, slots)``: ``(n, data_dim)``."""
        _checks.tensor(codes, "codes", ndim=2, last_dim=self.slots)
        z_q = self.quantizer.lookup(codes)
        return self.decoder(z_q.reshape(len(codes), -1).to(self.decoder[0].weight.dtype))

    def forward(self, x: torch.Tensor):
        """Reconstruction, codes and the quantiser's loss."""
        z, codes, vq_loss = self.quantizer(self.encode_continuous(x))
        return self.decoder(z.reshape(len(x), -1)), codes, vq_loss

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        recon, _, vq_loss = self(x)
        return (recon - x).square().sum(-1).mean() + vq_loss


def scalar_quantizer(values: torch.Tensor, levels: int, *, iterations: int = 30) -> torch.Tensor:
    """Centres of a ``levels``-level quantiser of 1-D ``values`` by Lloyd's iterations
    (k-means in one dimension, started at equal-mass quantiles): sorted, shape ``(levels,)``.

    With ``levels = 2**b`` it stores each value in b bits; used to give PCA coefficients the
    same bit budget as a vector quantiser's codes.
    """
    _checks.tensor(values, "values", ndim=1, floating=True, min_rows=1)
    levels = _checks.integer(levels, "levels", minimum=1)
    iterations = _checks.integer(iterations, "iterations", minimum=0)
    probs = (torch.arange(levels, dtype=values.dtype, device=values.device) + 0.5) / levels
    centres = torch.quantile(values, probs)
    for _ in range(iterations):
        idx = quantize_scalar(values, centres)
        sums = torch.zeros_like(centres).index_add_(0, idx, values)
        counts = torch.zeros_like(centres).index_add_(0, idx, torch.ones_like(values))
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres).sort().values
    return centres


def quantize_scalar(values: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``centres`` for each of ``values``."""
    _checks.tensor(centres, "centres", ndim=1, min_rows=1)
    mids = (centres[1:] + centres[:-1]) / 2
    return torch.bucketize(values.contiguous(), mids)

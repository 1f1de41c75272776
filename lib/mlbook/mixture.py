r"""Finite mixtures fitted by expectation-maximisation (EM), written once for any component family.

A mixture with weights :math:`\pi_k` and components :math:`p(x \mid \theta_k)` has the
log-likelihood :math:`\log p(x) = \operatorname{logsumexp}_k [\log \pi_k + \log p(x \mid \theta_k)]`
(page ``autoregressive``, equation ``ar-mixture``). EM alternates two steps that never lower it:

- the E step computes the responsibilities
  :math:`r_{ik} = \pi_k p(x_i \mid \theta_k) / \sum_j \pi_j p(x_i \mid \theta_j)` by
  log-sum-exp, so no density underflows even in 64 dimensions;
- the M step maximises the lower bound
  :math:`\sum_i \sum_k r_{ik} [\log \pi_k + \log p(x_i \mid \theta_k) - \log r_{ik}]`
  over the weights (:math:`\pi_k = \frac1n \sum_i r_{ik}`) and over each component's
  parameters (a weighted maximum-likelihood fit that the family supplies).

The loop (:func:`em`) knows nothing about the components: a family is an object with the four
methods of :class:`ComponentFamily` (``init``, ``log_prob``, ``m_step``, ``sample``). This module
has the Bernoulli family for binary vectors; a Gaussian family for the clustering chapter is one
more subclass, with no change to the loop. :class:`BernoulliMixture` wraps the loop as a
scikit-learn estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from sklearn.base import BaseEstimator

from . import _checks
from .device import get_device

__all__ = ["ComponentFamily", "BernoulliFamily", "GaussianFamily", "EMResult", "e_step", "lower_bound",
           "em", "mixture_log_prob", "BernoulliMixture", "GaussianMixture", "shared_variance_step"]


class ComponentFamily:
    """The interface :func:`em` needs from a family of component distributions.

    ``params`` is whatever the family chooses (a tensor or a tuple of tensors) holding all
    ``K`` components' parameters.
    """

    def init(self, X: torch.Tensor, n_components: int, generator: torch.Generator):
        """Starting parameters for ``n_components`` components, drawn with ``generator``."""
        raise NotImplementedError

    def log_prob(self, X: torch.Tensor, params) -> torch.Tensor:
        """``(n, K)`` matrix of :math:`\\log p(x_i \\mid \\theta_k)`."""
        raise NotImplementedError

    def m_step(self, X: torch.Tensor, resp: torch.Tensor, params):
        """Parameters maximising :math:`\\sum_i r_{ik} \\log p(x_i \\mid \\theta_k)` for each k."""
        raise NotImplementedError

    def sample(self, params, components: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw from component ``components[i]`` for every i, shape ``(len(components), d)``."""
        raise NotImplementedError

    def n_parameters(self, params) -> int:
        """Number of free parameters of all components (for information criteria)."""
        raise NotImplementedError


@dataclass
class BernoulliFamily(ComponentFamily):
    r"""Components :math:`p(x \mid \mu_k) = \prod_j \mu_{kj}^{x_j} (1 - \mu_{kj})^{1 - x_j}` on {0, 1}^d.

    The M step is the weighted frequency :math:`\mu_{kj} = \sum_i r_{ik} x_{ij} / \sum_i r_{ik}`,
    clipped to ``[min_prob, 1 - min_prob]``. The weighted log-likelihood is concave in each
    :math:`\mu_{kj}`, so the clipped value is the exact maximiser over that interval: the step is
    still an M step (EM stays monotone), and a pixel never seen on in training does not get
    probability zero (which would give an infinite test loss).
    """

    min_prob: float = 1e-3

    def __post_init__(self):
        self.min_prob = _checks.real(self.min_prob, "min_prob", positive=True)
        if self.min_prob >= 0.5:
            raise ValueError(f"min_prob must be < 0.5, got {self.min_prob}")

    def init(self, X, n_components, generator):
        # each component starts at the data mean, jittered: distinct but sensible
        mean = X.mean(0)
        noise = torch.rand(n_components, X.shape[1], generator=generator, dtype=X.dtype)
        mu = 0.5 * mean + 0.5 * noise.to(X.device)
        return mu.clamp(self.min_prob, 1 - self.min_prob)

    def log_prob(self, X, params):
        mu = params                                            # (K, d)
        # sum_j x_j log mu_kj + (1 - x_j) log(1 - mu_kj), as one matrix product each
        return X @ torch.log(mu).T + (1 - X) @ torch.log1p(-mu).T   # (n, K)

    def m_step(self, X, resp, params):
        counts = resp.sum(0)                                   # (K,)
        mu = (resp.T @ X) / counts.clamp_min(1e-12)[:, None]   # (K, d)
        # a component with no responsibility keeps its old parameters
        mu = torch.where(counts[:, None] > 1e-12, mu, params)
        return mu.clamp(self.min_prob, 1 - self.min_prob)

    def sample(self, params, components, generator):
        u = torch.rand(len(components), params.shape[1], generator=generator, dtype=params.dtype)
        return (u.to(params.device) < params[components]).to(params.dtype)

    def n_parameters(self, params) -> int:
        return int(params.numel())


@dataclass
class GaussianFamily(ComponentFamily):
    r"""Gaussian components :math:`\mathcal N(x \mid \mu_k, \Sigma_k)` with full covariances.

    ``params`` is ``(means (K, d), covariances (K, d, d))``. The M step is the weighted mean and
    covariance of page ``mixtures`` (equation ``mix-m-step``) plus ``reg_covar`` on the diagonal,
    scikit-learn's ridge, which keeps every covariance invertible when a component shrinks onto
    a few points. With ``reg_covar > 0`` the step maximises the weighted log-likelihood minus
    ``reg_covar/2 tr(Sigma_k^{-1})`` per point, so EM is monotone in that penalised likelihood;
    with ``reg_covar = 0`` it is the exact M step.
    """

    reg_covar: float = 1e-6

    def __post_init__(self):
        self.reg_covar = _checks.real(self.reg_covar, "reg_covar", nonnegative=True)

    def init(self, X, n_components, generator):
        # K distinct rows of X as means, every covariance the data's
        rows = torch.randperm(X.shape[0], generator=generator)[:n_components].to(X.device)
        cov = torch.cov(X.T, correction=0).reshape(X.shape[1], X.shape[1])
        eye = torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
        return X[rows].clone(), (cov + self.reg_covar * eye).expand(n_components, -1, -1).clone()

    def log_prob(self, X, params):
        means, covs = params                                   # (K, d), (K, d, d)
        chol, info = torch.linalg.cholesky_ex(covs)            # (K, d, d)
        if bool((info != 0).any()):
            raise ValueError("a covariance is not positive definite: raise reg_covar")
        diff = (X[None, :, :] - means[:, None, :]).transpose(1, 2)           # (K, d, n)
        z = torch.linalg.solve_triangular(chol, diff, upper=False)            # (K, d, n)
        half_logdet = torch.diagonal(chol, dim1=1, dim2=2).log().sum(1)      # (K,)
        d = X.shape[1]
        return (-0.5 * z.square().sum(1) - half_logdet[:, None]
                - 0.5 * d * math.log(2 * math.pi)).T                          # (n, K)

    def m_step(self, X, resp, params):
        old_means, old_covs = params
        counts = resp.sum(0)                                   # (K,)
        means = (resp.T @ X) / counts.clamp_min(1e-12)[:, None]               # (K, d)
        diff = X[None, :, :] - means[:, None, :]                              # (K, n, d)
        covs = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / counts.clamp_min(1e-12)[:, None, None]
        covs = covs + self.reg_covar * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
        alive = counts > 1e-12                                 # an empty component keeps its parameters
        means = torch.where(alive[:, None], means, old_means)
        covs = torch.where(alive[:, None, None], covs, old_covs)
        return means, covs

    def sample(self, params, components, generator):
        means, covs = params
        eps = torch.randn(len(components), means.shape[1], generator=generator, dtype=means.dtype)
        chol = torch.linalg.cholesky(covs)[components]        # (m, d, d)
        return means[components] + (chol @ eps.to(means.device)[:, :, None])[:, :, 0]

    def n_parameters(self, params) -> int:
        K, d = params[0].shape
        return int(K * d + K * d * (d + 1) // 2)


def shared_variance_step(X: torch.Tensor, means: torch.Tensor, variance: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One EM step for equal weights and a fixed shared covariance ``variance * I`` (page ``mixtures``).

    Returns the responsibilities ``(n, K)``, a softmax of ``-||x_i - mu_k||^2 / (2 variance)``
    over k, and the new means ``(K, d)``. As ``variance -> 0`` the responsibilities become the
    nearest-mean indicators and the step becomes one iteration of Lloyd's k-means (equation
    ``mix-kmeans-limit``).
    """
    X = _checks.tensor(X, "X", ndim=2, floating=True)
    means = _checks.tensor(means, "means", ndim=2, last_dim=X.shape[1], floating=True)
    variance = _checks.real(variance, "variance", positive=True)
    sq = (X * X).sum(1)[:, None] + (means * means).sum(1)[None, :] - 2 * X @ means.T   # (n, K)
    resp = torch.softmax(-sq.clamp_min(0) / (2 * variance), dim=1)
    counts = resp.sum(0)
    new = torch.where(counts[:, None] > 0, (resp.T @ X) / counts.clamp_min(1e-300)[:, None], means)
    return resp, new


def mixture_log_prob(family: ComponentFamily, X: torch.Tensor, log_weights: torch.Tensor,
                     params) -> torch.Tensor:
    r"""Per-row :math:`\log p(x_i) = \operatorname{logsumexp}_k [\log\pi_k + \log p(x_i\mid\theta_k)]`."""
    return torch.logsumexp(log_weights + family.log_prob(X, params), dim=1)


def e_step(family: ComponentFamily, X: torch.Tensor, log_weights: torch.Tensor,
           params) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities ``(n, K)`` and the per-row log-likelihood ``(n,)``, both by log-sum-exp."""
    joint = log_weights + family.log_prob(X, params)          # log pi_k + log p(x_i | theta_k)
    log_px = torch.logsumexp(joint, dim=1)                    # (n,)
    return torch.exp(joint - log_px[:, None]), log_px


def lower_bound(family: ComponentFamily, X: torch.Tensor, resp: torch.Tensor,
                log_weights: torch.Tensor, params) -> torch.Tensor:
    r"""Mean over rows of :math:`\sum_k r_{ik} [\log\pi_k + \log p(x_i\mid\theta_k) - \log r_{ik}]`.

    It is at most the mean log-likelihood for any responsibilities, with equality at the
    E step's responsibilities (their gap is the KL divergence from r to the posterior).
    """
    joint = log_weights + family.log_prob(X, params)
    entropy_terms = torch.where(resp > 0, resp * torch.log(resp.clamp_min(1e-300)),
                                torch.zeros_like(resp))
    return ((resp * joint).sum(1) - entropy_terms.sum(1)).mean()


@dataclass
class EMResult:
    """Fitted ``log_weights`` (K,), ``params``, the mean log-likelihood per iteration, convergence."""

    log_weights: torch.Tensor
    params: object
    history: list[float] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0


def em(family: ComponentFamily, X: torch.Tensor, n_components: int, *, max_iter: int = 100,
       tol: float = 1e-6, generator: torch.Generator | None = None,
       init: tuple[torch.Tensor, object] | None = None) -> EMResult:
    """Run EM from the family's initialisation until the mean log-likelihood gains less than ``tol``.

    ``init=(log_weights, params)`` starts from given parameters instead (to compare with another
    implementation from the same start). ``history[t]`` is the mean log-likelihood of the
    parameters before the (t+1)-th M step; it never decreases (up to rounding), which the unit
    tests check.
    """
    n_components = _checks.integer(n_components, "n_components", minimum=1)
    max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
    tol = _checks.real(tol, "tol", nonnegative=True)
    if n_components > X.shape[0]:
        raise ValueError(f"n_components={n_components} exceeds the number of rows {X.shape[0]}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if init is None:
        params = family.init(X, n_components, generator)
        log_weights = torch.full((n_components,), -math.log(n_components), dtype=X.dtype,
                                 device=X.device)
    else:
        log_weights, params = init
        log_weights = _checks.tensor(log_weights, "log_weights", ndim=1, floating=True)
        if len(log_weights) != n_components:
            raise ValueError(f"init has {len(log_weights)} weights for n_components={n_components}")
    history: list[float] = []
    converged = False
    for it in range(max_iter):
        resp, log_px = e_step(family, X, log_weights, params)
        history.append(float(log_px.mean()))
        if it > 0 and history[-1] - history[-2] < tol:
            converged = True
            break
        counts = resp.sum(0)
        log_weights = torch.log(counts.clamp_min(1e-300)) - math.log(X.shape[0])
        params = family.m_step(X, resp, params)
    else:
        history.append(float(mixture_log_prob(family, X, log_weights, params).mean()))
    return EMResult(log_weights, params, history, converged, len(history) - 1)


class BernoulliMixture(BaseEstimator):
    """Mixture of independent-Bernoulli components on {0, 1}^d, fitted by :func:`em`.

    Follows scikit-learn: hyper-parameters in ``__init__``, fitted attributes with a trailing
    underscore (``weights_`` (K,), ``means_`` (K, d) Bernoulli means, ``lower_bound_``,
    ``n_iter_``, ``converged_``, ``history_``). ``score(X)`` is the mean log-likelihood in nats,
    as for scikit-learn's ``GaussianMixture``; ``score_samples`` gives it per row. With
    ``n_components=1`` this is the independent-Bernoulli model.

    Args:
        n_components: number of components K.
        max_iter: most EM iterations.
        tol: stop when the mean log-likelihood gains less than this.
        min_prob: Bernoulli means are kept in ``[min_prob, 1 - min_prob]``.
        random_state: seed of the initialisation.
        device: where to compute (``None``: ``mlbook.get_device()``).
    """

    def __init__(self, n_components: int = 1, *, max_iter: int = 100, tol: float = 1e-6,
                 min_prob: float = 1e-3, random_state: int | None = None, device=None):
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.min_prob = min_prob
        self.random_state = random_state
        self.device = device

    def _binary(self, X, *, fitting: bool = False) -> torch.Tensor:
        n_features = None if fitting else self.n_features_in_
        X = _checks.features(X, "X", n_features=n_features, device=get_device(self.device))
        if not bool(((X == 0) | (X == 1)).all()):
            raise ValueError("X must contain only 0 and 1 (binarise it first)")
        return X

    def fit(self, X, y=None) -> "BernoulliMixture":
        X = self._binary(X, fitting=True)
        seed = 0 if self.random_state is None else _checks.integer(self.random_state,
                                                                   "random_state", minimum=0)
        self.family_ = BernoulliFamily(self.min_prob)
        result = em(self.family_, X, self.n_components, max_iter=self.max_iter, tol=self.tol,
                    generator=torch.Generator().manual_seed(seed))
        self.n_features_in_ = X.shape[1]
        self.log_weights_ = result.log_weights
        self.weights_ = result.log_weights.exp()
        self.means_ = result.params
        self.history_ = result.history
        self.lower_bound_ = result.history[-1]
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        return self

    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise RuntimeError("this BernoulliMixture is not fitted yet; call fit(X) first")

    def score_samples(self, X) -> torch.Tensor:
        """Log-likelihood of every row in nats, ``(n,)``."""
        self._check_fitted()
        return mixture_log_prob(self.family_, self._binary(X), self.log_weights_, self.means_)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per row, in nats."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> torch.Tensor:
        """Responsibilities (posterior over components), ``(n, K)``."""
        self._check_fitted()
        return e_step(self.family_, self._binary(X), self.log_weights_, self.means_)[0]

    def sample(self, n_samples: int = 1, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(X, components)``: a component from the weights, then its pixels independently."""
        self._check_fitted()
        n_samples = _checks.integer(n_samples, "n_samples", minimum=1)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        comps = torch.multinomial(self.weights_.cpu(), n_samples, replacement=True,
                                  generator=generator).to(self.means_.device)
        return self.family_.sample(self.means_, comps, generator), comps


class GaussianMixture(BaseEstimator):
    """Mixture of full-covariance Gaussians fitted by :func:`em` with :class:`GaussianFamily`.

    The parameters follow scikit-learn's ``GaussianMixture`` where they overlap: ``n_components``,
    ``tol`` (on the gain of the mean log-likelihood), ``reg_covar``, ``max_iter``,
    ``random_state``, and ``weights_init`` / ``means_init`` / ``covariances_init`` to start from
    given parameters (all three together). Fitted attributes: ``weights_``, ``means_``,
    ``covariances_``, ``history_`` (mean log-likelihood per iteration), ``lower_bound_``,
    ``n_iter_``, ``converged_``. ``score`` is the mean log-likelihood in nats.
    """

    def __init__(self, n_components: int = 1, *, tol: float = 1e-6, reg_covar: float = 1e-6,
                 max_iter: int = 100, random_state: int | None = None, weights_init=None,
                 means_init=None, covariances_init=None, device=None):
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.random_state = random_state
        self.weights_init = weights_init
        self.means_init = means_init
        self.covariances_init = covariances_init
        self.device = device

    def _start(self, X):
        given = [self.weights_init is not None, self.means_init is not None,
                 self.covariances_init is not None]
        if not any(given):
            return None
        if not all(given):
            raise ValueError("give weights_init, means_init and covariances_init together, or none")
        K, d = _checks.integer(self.n_components, "n_components", minimum=1), X.shape[1]
        w = torch.as_tensor(self.weights_init, dtype=X.dtype, device=X.device)
        mu = torch.as_tensor(self.means_init, dtype=X.dtype, device=X.device)
        cov = torch.as_tensor(self.covariances_init, dtype=X.dtype, device=X.device)
        if w.shape != (K,) or mu.shape != (K, d) or cov.shape != (K, d, d):
            raise ValueError(f"the initial parameters must have shapes ({K},), ({K}, {d}) and "
                             f"({K}, {d}, {d}); got {tuple(w.shape)}, {tuple(mu.shape)}, {tuple(cov.shape)}")
        if not bool((w > 0).all()) or abs(float(w.sum()) - 1) > 1e-8:
            raise ValueError("weights_init must be positive and sum to 1")
        return w.log(), (mu.clone(), cov.clone())

    def fit(self, X, y=None) -> "GaussianMixture":
        X = _checks.features(X, "X", device=get_device(self.device))
        seed = 0 if self.random_state is None else _checks.integer(self.random_state,
                                                                   "random_state", minimum=0)
        self.family_ = GaussianFamily(self.reg_covar)
        result = em(self.family_, X, self.n_components, max_iter=self.max_iter, tol=self.tol,
                    generator=torch.Generator().manual_seed(seed), init=self._start(X))
        self.n_features_in_ = X.shape[1]
        self.log_weights_ = result.log_weights
        self.weights_ = result.log_weights.exp()
        self.means_, self.covariances_ = result.params
        self.history_ = result.history
        self.lower_bound_ = result.history[-1]
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        return self

    def _X(self, X) -> torch.Tensor:
        if not hasattr(self, "means_"):
            raise RuntimeError("this GaussianMixture is not fitted yet; call fit(X) first")
        return _checks.features(X, "X", n_features=self.n_features_in_, device=self.means_.device)

    def score_samples(self, X) -> torch.Tensor:
        """Log-likelihood of every row in nats, ``(n,)``."""
        X = self._X(X)
        return mixture_log_prob(self.family_, X, self.log_weights_, (self.means_, self.covariances_))

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per row, in nats."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> torch.Tensor:
        """Responsibilities (posterior over components), ``(n, K)``."""
        X = self._X(X)
        return e_step(self.family_, X, self.log_weights_, (self.means_, self.covariances_))[0]

    def predict(self, X) -> torch.Tensor:
        """The most responsible component of every row."""
        return self.predict_proba(X).argmax(1)

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

__all__ = ["ComponentFamily", "BernoulliFamily", "EMResult", "e_step", "lower_bound", "em",
           "mixture_log_prob", "BernoulliMixture"]


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
       tol: float = 1e-6, generator: torch.Generator | None = None) -> EMResult:
    """Run EM from the family's initialisation until the mean log-likelihood gains less than ``tol``.

    ``history[t]`` is the mean log-likelihood of the parameters before the (t+1)-th M step;
    it never decreases (up to rounding), which the unit tests check.
    """
    n_components = _checks.integer(n_components, "n_components", minimum=1)
    max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
    tol = _checks.real(tol, "tol", nonnegative=True)
    if n_components > X.shape[0]:
        raise ValueError(f"n_components={n_components} exceeds the number of rows {X.shape[0]}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    params = family.init(X, n_components, generator)
    log_weights = torch.full((n_components,), -math.log(n_components), dtype=X.dtype,
                             device=X.device)
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

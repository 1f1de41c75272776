r"""Preference alignment on bandits: RLHF, DPO and GRPO (chapter "Preference alignment").

A *bandit* here is a discrete set of K responses with log-probabilities ``logp`` of shape
``(..., K)`` under a policy, a reference policy ``ref_logp`` of the same shape, and a reward per
response. Leading dimensions are batches (contexts, or independent runs). Policies are
:class:`TabularPolicy` (one free logit per response) or :class:`MLPPolicy` (logits from a context).
Equation labels refer to ``book/alignment.md``; the k3 penalty is :func:`mlbook.kl.k3`.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, nets
from .device import inverse_cdf, rand
from .kl import k3

__all__ = ["TabularPolicy", "MLPPolicy", "RewardModel",
           "optimal_log_policy", "optimal_value", "expected_reward", "kl_divergence", "objective",
           "total_variation", "sample_responses", "sample_preferences", "preference_weights",
           "preference_counts", "bradley_terry_loss", "pairwise_loss", "implicit_reward", "dpo_loss",
           "pairwise_dpo_loss", "fit_feature_reward", "strict_preferences", "ipo_loss", "pairwise_ipo_loss",
           "ipo_optimal_log_policy", "kl_regularised_advantages", "policy_gradient_loss", "group_advantages",
           "grpo_loss", "expected_group_advantage", "population_grpo_loss", "grpo_fixed_point_residual",
           "grpo_fixed_point",
           "fit", "train_policy_gradient", "train_grpo",
           "SequencePolicy", "counting_reward", "gae", "train_sequence_rl"]


# ------------------------------------------------------------------------------- argument checks

def _beta(beta) -> float:
    return _checks.real(beta, "beta", positive=True)


def _logp(logp, name: str) -> torch.Tensor:
    return _checks.tensor(logp, name, floating=True, ndim=range(1, 8))


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"shapes must match, got {listed}")


def _responses(y, name: str, k: int) -> torch.Tensor:
    _checks.tensor(y, name)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer response indices, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"{name} must hold response indices in 0..{k - 1}")
    return y


# ------------------------------------------------------------------------------------- policies

class TabularPolicy(nn.Module):
    """A policy with one free logit per response: ``forward()`` returns log-probabilities ``(..., K)``.

    ``logits`` (``(..., K)``) is the starting point, usually the reference policy's, so that
    training starts at pi = pi_ref; leading dimensions hold independent policies (contexts, runs).
    """

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        _checks.tensor(logits, "logits", floating=True, ndim=range(1, 8))
        if logits.shape[-1] < 2:
            raise ValueError(f"a policy needs at least 2 responses, got shape {tuple(logits.shape)}")
        self.logits = nn.Parameter(logits.detach().clone())

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(self.logits, dim=-1)                      # (..., K)


class MLPPolicy(nn.Module):
    """A policy over K responses given a context x in R^d: log-probabilities ``(n, K)`` from an MLP."""

    def __init__(self, context_dim: int, n_responses: int, hidden: int = 64):
        super().__init__()
        self.context_dim = _checks.integer(context_dim, "context_dim", minimum=1)
        n_responses = _checks.integer(n_responses, "n_responses", minimum=2)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        self.net = nets.mlp(self.context_dim, hidden, hidden, n_responses, activation=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.tensor(x, "x", ndim=2, last_dim=self.context_dim, floating=True)
        return torch.log_softmax(self.net(x), dim=-1)                      # (n, K)


class RewardModel(nn.Module):
    """A Bradley-Terry reward model, eq. (align-bt): one score per response, tabular or from a context.

    ``RewardModel(K)`` holds a free score per response (``forward()`` -> ``(K,)``);
    ``RewardModel(K, context_dim=d)`` scores every response of a context (``forward(x)`` -> ``(n, K)``).
    Scores are identified only up to an additive constant per context.
    """

    def __init__(self, n_responses: int, context_dim: int | None = None, hidden: int = 64):
        super().__init__()
        self.n_responses = _checks.integer(n_responses, "n_responses", minimum=2)
        self.context_dim = None if context_dim is None else _checks.integer(context_dim, "context_dim", minimum=1)
        if self.context_dim is None:
            self.scores = nn.Parameter(torch.zeros(self.n_responses, dtype=torch.float64))
        else:
            hidden = _checks.integer(hidden, "hidden", minimum=1)
            self.net = nets.mlp(self.context_dim, hidden, self.n_responses, activation=nn.SiLU)

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_dim is None:
            return self.scores
        _checks.tensor(x, "x", ndim=2, last_dim=self.context_dim, floating=True)
        return self.net(x)


# ------------------------------------------------------------ the KL-regularised objective, exactly

def optimal_log_policy(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi* = log pi_ref + r / beta - log Z, eq. (align-optimal): the KL-regularised optimum."""
    beta, ref_logp = _beta(beta), _logp(ref_logp, "ref_logp")
    _same_shape(ref_logp=ref_logp, reward=_checks.tensor(reward, "reward", floating=True))
    return torch.log_softmax(ref_logp + reward / beta, dim=-1)


def optimal_value(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """The optimal objective beta log Z = beta log sum_y pi_ref(y) exp(r(y) / beta), eq. (align-value)."""
    beta, ref_logp = _beta(beta), _logp(ref_logp, "ref_logp")
    _same_shape(ref_logp=ref_logp, reward=_checks.tensor(reward, "reward", floating=True))
    return beta * torch.logsumexp(ref_logp + reward / beta, dim=-1)


def expected_reward(logp: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """E_pi[r] = sum_y pi(y) r(y), summed over the last dimension."""
    logp = _logp(logp, "logp")
    _same_shape(logp=logp, reward=_checks.tensor(reward, "reward", floating=True))
    return (logp.exp() * reward).sum(-1)


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The exact KL[pi, pi_ref] = sum_y pi(y) (log pi(y) - log pi_ref(y)) of two categorical policies."""
    logp, ref_logp = _logp(logp, "logp"), _logp(ref_logp, "ref_logp")
    _same_shape(logp=logp, ref_logp=ref_logp)
    p = logp.exp()
    return torch.where(p > 0, p * (logp - ref_logp), torch.zeros_like(p)).sum(-1)


def objective(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """J(pi) = E_pi[r] - beta KL[pi, pi_ref], eq. (align-objective), computed exactly."""
    beta = _beta(beta)
    return expected_reward(logp, reward) - beta * kl_divergence(logp, ref_logp)


def total_variation(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Total variation distance (1/2) sum_y |p(y) - q(y)| between two categorical distributions."""
    logp, logq = _logp(logp, "logp"), _logp(logq, "logq")
    _same_shape(logp=logp, logq=logq)
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


# ------------------------------------------------------------------------------ sampling the data

def sample_responses(logp: torch.Tensor, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` responses per row of ``logp`` (``(..., K)`` -> ``(..., n)``), drawn on the CPU, on ``logp``'s device."""
    logp = _logp(logp, "logp")
    n = _checks.integer(n, "n", minimum=1)
    probs = logp.detach().exp().cpu().double().reshape(-1, logp.shape[-1])
    y = torch.multinomial(probs, n, replacement=True, generator=generator)
    return y.reshape(*logp.shape[:-1], n).to(logp.device)


def sample_preferences(ref_logp: torch.Tensor, reward: torch.Tensor, n: int, *,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled pairs: y, y' ~ pi_ref independently, y preferred with probability sigma(r(y) - r(y')).

    Returns ``(chosen, rejected)`` index tensors of shape ``(n,)``; the labeller is the Bradley-Terry
    model (align-bt) with the true reward. ``ref_logp`` and ``reward`` have shape ``(K,)``.
    """
    ref_logp = _checks.tensor(ref_logp, "ref_logp", ndim=1, floating=True)
    _same_shape(ref_logp=ref_logp, reward=_checks.tensor(reward, "reward", floating=True))
    pair = sample_responses(ref_logp, 2 * _checks.integer(n, "n", minimum=1), generator=generator).view(2, -1)
    u = torch.rand(pair.shape[1], generator=generator, dtype=torch.float64).to(ref_logp.device)
    first_wins = u < torch.sigmoid((reward[pair[0]] - reward[pair[1]]).double())
    chosen = torch.where(first_wins, pair[0], pair[1])
    rejected = torch.where(first_wins, pair[1], pair[0])
    return chosen, rejected


def preference_weights(ref_logp: torch.Tensor, reward: torch.Tensor, *,
                       deterministic: bool = False) -> torch.Tensor:
    """Population pair weights W[i, j] = 2 pi_ref(i) pi_ref(j) P(i > j), eq. (align-pairs): the
    probability that a labelled pair of :func:`sample_preferences` reads "i chosen over j" (the pair can
    be drawn in either order). Shape ``(..., K, K)``; each ``W`` sums to 1.

    P(i > j) is the Bradley-Terry sigma(r_i - r_j), or with ``deterministic=True`` the labeller who
    always prefers the higher reward (:func:`strict_preferences`, the setting of IPO, eq. (align-ipo)).
    """
    ref_logp = _logp(ref_logp, "ref_logp")
    _same_shape(ref_logp=ref_logp, reward=_checks.tensor(reward, "reward", floating=True))
    p = ref_logp.exp()
    prefer = (strict_preferences(reward) if deterministic
              else torch.sigmoid(reward[..., :, None] - reward[..., None, :]))
    return 2 * p[..., :, None] * p[..., None, :] * prefer


def strict_preferences(reward: torch.Tensor) -> torch.Tensor:
    """P[i, j] = 1 if r_i > r_j, 1/2 on ties, 0 otherwise: a labeller who is never wrong. ``(..., K, K)``."""
    reward = _checks.tensor(reward, "reward", floating=True, ndim=range(1, 8))
    gap = reward[..., :, None] - reward[..., None, :]
    return (gap > 0).to(reward.dtype) + 0.5 * (gap == 0).to(reward.dtype)


def preference_counts(chosen: torch.Tensor, rejected: torch.Tensor, n_responses: int) -> torch.Tensor:
    """Empirical pair weights W[i, j] = (number of pairs with i chosen over j) / n, shape ``(K, K)``."""
    k = _checks.integer(n_responses, "n_responses", minimum=2)
    chosen, rejected = _responses(chosen, "chosen", k), _responses(rejected, "rejected", k)
    _same_shape(chosen=chosen, rejected=rejected)
    if chosen.ndim != 1 or len(chosen) == 0:
        raise ValueError(f"chosen and rejected must be non-empty 1-D index tensors, got shape {tuple(chosen.shape)}")
    flat = torch.bincount(chosen * k + rejected, minlength=k * k).double()
    return (flat / len(chosen)).view(k, k)


# ---------------------------------------------------------------------- Bradley-Terry and DPO losses

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean negative Bradley-Terry log-likelihood -log sigma(r_chosen - r_rejected), eq. (align-bt-loss).

    Written as softplus(r_rejected - r_chosen), which is the same number and stable for large gaps.
    """
    _checks.tensor(r_chosen, "r_chosen", floating=True)
    _checks.tensor(r_rejected, "r_rejected", floating=True)
    _same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    if r_chosen.numel() == 0:
        raise ValueError("r_chosen and r_rejected are empty: there are no preference pairs")
    return F.softplus(r_rejected - r_chosen).mean()


def pairwise_loss(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} W[i, j] softplus(s_j - s_i): the Bradley-Terry loss of scores ``(..., K)`` under pair
    weights ``(..., K, K)`` (population or empirical); summed over any leading batch dimensions."""
    scores = _logp(scores, "scores")
    _checks.tensor(weights, "weights", floating=True)
    k = scores.shape[-1]
    if weights.shape != (*scores.shape, k):
        raise ValueError(f"weights must have shape {(*scores.shape, k)} for scores of shape {tuple(scores.shape)}, "
                         f"got {tuple(weights.shape)}")
    return (weights * F.softplus(scores[..., None, :] - scores[..., :, None])).sum()


def implicit_reward(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta (log pi - log pi_ref), eq. (align-implicit)."""
    beta = _beta(beta)
    _checks.tensor(logp, "logp", floating=True)
    _checks.tensor(ref_logp, "ref_logp", floating=True)
    _same_shape(logp=logp, ref_logp=ref_logp)
    return beta * (logp - ref_logp)


def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_logp_chosen: torch.Tensor,
             ref_logp_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss, eq. (align-dpo): the Bradley-Terry loss of the implicit rewards of each pair.

    All four tensors hold one log-probability per pair (a sequence's summed token log-probabilities
    for a language model), shape ``(n,)``.
    """
    beta = _beta(beta)
    _same_shape(logp_chosen=logp_chosen, logp_rejected=logp_rejected,
                ref_logp_chosen=ref_logp_chosen, ref_logp_rejected=ref_logp_rejected)
    return bradley_terry_loss(implicit_reward(logp_chosen, ref_logp_chosen, beta),
                              implicit_reward(logp_rejected, ref_logp_rejected, beta))


def pairwise_dpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO on pair weights ``(..., K, K)``: with :func:`preference_weights` it is the population loss
    (align-dpo-pop), with :func:`preference_counts` the loss of a sampled data set."""
    return pairwise_loss(implicit_reward(logp, ref_logp, beta), weights)


def fit_feature_reward(features: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, *,
                       steps: int = 300, lr: float = 0.05) -> torch.Tensor:
    """A linear Bradley-Terry reward model on response features, r(y) = w . phi(y), fitted to labelled
    pairs by the loss (align-bt-loss) from w = 0; returns the proxy reward of every response ``(K,)``.

    ``features`` is ``(K, d)``; ``chosen`` and ``rejected`` hold response indices ``(n,)``. A linear model
    of a reward that is not linear in the features is the simplest misspecified reward model (the
    over-optimisation experiment of the chapter)."""
    _checks.tensor(features, "features", ndim=2, floating=True, min_rows=2)
    k = features.shape[0]
    chosen, rejected = _responses(chosen, "chosen", k), _responses(rejected, "rejected", k)
    _same_shape(chosen=chosen, rejected=rejected)
    if chosen.ndim != 1 or len(chosen) == 0:
        raise ValueError("chosen and rejected must be non-empty 1-D index tensors")
    model = nn.Linear(features.shape[1], 1, bias=False).to(features)
    nn.init.zeros_(model.weight)
    diff = features[chosen] - features[rejected]                             # (n, d)
    zero = torch.zeros(len(diff), dtype=features.dtype, device=features.device)
    fit(model, lambda m: bradley_terry_loss(m(diff).squeeze(-1), zero), steps=steps, lr=lr)
    return model(features).squeeze(-1).detach()                              # (K,)


# ------------------------------------------------------------------------------------------ IPO

def _tau(tau) -> float:
    return _checks.real(tau, "tau", positive=True)


def ipo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_logp_chosen: torch.Tensor,
             ref_logp_rejected: torch.Tensor, tau: float) -> torch.Tensor:
    """The IPO loss, eq. (align-ipo): mean of (h - 1/(2 tau))^2, where h is the log-ratio margin
    log[pi(y_c) pi_ref(y_r) / (pi(y_r) pi_ref(y_c))] of each pair. Shapes ``(n,)``, as :func:`dpo_loss`."""
    tau = _tau(tau)
    for name, t in (("logp_chosen", logp_chosen), ("logp_rejected", logp_rejected),
                    ("ref_logp_chosen", ref_logp_chosen), ("ref_logp_rejected", ref_logp_rejected)):
        _checks.tensor(t, name, floating=True)
    _same_shape(logp_chosen=logp_chosen, logp_rejected=logp_rejected,
                ref_logp_chosen=ref_logp_chosen, ref_logp_rejected=ref_logp_rejected)
    if logp_chosen.numel() == 0:
        raise ValueError("the IPO loss needs at least one preference pair")
    margin = (logp_chosen - ref_logp_chosen) - (logp_rejected - ref_logp_rejected)
    return ((margin - 0.5 / tau) ** 2).mean()


def pairwise_ipo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, weights: torch.Tensor,
                      tau: float) -> torch.Tensor:
    """IPO on pair weights ``(..., K, K)`` (population with :func:`preference_weights`, empirical with
    :func:`preference_counts`): sum_{i,j} W[i, j] (d_i - d_j - 1/(2 tau))^2, d = log pi - log pi_ref."""
    tau = _tau(tau)
    logp, ref_logp = _logp(logp, "logp"), _logp(ref_logp, "ref_logp")
    _same_shape(logp=logp, ref_logp=ref_logp)
    _checks.tensor(weights, "weights", floating=True)
    k = logp.shape[-1]
    if weights.shape != (*logp.shape, k):
        raise ValueError(f"weights must have shape {(*logp.shape, k)} for logp of shape {tuple(logp.shape)}, "
                         f"got {tuple(weights.shape)}")
    d = logp - ref_logp
    margin = d[..., :, None] - d[..., None, :]                          # (..., K, K): d_i - d_j
    return (weights * (margin - 0.5 / tau) ** 2).sum()


def ipo_optimal_log_policy(ref_logp: torch.Tensor, prefer: torch.Tensor, tau: float) -> torch.Tensor:
    """The minimiser of the population IPO loss, eq. (align-ipo-optimum): pi proportional to
    pi_ref exp(p(y > pi_ref) / tau), where p(i > pi_ref) = sum_j pi_ref(j) P[i, j] is the chance that
    i beats a reply drawn from the reference. ``prefer`` is P, shape ``(..., K, K)``."""
    tau = _tau(tau)
    ref_logp = _logp(ref_logp, "ref_logp")
    _checks.tensor(prefer, "prefer", floating=True)
    k = ref_logp.shape[-1]
    if prefer.shape != (*ref_logp.shape, k):
        raise ValueError(f"prefer must have shape {(*ref_logp.shape, k)}, got {tuple(prefer.shape)}")
    win = (prefer * ref_logp.exp()[..., None, :]).sum(-1)               # (..., K): p(i > pi_ref)
    return torch.log_softmax(ref_logp + win / tau, dim=-1)


# --------------------------------------------------------------------------- policy gradients

def kl_regularised_advantages(reward: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                              beta: float) -> torch.Tensor:
    """Per-sample advantages r - beta log(pi / pi_ref) minus their batch mean, eq. (align-pg), detached.

    All inputs are per sampled response, shape ``(n,)`` or ``(..., n)``; the baseline is the mean over
    the last dimension (the batch), which leaves the expected gradient unchanged up to a factor 1 - 1/n.
    """
    beta = _beta(beta)
    _checks.tensor(reward, "reward", floating=True)
    _same_shape(reward=reward, logp=_checks.tensor(logp, "logp", floating=True),
                ref_logp=_checks.tensor(ref_logp, "ref_logp", floating=True))
    if reward.ndim == 0 or reward.shape[-1] < 2:
        raise ValueError("the baseline needs a batch of at least 2 samples in the last dimension")
    shaped = (reward - beta * (logp - ref_logp)).detach()
    return shaped - shaped.mean(-1, keepdim=True)


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, logp_old: torch.Tensor | None = None,
                         clip: float | None = None) -> torch.Tensor:
    """REINFORCE, eq. (align-reinforce), or the PPO clipped surrogate, eq. (align-ppo), to *minimise*.

    ``logp``: the current policy's log-probabilities of the sampled responses (with gradient);
    ``advantages``: their (detached) advantages. With ``clip`` and ``logp_old`` (the sampling policy's
    log-probabilities) the loss is -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)), rho = pi / pi_old.
    """
    _checks.tensor(logp, "logp", floating=True)
    _same_shape(logp=logp, advantages=_checks.tensor(advantages, "advantages", floating=True))
    advantages = advantages.detach()
    if clip is None:
        if logp_old is not None:
            raise ValueError("logp_old is only used with clip; pass clip=0.2 (say) for the PPO surrogate")
        return -(logp * advantages).mean()
    clip = _checks.real(clip, "clip", positive=True)
    if logp_old is None:
        raise ValueError("the clipped surrogate needs logp_old, the sampling policy's log-probabilities")
    _same_shape(logp=logp, logp_old=_checks.tensor(logp_old, "logp_old", floating=True))
    ratio = torch.exp(logp - logp_old.detach())
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()


# ------------------------------------------------------------------------------------------ GRPO

def group_advantages(rewards: torch.Tensor, normalise_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages, eq. (align-grpo-adv): (r_i - mean) / (std + eps) within each group.

    ``rewards`` has shape ``(..., G)``, one group of G >= 2 responses per row; ``std`` is the sample
    standard deviation (divisor G - 1). ``normalise_std=False`` keeps r_i - mean.
    """
    _checks.tensor(rewards, "rewards", floating=True)
    if rewards.ndim == 0 or rewards.shape[-1] == 0:
        raise ValueError(f"rewards must hold groups in the last dimension; got an empty group (shape "
                         f"{tuple(rewards.shape)})")
    if rewards.shape[-1] < 2:
        raise ValueError("a group needs at least 2 responses: one response has no group to be relative to")
    centred = rewards - rewards.mean(-1, keepdim=True)
    if not normalise_std:
        return centred
    eps = _checks.real(eps, "eps", positive=True)
    return centred / (rewards.std(-1, keepdim=True) + eps)


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor,
              beta: float, clip: float = 0.2, normalise_std: bool = True) -> torch.Tensor:
    """The GRPO loss (to minimise), eq. (align-grpo): clipped surrogate with group-relative advantages
    plus beta times the k3 estimate of KL[pi, pi_ref], eq. (kl-k3), on the sampled responses.

    All tensors have shape ``(..., G)``: per sampled response, the current, the sampling (old) and the
    reference log-probabilities, and the reward. ``beta = 0`` drops the penalty.
    """
    beta = _checks.real(beta, "beta", nonnegative=True)
    _same_shape(logp=_checks.tensor(logp, "logp", floating=True),
                logp_old=_checks.tensor(logp_old, "logp_old", floating=True),
                ref_logp=_checks.tensor(ref_logp, "ref_logp", floating=True),
                rewards=_checks.tensor(rewards, "rewards", floating=True))
    adv = group_advantages(rewards, normalise_std)
    surrogate = policy_gradient_loss(logp, adv, logp_old, clip)
    return surrogate + beta * k3(ref_logp - logp).mean()                  # log r = log pi_ref - log pi


@functools.lru_cache(maxsize=16)
def _outcomes(k: int, m: int) -> torch.Tensor:
    """Every sequence of m responses out of k, as a ``(k^m, m)`` index tensor (on the CPU)."""
    return torch.tensor(list(itertools.product(range(k), repeat=m)), dtype=torch.long).view(-1, m)


def expected_group_advantage(logp: torch.Tensor, reward: torch.Tensor, group_size: int,
                             normalise_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """a(y) = E[A_1 | y_1 = y] for a group y_1..y_G ~ pi, eq. (align-grpo-abar), by exact enumeration.

    ``logp`` and ``reward`` have shape ``(K,)``; the other G - 1 responses are summed over all
    K^(G-1) outcomes, so keep K^(G-1) below a million. Returns ``(K,)``.
    """
    logp = _checks.tensor(logp, "logp", ndim=1, floating=True)
    _same_shape(logp=logp, reward=_checks.tensor(reward, "reward", floating=True))
    g = _checks.integer(group_size, "group_size", minimum=2)
    k = logp.shape[0]
    if k ** (g - 1) > 1_000_000:
        raise ValueError(f"enumerating K^(G-1) = {k}^{g - 1} groups is too many; use a smaller group")
    others = _outcomes(k, g - 1).to(logp.device)                                                 # (M, G-1)
    weight = logp[others].sum(-1).exp()                                                          # (M,)
    y = torch.arange(k, device=logp.device)
    groups = torch.cat([y[:, None, None].expand(k, len(others), 1),
                        others[None].expand(k, -1, -1)], dim=-1)                                 # (K, M, G)
    adv = group_advantages(reward[groups], normalise_std, eps)[..., 0]                           # (K, M)
    return (adv * weight).sum(-1)


def population_grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float,
                         group_size: int, normalise_std: bool = True) -> torch.Tensor:
    """A loss whose gradient is the *expected* on-policy GRPO gradient, eq. (align-grpo-mean):
    -sum_y pi(y) a(y) (a detached) - beta sum_y pi_ref(y) log pi(y). ``logp``, ``ref_logp``: ``(K,)``."""
    beta = _checks.real(beta, "beta", nonnegative=True)
    logp = _checks.tensor(logp, "logp", ndim=1, floating=True)
    _checks.tensor(reward, "reward", ndim=1, floating=True)
    _same_shape(logp=logp, ref_logp=_checks.tensor(ref_logp, "ref_logp", floating=True), reward=reward)
    a = expected_group_advantage(logp.detach(), reward, group_size, normalise_std)
    return -(logp.exp() * a).sum() - beta * (ref_logp.exp() * logp).sum()


def grpo_fixed_point_residual(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float,
                              group_size: int, normalise_std: bool = True) -> torch.Tensor:
    """max_y |pi(y) (1 - a(y) / beta) - pi_ref(y)|: zero exactly at a GRPO fixed point, eq. (align-grpo-fixed)."""
    beta = _beta(beta)
    _same_shape(logp=logp, ref_logp=_checks.tensor(ref_logp, "ref_logp", floating=True))
    a = expected_group_advantage(logp, reward, group_size, normalise_std)
    return (logp.exp() * (1 - a / beta) - ref_logp.exp()).abs().max()


def grpo_fixed_point(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float, group_size: int,
                     normalise_std: bool = True, start: torch.Tensor | None = None, max_iter: int = 50,
                     tol: float = 1e-12) -> torch.Tensor:
    """Solve pi (1 - a_pi / beta) = pi_ref, eq. (align-grpo-fixed), for the logits by damped Newton steps.

    The equation is the zero of the expected GRPO gradient pi a_pi - beta (pi - pi_ref) in the
    logits; ``start`` (log-probabilities, default ``ref_logp``) should lie where the GRPO dynamics go,
    e.g. after a few steps of :func:`population_grpo_loss`, since a root need not be unique.
    Returns log-probabilities ``(K,)``; raises if the residual does not fall below ``sqrt(tol)``.
    """
    beta = _beta(beta)
    ref_logp = _checks.tensor(ref_logp, "ref_logp", ndim=1, floating=True)
    _checks.tensor(reward, "reward", ndim=1, floating=True)
    group_size = _checks.integer(group_size, "group_size", minimum=2)
    theta = (ref_logp if start is None else _checks.tensor(start, "start", ndim=1, floating=True)).detach().clone()
    _same_shape(ref_logp=ref_logp, start=theta, reward=reward)
    max_iter = _checks.integer(max_iter, "max_iter", minimum=1)

    def stationarity(t):                                           # (K,): zero at a fixed point
        logp = torch.log_softmax(t, -1)
        a = expected_group_advantage(logp, reward, group_size, normalise_std)
        return logp.exp() * a - beta * (logp.exp() - ref_logp.exp())

    f = stationarity(theta)
    for _ in range(max_iter):
        if float(f.abs().max()) < tol:
            break
        jac = torch.autograd.functional.jacobian(stationarity, theta)          # (K, K), singular along 1
        step = -torch.linalg.pinv(jac) @ f                         # least-norm step: ignores the shift
        scale = 1.0
        while True:                                                # halve until the residual falls
            f_new = stationarity(theta + scale * step)
            if float(f_new.norm()) < float(f.norm()) or scale <= 1e-4:
                break
            scale /= 2
        theta, f = theta + scale * step, f_new                     # f_new is the residual at theta
    if not float(f.abs().max()) < tol ** 0.5:
        raise RuntimeError(f"Newton's method did not reach a GRPO fixed point (residual {float(f.abs().max()):.2e}); "
                           "start it closer, e.g. after a few steps of population_grpo_loss")
    return torch.log_softmax(theta, -1)


# --------------------------------------------------------------------------------- training helper

def _no_data(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.empty(0)


def fit(model: nn.Module, loss_fn, *, steps: int, lr: float = 0.05, **train_kwargs) -> list[float]:
    """Minimise a data-free loss ``loss_fn(model)`` (a population loss, or one whose data sit in the
    closure) with the book's training loop :func:`mlbook.train.train`; returns the loss per step."""
    from .train import train

    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model)")
    train_kwargs.setdefault("show_progress", False)
    return train(model, lambda m, _batch: loss_fn(m), _no_data, steps=steps, lr=lr, batch_size=1,
                 **train_kwargs)


def _reuse_batches(draw, loss_on, epochs: int):
    """A loss for :func:`fit` that draws a fresh batch from the current policy every ``epochs``
    steps (``draw(logp_all)`` returns a dict) and reuses it in between (PPO-style epochs)."""
    state = {"step": 0}

    def loss(m):
        logp_all = m()
        if state["step"] % epochs == 0:                            # sample from the current policy
            state["batch"] = draw(logp_all)
        state["step"] += 1
        return loss_on(logp_all, state["batch"])

    return loss


def train_policy_gradient(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float, *,
                          batch_size: int = 256, clip: float | None = None, epochs: int = 1,
                          steps: int = 300, lr: float = 0.05, generator: torch.Generator | None = None,
                          device=None) -> torch.Tensor:
    """Stage 3 of RLHF on a bandit: a :class:`TabularPolicy` started at ``ref_logp`` and trained by
    the policy gradient of the KL-shaped reward, eq. (align-pg), on sampled responses.

    Every ``epochs`` steps a batch of ``batch_size`` responses is drawn from the current policy and
    its batch-mean advantages :func:`kl_regularised_advantages` are computed; the batch is then used
    for ``epochs`` gradient steps of :func:`policy_gradient_loss`: REINFORCE, eq. (align-reinforce),
    without ``clip``; the PPO clipped surrogate, eq. (align-ppo), with it. Adam with a cosine-decayed
    learning rate, ``steps * epochs`` steps in all. ``reward`` is per response, shape ``(K,)``.
    Returns the trained log-probabilities ``(K,)``, detached.
    """
    ref_logp = _checks.tensor(ref_logp, "ref_logp", ndim=1, floating=True)
    _same_shape(ref_logp=ref_logp, reward=_checks.tensor(reward, "reward", floating=True))
    epochs = _checks.integer(epochs, "epochs", minimum=1)
    steps = _checks.integer(steps, "steps", minimum=1)
    batch_size = _checks.integer(batch_size, "batch_size", minimum=2)
    policy = TabularPolicy(ref_logp)

    def draw(logp_all):
        y = sample_responses(logp_all, batch_size, generator=generator)
        return {"y": y, "old": logp_all[y].detach(),
                "adv": kl_regularised_advantages(reward[y], logp_all[y], ref_logp[y], beta)}

    def loss_on(logp_all, batch):
        y = batch["y"]
        return policy_gradient_loss(logp_all[y], batch["adv"], batch["old"] if clip else None, clip)

    fit(policy, _reuse_batches(draw, loss_on, epochs), steps=steps * epochs, lr=lr,
        lr_decay=True, device=device)
    return policy().detach()


def train_grpo(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float, group_size: int, *,
               normalise_std: bool = True, groups: int = 64, clip: float = 0.2, epochs: int = 2,
               steps: int = 300, lr: float = 0.05, generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
    """GRPO as it is run, on a bandit: a :class:`TabularPolicy` started at ``ref_logp``.

    Every ``epochs`` steps, ``groups`` groups of ``group_size`` responses are drawn from the current
    (old) policy; each batch is used for ``epochs`` steps of :func:`grpo_loss`, eq. (align-grpo):
    the clipped surrogate with group-relative advantages plus ``beta`` times the k3 penalty. Adam
    with a cosine-decayed learning rate, ``steps * epochs`` steps in all. ``reward`` is per
    response, shape ``(K,)``. Returns the trained log-probabilities ``(K,)``, detached.
    """
    ref_logp = _checks.tensor(ref_logp, "ref_logp", ndim=1, floating=True)
    _same_shape(ref_logp=ref_logp, reward=_checks.tensor(reward, "reward", floating=True))
    g = _checks.integer(group_size, "group_size", minimum=2)
    groups = _checks.integer(groups, "groups", minimum=1)
    epochs = _checks.integer(epochs, "epochs", minimum=1)
    steps = _checks.integer(steps, "steps", minimum=1)
    policy = TabularPolicy(ref_logp)

    def draw(logp_all):
        y = sample_responses(logp_all.expand(groups, len(ref_logp)), g, generator=generator)
        return {"y": y, "old": logp_all[y].detach()}                         # y: (groups, G)

    def loss_on(logp_all, batch):
        y = batch["y"]
        return grpo_loss(logp_all[y], batch["old"], ref_logp[y], reward[y], beta, clip=clip,
                         normalise_std=normalise_std)

    fit(policy, _reuse_batches(draw, loss_on, epochs), steps=steps * epochs, lr=lr,
        lr_decay=True, device=device)
    return policy().detach()


# --------------------------------------------------------------- token-level RLHF on short sequences

class SequencePolicy(nn.Module):
    """A tiny autoregressive policy over token sequences: a GRU reads the tokens so far (a start
    token first) and gives logits for the next one. With ``value_head=True`` it is a critic instead:
    one scalar per position, the value V(s_t) of the prefix before token t."""

    def __init__(self, vocab: int, hidden: int = 32, *, value_head: bool = False):
        super().__init__()
        self.vocab = _checks.integer(vocab, "vocab", minimum=2)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        self.embed = nn.Embedding(self.vocab + 1, hidden)                  # the last index is <start>
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1 if value_head else self.vocab)

    def _states(self, tokens: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(tokens[:, :1], self.vocab)
        h, _ = self.gru(self.embed(torch.cat([start, tokens[:, :-1]], dim=1)))
        return h                                                            # (n, L, hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of each token given its prefix ``(n, L)``, or values ``(n, L)``."""
        _checks.tensor(tokens, "tokens", ndim=2)
        out = self.head(self._states(tokens))                               # (n, L, V or 1)
        if out.shape[-1] == 1:
            return out.squeeze(-1)
        return torch.log_softmax(out, -1).gather(-1, tokens[..., None]).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, length: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` sequences of ``length`` tokens drawn from the policy, ``(n, length)``."""
        dev = self.head.weight.device
        tokens = torch.full((n, 1), self.vocab, dtype=torch.long, device=dev)
        h = None
        for _ in range(_checks.integer(length, "length", minimum=1)):
            out, h = self.gru(self.embed(tokens[:, -1:]), h)
            probs = torch.softmax(self.head(out[:, -1]), -1)               # (n, V)
            u = rand(n, 1, generator=generator, device=dev, dtype=probs.dtype)
            nxt = inverse_cdf(probs, u)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        return tokens[:, 1:]


def counting_reward(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """The toy task's reward: the share of positions t >= 1 where token t is token t-1 plus one
    (mod ``vocab``): "count upwards". Paid once, at the end of the sequence. ``(n,)``."""
    up = tokens[:, 1:] == (tokens[:, :-1] + 1) % vocab
    return up.double().mean(-1).to(torch.get_default_dtype())


def gae(rewards: torch.Tensor, values: torch.Tensor, lam: float = 0.95) -> torch.Tensor:
    """Generalised advantage estimation with discount 1, eq. (align-gae): delta_t = r_t + V_{t+1} - V_t
    (V after the last token is 0), A_t = sum_k lam^k delta_{t+k}. ``rewards`` and ``values`` ``(n, L)``."""
    lam = _checks.real(lam, "lam", nonnegative=True)
    _same_shape(rewards=rewards, values=values)
    nxt = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    delta = rewards + nxt - values
    adv, running = torch.zeros_like(delta), torch.zeros_like(delta[:, 0])
    for t in range(delta.shape[1] - 1, -1, -1):
        running = delta[:, t] + lam * running
        adv[:, t] = running
    return adv


def train_sequence_rl(policy: SequencePolicy, reference: SequencePolicy, reward_fn, *, method: str,
                      beta: float = 0.05, length: int = 8, batch: int = 64, updates: int = 60,
                      epochs: int = 4, clip: float = 0.2, lr: float = 3e-3, lam: float = 0.95,
                      critic: SequencePolicy | None = None,
                      generator: torch.Generator | None = None,
                      callback=None) -> dict[str, list[float]]:
    """Token-level RL from a sequence reward with a per-token KL penalty, three ways (equal samples:
    ``batch`` sequences per update, ``updates`` updates):

    - ``"ppo"``: per-token reward -beta (log pi - log pi_ref), plus the task reward at the last token;
      advantages by :func:`gae` from a learned ``critic`` (fitted to the returns); clipped surrogate.
    - ``"grpo"``: the group-normalised task reward as every token's advantage (one group: the batch),
      the k3 penalty of eq. (align-grpo) per token in the loss; clipped surrogate.
    - ``"rloo"``: REINFORCE with the leave-one-out baseline on the KL-shaped sequence reward
      R - beta sum_t (log pi - log pi_ref); clipped surrogate over the same epochs.

    Returns per update the mean task reward of the batch and the mean per-sequence KL estimate.
    """
    _checks.choice(method, "method", ("ppo", "grpo", "rloo"))
    if method == "ppo" and critic is None:
        raise ValueError("method='ppo' needs a critic (a SequencePolicy with value_head=True)")
    beta = _beta(beta)
    params = list(policy.parameters()) + (list(critic.parameters()) if method == "ppo" else [])
    opt = torch.optim.Adam(params, lr=_checks.real(lr, "lr", positive=True))
    history = {"reward": [], "kl": []}
    for update in range(_checks.integer(updates, "updates", minimum=1)):
        tokens = policy.sample(batch, length, generator=generator)          # (B, L)
        with torch.no_grad():
            logp_old, ref = policy(tokens), reference(tokens)               # (B, L)
            task = reward_fn(tokens).to(logp_old.dtype)                     # (B,)
            log_ratio = logp_old - ref
            if method == "ppo":
                rewards = -beta * log_ratio
                rewards[:, -1] += task
                values = critic(tokens)
                adv = gae(rewards, values, lam)
                returns = adv + values
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            elif method == "grpo":
                adv = ((task - task.mean()) / (task.std() + 1e-6))[:, None].expand_as(logp_old)
            else:
                shaped = task - beta * log_ratio.sum(-1)                     # (B,)
                baseline = (shaped.sum() - shaped) / (len(shaped) - 1)
                adv = (shaped - baseline)[:, None].expand_as(logp_old)
        for _ in range(_checks.integer(epochs, "epochs", minimum=1)):
            logp = policy(tokens)
            loss = policy_gradient_loss(logp, adv, logp_old, clip=clip)
            if method == "grpo":
                loss = loss + beta * k3(ref - logp).mean()
            if method == "ppo":
                loss = loss + 0.5 * (critic(tokens) - returns).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        history["reward"].append(float(task.mean()))
        history["kl"].append(float(log_ratio.sum(-1).mean()))
        if callback is not None:
            callback(update + 1, policy)
    return history

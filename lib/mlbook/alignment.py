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
           "SequencePolicy", "counting_reward", "gae", "train_sequence_rl",
           "ARITH_SYMBOLS", "PLUS", "EQUALS", "END", "encode", "decode", "addition_prompts",
           "correct_answers", "end_mask", "response_lengths", "format_ok", "answer_correct",
           "rule_reward", "PromptPolicy", "sequence_logp", "answer_distribution",
           "expected_accuracy", "supervised_warmup", "masked_grpo_loss", "train_r1zero",
           "answer_features", "fit_reward_classifier", "check_rule_reward"]


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
    """A tiny autoregressive policy over token sequences. Its network ``net`` is a
    :class:`mlbook.nets.TokenGRU`: a GRU reads the tokens so far (a start token first) and gives
    logits for the next one. With ``value_head=True`` it is a critic instead: one scalar per
    position, the value V(s_t) of the prefix before token t."""

    def __init__(self, vocab: int, hidden: int = 32, *, value_head: bool = False):
        super().__init__()
        self.vocab = _checks.integer(vocab, "vocab", minimum=2)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        self.net = nets.TokenGRU(self.vocab, hidden, out_features=1 if value_head else self.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of each token given its prefix ``(n, L)``, or values ``(n, L)``."""
        _checks.tensor(tokens, "tokens", ndim=2)
        out = self.net(tokens)                                              # (n, L, V or 1)
        if out.shape[-1] == 1:
            return out.squeeze(-1)
        return torch.log_softmax(out, -1).gather(-1, tokens[..., None]).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, length: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` sequences of ``length`` tokens drawn from the policy, ``(n, length)``."""
        dev = self.net.head.weight.device
        tokens = self.net.start_tokens(n, dev)                              # (n, 1): <start>
        h = None
        for _ in range(_checks.integer(length, "length", minimum=1)):
            logits, h = self.net.step(tokens[:, -1:], h)                    # (n, V)
            probs = torch.softmax(logits, -1)
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


# ------------------------------------------------------- reasoning from verifiable rewards (R1-Zero)
#
# The toy task of page ``alignment_r1``: prompts "a+b=" with single digits a, b, answered by the
# decimal digits of a + b and the end token "." (tokens are indices into ``ARITH_SYMBOLS``).

ARITH_SYMBOLS = "0123456789+=."
PLUS, EQUALS, END = 10, 11, 12                         # token ids of "+", "=" and the end token "."


def encode(texts: list[str] | tuple[str, ...], length: int | None = None) -> torch.Tensor:
    """Token ids ``(n, length)`` of strings over ``ARITH_SYMBOLS``, padded with END on the right
    (``length`` defaults to the longest string)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise TypeError("texts must be a non-empty list of strings, e.g. ['3+4=']")
    for text in texts:
        if not isinstance(text, str) or any(c not in ARITH_SYMBOLS for c in text):
            raise ValueError(f"{text!r} is not a string over the symbols {ARITH_SYMBOLS!r}")
    width = max(len(t) for t in texts)
    length = width if length is None else _checks.integer(length, "length", minimum=1)
    if width > length:
        raise ValueError(f"a text of {width} symbols does not fit in length {length}")
    return torch.tensor([[ARITH_SYMBOLS.index(c) for c in t] + [END] * (length - len(t))
                         for t in texts], dtype=torch.long)


def decode(tokens: torch.Tensor) -> list[str]:
    """The strings of token rows ``(n, L)``, each cut after its first END."""
    tokens = _tokens(tokens, "tokens", len(ARITH_SYMBOLS))
    out = []
    for row in tokens.tolist():
        text = "".join(ARITH_SYMBOLS[t] for t in row)
        out.append(text[:text.index(".") + 1] if "." in text else text)
    return out


def _tokens(tokens, name: str, vocab: int) -> torch.Tensor:
    _checks.tensor(tokens, name, ndim=2)
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"{name} must hold token ids in 0..{vocab - 1}")
    return tokens


def _prompts(prompts) -> torch.Tensor:
    prompts = _tokens(prompts, "prompts", len(ARITH_SYMBOLS))
    if prompts.shape[1] != 4 or not (bool((prompts[:, [0, 2]] < 10).all())
                                     and bool((prompts[:, 1] == PLUS).all())
                                     and bool((prompts[:, 3] == EQUALS).all())):
        raise ValueError("prompts must be rows 'a+b=' of 4 tokens with single digits a and b")
    return prompts


def addition_prompts() -> torch.Tensor:
    """All 100 prompts "a+b=" with a, b in 0..9, as token ids ``(100, 4)``, a-major."""
    digits = torch.arange(10)
    a, b = digits.repeat_interleave(10), digits.repeat(10)
    return torch.stack([a, torch.full_like(a, PLUS), b, torch.full_like(a, EQUALS)], dim=1)


def correct_answers(prompts: torch.Tensor, length: int = 4) -> torch.Tensor:
    """The right response to each prompt, the digits of a + b then END, padded with END: ``(n, length)``."""
    prompts = _prompts(prompts)
    length = _checks.integer(length, "length", minimum=3)
    sums = (prompts[:, 0] + prompts[:, 2]).tolist()
    return encode([f"{s}." for s in sums], length).to(prompts.device)


def end_mask(tokens: torch.Tensor, end: int = END) -> torch.Tensor:
    """True for the tokens a response consists of: every token up to and including its first
    ``end``; the positions after it are padding and False. ``(n, L)`` -> bool ``(n, L)``."""
    _checks.tensor(tokens, "tokens", ndim=2)
    is_end = (tokens == end).long()
    return (is_end.cumsum(-1) - is_end) == 0                   # no end token strictly before t


def response_lengths(tokens: torch.Tensor, end: int = END) -> torch.Tensor:
    """The number of tokens of each response, its end token included (L when it has none). ``(n,)``."""
    return end_mask(tokens, end).sum(-1)


def format_ok(responses: torch.Tensor) -> torch.Tensor:
    """The format rule: one or two digits, then END (what follows END is padding, never read).
    Bool ``(n,)``. A response without END, with no digit, with more than two, or with "+" or "="
    before its END breaks the format."""
    responses = _tokens(responses, "responses", len(ARITH_SYMBOLS))
    if responses.shape[1] < 3:
        raise ValueError(f"responses need at least 3 positions (two digits and END), got shape "
                         f"{tuple(responses.shape)}")
    mask = end_mask(responses)
    n_digits = ((responses < 10) & mask).sum(-1)
    has_end = (responses == END).any(-1)
    length = mask.sum(-1)
    return has_end & (n_digits == length - 1) & (n_digits >= 1) & (n_digits <= 2)


def answer_correct(prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """The accuracy rule: the response is exactly the decimal writing of a + b followed by END
    (so a correct answer always respects the format; "07." for 7 is wrong). Bool ``(n,)``."""
    prompts = _prompts(prompts)
    responses = _tokens(responses, "responses", len(ARITH_SYMBOLS))
    if len(responses) != len(prompts) or responses.shape[1] < 3:
        raise ValueError(f"need one response of at least 3 tokens per prompt, got prompts "
                         f"{tuple(prompts.shape)} and responses {tuple(responses.shape)}")
    right = correct_answers(prompts, responses.shape[1])
    return ((responses == right) | ~end_mask(right)).all(-1)


def rule_reward(prompts: torch.Tensor, responses: torch.Tensor, format_weight: float = 0.5) -> torch.Tensor:
    """The verifiable reward of page ``alignment_r1``, eq. (r1-reward):
    r = 1[answer correct] + ``format_weight`` * 1[format respected]. Float ``(n,)``; a correct
    answer earns 1 + format_weight, a well-formed wrong one format_weight, anything else 0."""
    w = _checks.real(format_weight, "format_weight", nonnegative=True)
    correct = answer_correct(prompts, responses).to(torch.get_default_dtype())
    return correct + w * format_ok(responses).to(correct.dtype)


class _ValueEmbedding(nn.Module):
    """Token embedding in which the first ``numeric`` tokens (the digits) share one learned vector
    plus their value k / (numeric - 1) times a learned direction; the other tokens have free vectors."""

    def __init__(self, vocab: int, hidden: int, numeric: int):
        super().__init__()
        self.numeric = numeric
        self.table = nn.Embedding(vocab, hidden)
        self.value = nn.Linear(1, hidden, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        is_num = tokens < self.numeric
        value = torch.where(is_num, tokens, 0).to(self.value.weight.dtype) / (self.numeric - 1)
        return self.table(torch.where(is_num, 0, tokens)) + self.value(value[..., None])


class PromptPolicy(SequencePolicy):
    """A :class:`SequencePolicy` that reads a prompt before it answers: the GRU reads <start>, the
    prompt's tokens, then the response, and only the response tokens are scored or sampled.

    ``policy(responses, prompts)`` gives the log-probability of each response token given the
    prompt and the response tokens before it, ``(n, L)``; without ``prompts`` it is the parent's
    unprompted policy. :meth:`respond` samples responses, padding with ``end`` after the first
    ``end`` token. With ``numeric=k`` the tokens 0..k-1 (the digits) are *read* as their value
    (a number line instead of k free embeddings); they are still written as k separate tokens.
    """

    def __init__(self, vocab: int = len(ARITH_SYMBOLS), hidden: int = 32, *, numeric: int = 0):
        super().__init__(vocab, hidden)
        numeric = _checks.integer(numeric, "numeric", minimum=0)
        if numeric == 1 or numeric > self.vocab:
            raise ValueError(f"numeric must be 0 (off) or between 2 and vocab={self.vocab}, got {numeric}")
        if numeric:
            self.net.embed = _ValueEmbedding(self.vocab + 1, hidden, numeric)

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        if prompts is None:
            return super().forward(tokens)
        tokens, prompts = _tokens(tokens, "tokens", self.vocab), _tokens(prompts, "prompts", self.vocab)
        if len(tokens) != len(prompts):
            raise ValueError(f"one prompt per response: got {len(prompts)} prompts and {len(tokens)} responses")
        h = self.net.states(torch.cat([prompts, tokens], dim=1))[:, prompts.shape[1]:]  # (n, L, hidden)
        return torch.log_softmax(self.net.head(h), -1).gather(-1, tokens[..., None]).squeeze(-1)

    @torch.no_grad()
    def respond(self, prompts: torch.Tensor, length: int, *, end: int = END,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """One sampled response of ``length`` tokens per prompt ``(n, P)`` -> ``(n, length)``;
        after a response's first ``end`` token every position holds ``end``."""
        prompts = _tokens(prompts, "prompts", self.vocab)
        length = _checks.integer(length, "length", minimum=1)
        dev = self.net.head.weight.device
        prompts = prompts.to(dev)
        start = self.net.start_tokens(len(prompts), dev)                    # (n, 1): <start>
        logits, h = self.net.step(torch.cat([start, prompts], dim=1))       # read <start> + prompt
        done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
        tokens = []
        for _ in range(length):
            probs = torch.softmax(logits, -1)                               # (n, V)
            u = rand(len(prompts), 1, generator=generator, device=dev, dtype=probs.dtype)
            nxt = torch.where(done, torch.full_like(done, end, dtype=torch.long), inverse_cdf(probs, u))
            done = done | (nxt == end)
            tokens.append(nxt)
            logits, h = self.net.step(nxt[:, None], h)
        return torch.stack(tokens, dim=1)


def sequence_logp(policy: PromptPolicy, prompts: torch.Tensor, responses: torch.Tensor,
                  end: int = END) -> torch.Tensor:
    """log pi(y | x) = sum of the response's token log-probabilities up to and including its
    first ``end`` (the padding after it is not part of the response). ``(n,)``."""
    return (policy(responses, prompts) * end_mask(responses, end)).sum(-1)


def answer_distribution(policy: PromptPolicy, prompts: torch.Tensor, length: int = 4) -> torch.Tensor:
    """The policy's probability of each well-formed answer 0..18 ("0." to "18."), exactly, and in
    the last column of everything else: ``(n, 20)``, rows summing to one."""
    prompts = _prompts(prompts)
    n = len(prompts)
    answers = encode([f"{s}." for s in range(19)], _checks.integer(length, "length", minimum=3))
    answers = answers.to(prompts.device)
    with torch.no_grad():
        logp = sequence_logp(policy, prompts.repeat_interleave(19, 0), answers.repeat(n, 1))
    p = logp.exp().view(n, 19)
    return torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp(min=0)], dim=-1)


def expected_accuracy(policy: PromptPolicy, prompts: torch.Tensor, length: int = 4) -> float:
    """The probability that a sampled response is correct, averaged over ``prompts``: the mean of
    pi(right answer | prompt), computed exactly (the right response is unique), not sampled."""
    prompts = _prompts(prompts)
    with torch.no_grad():
        logp = sequence_logp(policy, prompts, correct_answers(prompts, length))
    return float(logp.exp().mean())


def supervised_warmup(policy: PromptPolicy, prompts: torch.Tensor, responses: torch.Tensor, *,
                      steps: int = 100, lr: float = 1e-2) -> list[float]:
    """Brief supervised pre-training: minimise the mean negative log-likelihood per response token
    (END included, padding excluded) of the given responses, with the book's training loop
    (full batch, Adam). Returns the loss per step."""
    if not isinstance(policy, PromptPolicy):
        raise TypeError(f"policy must be a PromptPolicy, got {type(policy).__name__}")
    prompts = _tokens(prompts, "prompts", policy.vocab)
    responses = _tokens(responses, "responses", policy.vocab)
    if len(prompts) != len(responses) or len(prompts) == 0:
        raise ValueError(f"need one response per prompt, got {len(prompts)} prompts and {len(responses)} responses")
    dev = policy.net.head.weight.device
    prompts, responses = prompts.to(dev), responses.to(dev)
    mask = end_mask(responses).to(torch.get_default_dtype())

    def loss(m):
        return -(m(responses, prompts) * mask).sum() / mask.sum()

    return fit(policy, loss, steps=steps, lr=lr, device=dev)


def masked_grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor,
                     advantages: torch.Tensor, mask: torch.Tensor, beta: float,
                     clip: float = 0.2) -> torch.Tensor:
    """The GRPO loss of eq. (align-grpo) per token, for responses of varying length (to minimise):

    -(1/N) sum_i (1/|y_i|) sum_{t <= |y_i|} [min(rho_it A_i, clip(rho_it) A_i) - beta k3_it],
    rho_it = pi(a_t | s_t) / pi_old(a_t | s_t), k3 with the ratio pi_ref / pi per token,
    eq. (r1-grpo) of page ``alignment_r1``. ``logp``, ``logp_old``, ``ref_logp`` and the bool
    ``mask`` (:func:`end_mask`) are ``(N, L)``; ``advantages`` is one per response ``(N,)``.
    Padding (mask False) contributes nothing.
    """
    beta = _checks.real(beta, "beta", nonnegative=True)
    clip = _checks.real(clip, "clip", positive=True)
    for name, t in (("logp", logp), ("logp_old", logp_old), ("ref_logp", ref_logp)):
        _checks.tensor(t, name, floating=True, ndim=2)
    _same_shape(logp=logp, logp_old=logp_old, ref_logp=ref_logp, mask=_checks.tensor(mask, "mask"))
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (see end_mask), got dtype {mask.dtype}")
    _checks.tensor(advantages, "advantages", floating=True, ndim=1)
    if len(advantages) != len(logp):
        raise ValueError(f"one advantage per response: got {len(advantages)} for {len(logp)} responses")
    if not bool(mask.any(-1).all()):
        raise ValueError("every response needs at least one token in mask")
    adv = advantages.detach()[:, None]
    ratio = torch.exp(logp - logp_old.detach())
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    per_token = -surrogate + beta * k3(ref_logp.detach() - logp)         # (N, L)
    m = mask.to(per_token.dtype)
    return ((per_token * m).sum(-1) / m.sum(-1)).mean()


def train_r1zero(policy: PromptPolicy, reference: PromptPolicy, prompts: torch.Tensor, reward_fn, *,
                 group_size: int = 8, prompts_per_update: int = 16, updates: int = 60,
                 epochs: int = 2, length: int = 4, beta: float = 0.04, clip: float = 0.2,
                 lr: float = 3e-3, generator: torch.Generator | None = None,
                 callback=None) -> dict[str, list[float]]:
    """GRPO from a sequence reward, the recipe of page ``alignment_r1``: each update draws
    ``prompts_per_update`` prompts, ``group_size`` responses to each from the current policy, scores
    them with ``reward_fn(prompts, responses)`` (``(N,)``), standardises the rewards within each
    group, eq. (align-grpo-adv), and takes ``epochs`` Adam steps on :func:`masked_grpo_loss` with
    the k3 penalty towards ``reference``.

    Returns per update the batch means of: ``reward`` (of ``reward_fn``), ``correct`` and
    ``format`` (the rules :func:`answer_correct`, :func:`format_ok`, whatever ``reward_fn`` is),
    ``length`` (:func:`response_lengths`) and ``kl`` (sum over tokens of log pi_old - log pi_ref).
    ``callback(update, policy)`` runs after each update.
    """
    if not isinstance(policy, PromptPolicy) or not isinstance(reference, PromptPolicy):
        raise TypeError("policy and reference must be PromptPolicy instances")
    if not callable(reward_fn):
        raise TypeError("reward_fn must be callable as reward_fn(prompts, responses)")
    prompts = _prompts(prompts)
    g = _checks.integer(group_size, "group_size", minimum=2)
    m = _checks.integer(prompts_per_update, "prompts_per_update", minimum=1)
    updates = _checks.integer(updates, "updates", minimum=1)
    epochs = _checks.integer(epochs, "epochs", minimum=1)
    length = _checks.integer(length, "length", minimum=3)
    beta = _checks.real(beta, "beta", nonnegative=True)
    opt = torch.optim.Adam(policy.parameters(), lr=_checks.real(lr, "lr", positive=True))
    dev = policy.net.head.weight.device
    prompts = prompts.to(dev)
    history = {k: [] for k in ("reward", "correct", "format", "length", "kl")}
    for update in range(updates):
        pick = torch.randperm(len(prompts), generator=generator)[:m].to(dev)
        x = prompts[pick].repeat_interleave(g, 0)                              # (m G, 4)
        y = policy.respond(x, length, generator=generator)                     # (m G, L)
        mask = end_mask(y)
        with torch.no_grad():
            logp_old, ref = policy(y, x), reference(y, x)                      # (m G, L)
            reward = reward_fn(x, y).to(logp_old.dtype)                        # (m G,)
            adv = group_advantages(reward.view(m, g)).reshape(-1)
        for _ in range(epochs):
            loss = masked_grpo_loss(policy(y, x), logp_old, ref, adv, mask, beta, clip)
            opt.zero_grad()
            loss.backward()
            opt.step()
        history["reward"].append(float(reward.mean()))
        history["correct"].append(float(answer_correct(x, y).double().mean()))
        history["format"].append(float(format_ok(y).double().mean()))
        history["length"].append(float(response_lengths(y).double().mean()))
        history["kl"].append(float(((logp_old - ref) * mask).sum(-1).mean()))
        if callback is not None:
            callback(update + 1, policy)
    return history


def answer_features(prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Features of a learned reward model: one-hot a, one-hot b, and a one-hot of the token at
    each response position up to its END (zeros after). ``(n, 20 + 13 L)``; a linear score on them
    adds a term for the prompt to a term for the response and so cannot represent a + b."""
    prompts = _prompts(prompts)
    responses = _tokens(responses, "responses", len(ARITH_SYMBOLS))
    if len(prompts) != len(responses):
        raise ValueError(f"one response per prompt: got {len(prompts)} and {len(responses)}")
    dtype = torch.get_default_dtype()
    tok = F.one_hot(responses, len(ARITH_SYMBOLS)).to(dtype) * end_mask(responses)[..., None].to(dtype)
    return torch.cat([F.one_hot(prompts[:, 0], 10).to(dtype), F.one_hot(prompts[:, 2], 10).to(dtype),
                      tok.flatten(1)], dim=1)


def fit_reward_classifier(features: torch.Tensor, labels: torch.Tensor, *, steps: int = 300,
                          lr: float = 0.05, weight_decay: float = 1e-3) -> nn.Linear:
    """A learned reward model: logistic regression of a 0/1 label (say, "this answer is right") on
    ``features`` ``(n, d)``, fitted by the mean cross-entropy with an L2 penalty
    ``weight_decay/2 |w|^2`` from zero. Its logit is the proxy reward. Returns the fitted layer."""
    _checks.tensor(features, "features", ndim=2, floating=True, min_rows=2)
    labels = _checks.tensor(labels, "labels", ndim=1)
    if len(labels) != len(features):
        raise ValueError(f"one label per row of features: got {len(labels)} and {len(features)}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    wd = _checks.real(weight_decay, "weight_decay", nonnegative=True)
    model = nn.Linear(features.shape[1], 1).to(features)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    target = labels.to(features.dtype)

    def loss(m):
        logit = m(features).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logit, target) + 0.5 * wd * m.weight.pow(2).sum()

    fit(model, loss, steps=steps, lr=lr, device=features.device)
    return model.requires_grad_(False)


def check_rule_reward(fn):
    """Checker for the coding exercise of notebook ``alignment_r1zero``: ``fn(prompt, response)``
    takes strings such as ``("3+4=", "7.")`` (the response as the policy wrote it, up to and
    including its first "."; four symbols when it wrote no ".") and returns the reward of
    :func:`rule_reward` as a float: 1 for the right answer plus 0.5 for the format."""
    from .exercises import Case, check

    def expected(prompt: str, response: str) -> float:
        return float(rule_reward(encode([prompt]), encode([response], max(4, len(response))))[0])

    cases = [
        ("3+4=", "7.", "a right one-digit answer"),
        ("9+9=", "18.", "a right two-digit answer"),
        ("3+4=", "8.", "a wrong answer in the right format"),
        ("9+9=", "81.", "the right digits in the wrong order"),
        ("0+0=", "0.", "the answer 0"),
        ("2+5=", "07.", "a leading zero"),
        ("2+5=", "7777", "a response that never wrote '.'"),
        ("2+5=", ".", "an empty answer"),
        ("5+5=", "100.", "three digits"),
        ("1+2=", "+3.", "a '+' in the answer"),
    ]
    hints = {
        "a right one-digit answer": "the right answer earns 1 for being right and 0.5 for its format.",
        "a right two-digit answer": "compare the digits with str(a + b), not only the first digit.",
        "a wrong answer in the right format": "a wrong answer in the right format still earns 0.5.",
        "the right digits in the wrong order": "the answer must read as the number a + b.",
        "the answer 0": "0 is a one-digit answer like any other.",
        "a leading zero": "'07' is well formed (two digits) but is not how 7 is written.",
        "a response that never wrote '.'": "without the end symbol the format is broken: reward 0.",
        "an empty answer": "the format needs at least one digit before the '.'.",
        "three digits": "the format allows one or two digits only.",
        "a '+' in the answer": "only digits may come before the '.'.",
    }
    built = [Case(f"{what} ({p!r}, {r!r})", (p, r),
                  lambda out, e=expected(p, r): isinstance(out, (int, float)) and abs(float(out) - e) < 1e-9,
                  hints[what])
             for p, r, what in cases]
    return check(fn, built, name=getattr(fn, "__name__", "your reward"))

"""mlbook.alignment: the KL-regularised optimum, Bradley-Terry, DPO, policy gradients and GRPO."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlbook import alignment as al
from mlbook import kl
from helpers import gen, t64

REF = torch.log_softmax(t64([0.8, 0.1, -0.3, 0.4]), -1)
REWARD = t64([0.2, 1.0, -0.5, 0.6])


def random_logp(seed, k=4):
    return torch.log_softmax(torch.randn(k, generator=gen(seed), dtype=torch.float64), -1)


def central_difference(f, theta, h=1e-6):
    """Gradient of the scalar f(theta) by central differences, one coordinate at a time."""
    grad = torch.zeros_like(theta)
    for i in range(len(theta)):
        e = torch.zeros_like(theta)
        e[i] = h
        grad[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return grad


# ------------------------------------------------------------------ the closed-form optimum

@pytest.mark.parametrize("beta", [0.05, 0.5, 3.0])
def test_optimal_policy_attains_beta_log_z(beta):
    opt = al.optimal_log_policy(REF, REWARD, beta)
    value = al.optimal_value(REF, REWARD, beta)
    assert float(al.objective(opt, REF, REWARD, beta)) == pytest.approx(float(value), abs=1e-12)
    z = float((REF.exp() * torch.exp(REWARD / beta)).sum())
    assert float(value) == pytest.approx(beta * math.log(z), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_objective_is_beta_log_z_minus_beta_kl_to_the_optimum(seed):
    beta, logp = 0.7, random_logp(seed)
    opt = al.optimal_log_policy(REF, REWARD, beta)
    lhs = al.objective(logp, REF, REWARD, beta)
    rhs = al.optimal_value(REF, REWARD, beta) - beta * al.kl_divergence(logp, opt)
    assert float(lhs) == pytest.approx(float(rhs), abs=1e-12)
    assert float(lhs) < float(al.optimal_value(REF, REWARD, beta))


def test_optimum_tends_to_reference_and_to_argmax():
    assert float(al.total_variation(al.optimal_log_policy(REF, REWARD, 1e4), REF)) < 1e-3
    assert float(al.optimal_log_policy(REF, REWARD, 1e-3).exp()[1]) > 1 - 1e-6


def test_kl_and_total_variation_of_known_pairs():
    p, q = torch.log(t64([0.5, 0.5])), torch.log(t64([0.9, 0.1]))
    assert float(al.kl_divergence(p, q)) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert float(al.total_variation(p, q)) == pytest.approx(0.4)
    zero = torch.log(t64([1.0, 0.0]))                          # 0 log 0 = 0
    assert float(al.kl_divergence(zero, q)) == pytest.approx(-math.log(0.9))


# ------------------------------------------------------------------ Bradley-Terry and DPO

def test_bradley_terry_loss_by_hand():
    loss = al.bradley_terry_loss(t64([1.0, 0.0]), t64([0.0, 2.0]))
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(2.0))) / 2
    assert float(loss) == pytest.approx(by_hand, rel=1e-14)


def test_bradley_terry_loss_is_stable_for_large_gaps():
    assert float(al.bradley_terry_loss(t64([1000.0]), t64([0.0]))) == 0.0
    assert float(al.bradley_terry_loss(t64([0.0]), t64([1000.0]))) == pytest.approx(1000.0)


def test_dpo_loss_by_hand():
    # one pair: log-ratio -1.2 - (-1.5) = 0.3 for the chosen, -2.0 - (-1.0) = -1.0 for the rejected;
    # margin 0.1 * 1.3 = 0.13 and loss log(1 + e^-0.13) = log(1.878095) = 0.630258
    loss = al.dpo_loss(t64([-1.2]), t64([-2.0]), t64([-1.5]), t64([-1.0]), beta=0.1)
    margin = 0.1 * ((-1.2 + 1.5) - (-2.0 + 1.0))                    # 0.13
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-margin))), rel=1e-14)
    assert float(loss) == pytest.approx(0.630258, abs=1e-6)


def test_dpo_loss_matches_the_logsigmoid_form():
    g = gen(2)
    pc, pr, rc, rr = (torch.randn(50, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    logits = (pc - pr) - (rc - rr)
    trl_form = -F.logsigmoid(0.25 * logits).mean()
    assert float(al.dpo_loss(pc, pr, rc, rr, 0.25)) == pytest.approx(float(trl_form), abs=1e-12)


def test_pairwise_dpo_loss_on_counts_equals_the_sample_loss():
    chosen, rejected = al.sample_preferences(REF, REWARD, 500, generator=gen(3))
    logp, beta = random_logp(4), 0.3
    sample = al.dpo_loss(logp[chosen], logp[rejected], REF[chosen], REF[rejected], beta)
    pairwise = al.pairwise_dpo_loss(logp, REF, al.preference_counts(chosen, rejected, 4), beta)
    assert float(pairwise) == pytest.approx(float(sample), rel=1e-12)


def test_sampled_preferences_follow_the_population_weights():
    chosen, rejected = al.sample_preferences(REF, REWARD, 200_000, generator=gen(5))
    counts = al.preference_counts(chosen, rejected, 4)
    weights = al.preference_weights(REF, REWARD)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float((counts - weights).abs().max()) < 4 * math.sqrt(0.25 / 200_000) * 2


def test_population_dpo_loss_is_stationary_exactly_at_the_optimum():
    beta = 0.4
    weights = al.preference_weights(REF, REWARD)
    for logits, stationary in [(al.optimal_log_policy(REF, REWARD, beta), True), (random_logp(6), False)]:
        theta = logits.clone().requires_grad_(True)
        loss = al.pairwise_dpo_loss(torch.log_softmax(theta, -1), REF, weights, beta)
        (grad,) = torch.autograd.grad(loss, theta)
        assert (float(grad.abs().max()) < 1e-12) == stationary


def test_dpo_gradient_needs_no_partition_function():
    """Autograd, finite differences and beta sum W_ij sigma(h_j - h_i) (e_j - e_i) agree."""
    beta, weights = 0.5, al.preference_weights(REF, REWARD)
    theta = torch.randn(4, generator=gen(7), dtype=torch.float64)

    def loss(t):
        return al.pairwise_dpo_loss(torch.log_softmax(t, -1), REF, weights, beta)

    t = theta.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(loss(t), t)
    fd = central_difference(lambda u: float(loss(u)), theta)
    h = al.implicit_reward(torch.log_softmax(theta, -1), REF, beta)
    eye = torch.eye(4, dtype=torch.float64)
    closed = sum(weights[i, j] * torch.sigmoid(h[j] - h[i]) * (eye[j] - eye[i])
                 for i in range(4) for j in range(4)) * beta
    np.testing.assert_allclose(auto.numpy(), fd.numpy(), atol=1e-8)
    np.testing.assert_allclose(auto.numpy(), closed.numpy(), atol=1e-12)


# ------------------------------------------------------------------ policy gradients

def _expected_surrogate_gradient(theta, beta, clip=None):
    """Gradient of the surrogate loss averaged exactly over y ~ pi (every response, weight pi(y))."""
    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    y = torch.arange(4)
    adv = al.kl_regularised_advantages(REWARD[y], logp[y], REF[y], beta)
    weight = logp.detach().exp()
    if clip is None:
        per = [al.policy_gradient_loss(logp[i:i + 1], adv[i:i + 1]) for i in y]
    else:
        per = [al.policy_gradient_loss(logp[i:i + 1], adv[i:i + 1], logp[i:i + 1].detach(), clip) for i in y]
    (grad,) = torch.autograd.grad(sum(w * p for w, p in zip(weight, per)), t)
    return grad


@pytest.mark.parametrize("clip", [None, 0.2])
def test_expected_policy_gradient_matches_finite_differences_of_the_objective(clip):
    beta = 0.3
    theta = torch.randn(4, generator=gen(8), dtype=torch.float64)
    fd = central_difference(lambda u: float(al.objective(torch.log_softmax(u, -1), REF, REWARD, beta)), theta)
    np.testing.assert_allclose(-_expected_surrogate_gradient(theta, beta, clip).numpy(), fd.numpy(), atol=1e-8)


def test_kl_shaped_advantages_vanish_at_the_optimum():
    beta = 0.3
    opt = al.optimal_log_policy(REF, REWARD, beta)
    y = torch.tensor([0, 1, 1, 3, 2])
    adv = al.kl_regularised_advantages(REWARD[y], opt[y], REF[y], beta)
    assert float(adv.abs().max()) < 1e-12


def test_clipped_surrogate_stops_the_gradient_outside_the_trust_region():
    logp = t64([math.log(0.5)]).requires_grad_(True)
    old = t64([math.log(0.3)])                                       # ratio 5/3 > 1.2
    loss = al.policy_gradient_loss(logp, t64([1.0]), old, clip=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    assert float(loss.detach()) == pytest.approx(-1.2) and float(grad) == 0.0


# ------------------------------------------------------------------ GRPO

def test_group_advantages_by_hand():
    r = t64([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_allclose(al.group_advantages(r, normalise_std=False).numpy(),
                               [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]])
    std = math.sqrt(1 / 3)                                          # sample std of (1, 0, 0, 1)
    np.testing.assert_allclose(al.group_advantages(r, eps=1e-12).numpy()[0], np.array([0.5, -0.5, -0.5, 0.5]) / std)
    assert float(al.group_advantages(r).abs()[1].max()) == 0.0     # a tied group teaches nothing


def test_std_normalised_advantages_ignore_the_reward_scale():
    r = torch.randn(3, 5, generator=gen(9), dtype=torch.float64)
    np.testing.assert_allclose(al.group_advantages(10 * r + 3, eps=1e-12).numpy(),
                               al.group_advantages(r, eps=1e-12).numpy(), atol=1e-10)


def test_expected_group_advantage_without_std_is_a_shrunk_reward():
    logp, g = random_logp(10), 3
    a = al.expected_group_advantage(logp, REWARD, g, normalise_std=False)
    mean = float(al.expected_reward(logp, REWARD))
    np.testing.assert_allclose(a.numpy(), (1 - 1 / g) * (REWARD - mean).numpy(), atol=1e-12)
    assert float((logp.exp() * al.expected_group_advantage(logp, REWARD, g)).sum()) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("normalise_std", [False, True])
def test_population_grpo_gradient_is_the_expected_grpo_gradient(normalise_std):
    """Enumerate all K^G groups: their probability-weighted GRPO loss has the population loss's gradient."""
    k, g, beta = 3, 3, 0.4
    ref, reward = REF[:k].log_softmax(-1), REWARD[:k]
    theta = torch.randn(k, generator=gen(11), dtype=torch.float64)
    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    expected = 0
    for group in itertools.product(range(k), repeat=g):
        y = torch.tensor(group)
        prob = logp.detach()[y].sum().exp()
        expected = expected + prob * al.grpo_loss(logp[y], logp[y].detach(), ref[y], reward[y], beta,
                                                  normalise_std=normalise_std)
    (want,) = torch.autograd.grad(expected, t)
    t2 = theta.clone().requires_grad_(True)
    pop = al.population_grpo_loss(torch.log_softmax(t2, -1), ref, reward, beta, g, normalise_std)
    (got,) = torch.autograd.grad(pop, t2)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-10)


def test_k3_penalty_gradient_is_the_forward_kl_gradient():
    """d/dtheta of E_pi[k3] (pi held fixed in the expectation) = grad KL[pi_ref, pi], checked by finite differences."""
    theta = torch.randn(4, generator=gen(12), dtype=torch.float64)
    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    pathwise = (logp.detach().exp() * kl.k3(REF - logp)).sum()
    (got,) = torch.autograd.grad(pathwise, t)
    fd = central_difference(lambda u: float(al.kl_divergence(REF, torch.log_softmax(u, -1))), theta)
    np.testing.assert_allclose(got.numpy(), fd.numpy(), atol=1e-8)


def test_grpo_fixed_point_residual_is_zero_only_at_the_fixed_point():
    beta, g = 0.5, 2
    # Without std and G = 2, a(y) = (r(y) - E_pi r) / 2, so pi_ref = pi (1 - a / beta) can be solved by iteration.
    logp = REF.clone()
    for _ in range(2000):
        a = al.expected_group_advantage(logp, REWARD, g, normalise_std=False)
        logp = torch.log_softmax(0.5 * logp + 0.5 * (REF - torch.log1p(-a / beta)), -1)
    assert float(al.grpo_fixed_point_residual(logp, REF, REWARD, beta, g, normalise_std=False)) < 1e-10
    assert float(al.grpo_fixed_point_residual(REF, REF, REWARD, beta, g, normalise_std=False)) > 1e-2


@pytest.mark.parametrize("normalise_std", [False, True])
def test_grpo_fixed_point_zeroes_the_expected_gradient(normalise_std):
    beta, g = 0.5, 3
    policy = al.TabularPolicy(REF)                          # where the expected dynamics go, then Newton
    al.fit(policy, lambda m: al.population_grpo_loss(m(), REF, REWARD, beta, g, normalise_std), steps=100)
    logp = al.grpo_fixed_point(REF, REWARD, beta, g, normalise_std, start=policy().detach())
    assert float(al.grpo_fixed_point_residual(logp, REF, REWARD, beta, g, normalise_std)) < 1e-10
    t = logp.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(al.population_grpo_loss(torch.log_softmax(t, -1), REF, REWARD, beta, g,
                                                          normalise_std), t)
    assert float(grad.abs().max()) < 1e-10
    assert float(al.total_variation(logp, al.optimal_log_policy(REF, REWARD, beta))) > 0.01


# ------------------------------------------------------------------ policies and training

def test_policies_return_normalised_log_probabilities():
    tab = al.TabularPolicy(torch.zeros(3, 5))
    assert tab().shape == (3, 5)
    mlp = al.MLPPolicy(context_dim=2, n_responses=4)
    out = mlp(torch.randn(7, 2, generator=gen(13)))
    assert out.shape == (7, 4)
    np.testing.assert_allclose(out.exp().sum(-1).detach().numpy(), 1.0, rtol=1e-6)
    assert al.RewardModel(4, context_dim=2)(torch.zeros(3, 2)).shape == (3, 4)


def test_fit_recovers_reward_differences_from_population_preferences():
    model = al.RewardModel(4)
    al.fit(model, lambda m: al.pairwise_loss(m(), al.preference_weights(REF, REWARD)), steps=400, lr=0.1)
    learned = model().detach()
    np.testing.assert_allclose((learned - learned.mean()).numpy(), (REWARD - REWARD.mean()).numpy(), atol=1e-3)


def test_sample_responses_shape_and_device():
    y = al.sample_responses(REF.expand(3, 4), 6, generator=gen(14))
    assert y.shape == (3, 6) and y.device == REF.device and int(y.max()) < 4



def _hand_loop(draw, loss_on, epochs, steps):
    """The loop the notebooks used to write out: a batch drawn every `epochs` steps, then reused."""
    from mlbook.train import train

    policy, batch = al.TabularPolicy(REF), {}

    def loss(m, _):
        logp_all = m()
        if (step := batch.get("step", 0)) % epochs == 0:
            batch.update(draw(logp_all))
        batch["step"] = step + 1
        return loss_on(logp_all, batch)

    train(policy, loss, lambda n, generator=None: torch.empty(0), steps=steps * epochs, lr=0.05,
          batch_size=1, lr_decay=True, show_progress=False)
    return policy().detach()


@pytest.mark.parametrize("clip, epochs", [(None, 1), (0.2, 3)])
def test_train_policy_gradient_is_the_written_out_loop(clip, epochs):
    beta, n, steps = 0.5, 32, 20
    g1, g2 = gen(21), gen(21)
    got = al.train_policy_gradient(REF, REWARD, beta, batch_size=n, clip=clip, epochs=epochs,
                                   steps=steps, generator=g1)

    def draw(logp_all):
        y = al.sample_responses(logp_all, n, generator=g2)
        return dict(y=y, old=logp_all[y].detach(),
                    adv=al.kl_regularised_advantages(REWARD[y], logp_all[y], REF[y], beta))

    def loss_on(logp_all, b):
        return al.policy_gradient_loss(logp_all[b["y"]], b["adv"], b["old"] if clip else None, clip)

    torch.testing.assert_close(got, _hand_loop(draw, loss_on, epochs, steps), rtol=0, atol=0)


def test_train_grpo_is_the_written_out_loop():
    beta, g, groups, steps = 0.5, 3, 8, 20
    g1, g2 = gen(22), gen(22)
    got = al.train_grpo(REF, REWARD, beta, g, groups=groups, steps=steps, generator=g1)

    def draw(logp_all):
        y = al.sample_responses(logp_all.expand(groups, 4), g, generator=g2)
        return dict(y=y, old=logp_all[y].detach())

    def loss_on(logp_all, b):
        y = b["y"]
        return al.grpo_loss(logp_all[y], b["old"], REF[y], REWARD[y], beta, clip=0.2)

    torch.testing.assert_close(got, _hand_loop(draw, loss_on, 2, steps), rtol=0, atol=0)


@pytest.mark.parametrize("clip, epochs", [(None, 1), (0.2, 4)])
def test_policy_gradient_lands_on_the_optimum(clip, epochs):
    # the shaped advantages vanish at pi*, so the sampled gradient stops there
    beta = 0.5
    logp = al.train_policy_gradient(REF, REWARD, beta, clip=clip, epochs=epochs, generator=gen(23))
    assert float(al.total_variation(logp, al.optimal_log_policy(REF, REWARD, beta))) < 1e-3


def test_sampled_grpo_stops_at_the_predicted_fixed_point():
    beta, g = 0.5, 3
    policy = al.TabularPolicy(REF)
    al.fit(policy, lambda m: al.population_grpo_loss(m(), REF, REWARD, beta, g, False), steps=100)
    fixed = al.grpo_fixed_point(REF, REWARD, beta, g, False, start=policy().detach())
    logp = al.train_grpo(REF, REWARD, beta, g, normalise_std=False, generator=gen(24))
    assert float(al.total_variation(logp, fixed)) < 0.01


def test_training_helpers_check_their_arguments():
    with pytest.raises(ValueError, match="shapes must match"):
        al.train_policy_gradient(REF, REWARD[:3], 0.5, steps=1)
    with pytest.raises(ValueError, match="epochs"):
        al.train_policy_gradient(REF, REWARD, 0.5, epochs=0)
    with pytest.raises(ValueError, match="group_size"):
        al.train_grpo(REF, REWARD, 0.5, 1)
    with pytest.raises(ValueError, match="groups"):
        al.train_grpo(REF, REWARD, 0.5, 2, groups=0)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_non_positive_beta_is_rejected(beta):
    with pytest.raises(ValueError, match="beta"):
        al.optimal_log_policy(REF, REWARD, beta)
    with pytest.raises(ValueError, match="beta"):
        al.dpo_loss(t64([0.0]), t64([0.0]), t64([0.0]), t64([0.0]), beta)
    with pytest.raises(ValueError, match="beta"):
        al.kl_regularised_advantages(REWARD, REF, REF, beta)


def test_mismatched_chosen_and_rejected_shapes_are_rejected():
    with pytest.raises(ValueError, match="shapes must match"):
        al.dpo_loss(t64([0.0, 1.0]), t64([0.0]), t64([0.0, 1.0]), t64([0.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match="shapes must match"):
        al.bradley_terry_loss(t64([0.0, 1.0]), t64([0.0]))
    with pytest.raises(ValueError, match="shapes must match"):
        al.preference_counts(torch.tensor([0, 1]), torch.tensor([1]), 3)


def test_empty_preferences_and_groups_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        al.bradley_terry_loss(t64([]), t64([]))
    with pytest.raises(ValueError, match="empty group"):
        al.group_advantages(torch.zeros(3, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 responses"):
        al.group_advantages(torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty group"):
        al.grpo_loss(*(torch.zeros(2, 0, dtype=torch.float64) for _ in range(4)), beta=0.1)


def test_bad_response_indices_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="0..2"):
        al.preference_counts(torch.tensor([0, 3]), torch.tensor([1, 1]), 3)
    with pytest.raises(TypeError, match="integer"):
        al.preference_counts(t64([0.0]), t64([1.0]), 3)
    with pytest.raises(ValueError, match="weights must have shape"):
        al.pairwise_loss(REWARD, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 responses"):
        al.TabularPolicy(torch.zeros(1))
    with pytest.raises(ValueError, match="last dimension 3"):
        al.MLPPolicy(3, 4)(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="too many"):
        al.expected_group_advantage(torch.zeros(10, dtype=torch.float64).log_softmax(-1),
                                    torch.zeros(10, dtype=torch.float64), 8)


def test_newton_failure_is_reported():
    with pytest.raises(RuntimeError, match="did not reach a GRPO fixed point"):
        al.grpo_fixed_point(REF, REWARD, 0.5, 3, True, max_iter=1)


def test_clip_and_logp_old_go_together():
    with pytest.raises(ValueError, match="needs logp_old"):
        al.policy_gradient_loss(t64([0.0]), t64([1.0]), clip=0.2)
    with pytest.raises(ValueError, match="only used with clip"):
        al.policy_gradient_loss(t64([0.0]), t64([1.0]), logp_old=t64([0.0]))
    with pytest.raises(ValueError, match="clip"):
        al.policy_gradient_loss(t64([0.0]), t64([1.0]), t64([0.0]), clip=0.0)


# ------------------------------------------------------------------------------------------ IPO

def test_strict_preferences_and_their_pair_weights():
    reward = t64([0.0, 2.0, 1.0, 1.0])
    P = al.strict_preferences(reward)
    assert torch.equal(P + P.T, torch.ones(4, 4, dtype=torch.float64))
    assert P[1, 0] == 1 and P[0, 1] == 0 and P[2, 3] == 0.5
    ref_logp = torch.log_softmax(t64([0.3, -0.2, 0.1, 0.0]), -1)
    W = al.preference_weights(ref_logp, reward, deterministic=True)
    assert float(W.sum()) == pytest.approx(1.0)
    assert float(W[0, 1]) == 0.0                       # the worse reply is never chosen


def test_ipo_loss_by_hand():
    lc, lr, rc, rr = t64([-1.0, -0.5]), t64([-2.0, -0.7]), t64([-1.2, -0.6]), t64([-1.5, -0.9])
    tau = 0.25
    margin = (lc - rc) - (lr - rr)
    expected = float(((margin - 2.0) ** 2).mean())
    assert float(al.ipo_loss(lc, lr, rc, rr, tau)) == pytest.approx(expected)


def test_pairwise_ipo_loss_on_counts_equals_the_sample_loss():
    ref_logp = torch.log_softmax(t64([0.5, 0.0, -0.5]), -1)
    logp = torch.log_softmax(t64([0.1, 0.4, -0.2]), -1)
    chosen, rejected = torch.tensor([0, 1, 2, 1, 1]), torch.tensor([1, 2, 0, 0, 2])
    W = al.preference_counts(chosen, rejected, 3)
    sample = al.ipo_loss(logp[chosen], logp[rejected], ref_logp[chosen], ref_logp[rejected], 0.5)
    assert float(al.pairwise_ipo_loss(logp, ref_logp, W, 0.5)) == pytest.approx(float(sample))


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_population_ipo_gradient_vanishes_exactly_at_the_closed_form(deterministic, tau):
    ref_logp = torch.log_softmax(t64([1.0, 0.6, 0.2, -0.2, -0.6]), -1)
    reward = t64([0.0, 1.0, 2.5, 3.0, 1.5])
    W = al.preference_weights(ref_logp, reward, deterministic=deterministic)
    P = (al.strict_preferences(reward) if deterministic
         else torch.sigmoid(reward[:, None] - reward[None, :]))
    opt = al.ipo_optimal_log_policy(ref_logp, P, tau).requires_grad_(True)
    grad, = torch.autograd.grad(al.pairwise_ipo_loss(opt, ref_logp, W, tau), opt)
    assert float(grad.abs().max()) < 1e-12
    off = (opt.detach() + 0.05 * t64([1.0, -1.0, 0.0, 0.0, 0.0])).requires_grad_(True)
    grad_off, = torch.autograd.grad(al.pairwise_ipo_loss(off, ref_logp, W, tau), off)
    assert float(grad_off.abs().max()) > 1e-3


def test_population_dpo_under_certain_preferences_has_no_stationary_point():
    ref_logp = torch.log_softmax(t64([1.0, 0.6, 0.2]), -1)
    W = al.preference_weights(ref_logp, t64([0.0, 1.0, 2.0]), deterministic=True)
    for gap in [1.0, 5.0, 20.0]:                      # policies ever closer to the best reply
        logp = (ref_logp + gap * t64([0.0, 1.0, 2.0])).requires_grad_(True)
        grad, = torch.autograd.grad(al.pairwise_dpo_loss(logp, ref_logp, W, 1.0), logp)
        assert float(grad[2]) < 0                     # raising the best reply still pays


def test_ipo_rejects_bad_input():
    ref_logp = torch.log_softmax(t64([0.5, 0.0, -0.5]), -1)
    W = al.preference_weights(ref_logp, t64([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="tau"):
        al.pairwise_ipo_loss(ref_logp, ref_logp, W, 0.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        al.pairwise_ipo_loss(ref_logp, ref_logp, W[:2], 1.0)
    with pytest.raises(ValueError, match="at least one"):
        al.ipo_loss(t64([]), t64([]), t64([]), t64([]), 1.0)
    with pytest.raises(ValueError, match="prefer must have shape"):
        al.ipo_optimal_log_policy(ref_logp, torch.ones(2, 2, dtype=torch.float64), 1.0)


def test_fit_feature_reward_recovers_a_linear_reward():
    g = gen(0)
    phi = torch.randn(50, 3, generator=g, dtype=torch.float64)
    w = t64([1.0, -0.5, 0.25])
    ref_logp = torch.full((50,), -math.log(50), dtype=torch.float64)
    chosen, rejected = al.sample_preferences(ref_logp, phi @ w, 2000, generator=g)
    proxy = al.fit_feature_reward(phi, chosen, rejected, steps=200, lr=0.1)
    assert torch.corrcoef(torch.stack([proxy, phi @ w]))[0, 1] > 0.99
    with pytest.raises(ValueError, match="response indices"):
        al.fit_feature_reward(phi, torch.tensor([0, 60]), torch.tensor([1, 2]))


# ------------------------------------------------------------------------- token-level RLHF

def test_gae_by_hand_and_its_two_limits():
    rewards, values = t64([[0.0, 0.0, 1.0]]), t64([[0.2, 0.5, 0.7]])
    # deltas: 0 + 0.5 - 0.2, 0 + 0.7 - 0.5, 1 + 0 - 0.7
    d = [0.3, 0.2, 0.3]
    lam = 0.5
    expected = [d[0] + lam * d[1] + lam ** 2 * d[2], d[1] + lam * d[2], d[2]]
    assert torch.allclose(al.gae(rewards, values, lam), t64([expected]))
    assert torch.allclose(al.gae(rewards, values, 0.0), t64([d]))          # one-step TD
    mc = rewards.flip(-1).cumsum(-1).flip(-1) - values                     # lambda = 1: return - V
    assert torch.allclose(al.gae(rewards, values, 1.0), mc)


def test_sequence_policy_scores_what_it_samples():
    torch.manual_seed(0)
    policy = al.SequencePolicy(3, 8)
    tokens = policy.sample(4000, 1, generator=gen(0))                      # first tokens only
    freq = torch.bincount(tokens[:, 0], minlength=3).double() / 4000
    probs = torch.stack([policy(torch.full((1, 1), k)).exp()[0, 0] for k in range(3)]).double()
    assert torch.allclose(freq, probs.detach(), atol=0.03)
    seqs = policy.sample(5, 6, generator=gen(1))
    assert policy(seqs).shape == (5, 6) and bool((policy(seqs) <= 0).all())


def test_counting_reward():
    tokens = torch.tensor([[0, 1, 2, 3], [3, 0, 0, 1], [2, 2, 2, 2]])
    assert torch.allclose(al.counting_reward(tokens, 4), torch.tensor([1.0, 2 / 3, 0.0]))


def test_train_sequence_rl_improves_the_reward_and_rejects_bad_input():
    torch.manual_seed(0)
    policy = al.SequencePolicy(4, 16)
    reference = al.SequencePolicy(4, 16).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    reward = lambda t: al.counting_reward(t, 4)
    history = al.train_sequence_rl(policy, reference, reward, method="rloo", length=4, batch=32,
                                   updates=15, lr=1e-2, generator=gen(0))
    assert history["reward"][-1] > history["reward"][0] + 0.2
    with pytest.raises(ValueError, match="critic"):
        al.train_sequence_rl(policy, reference, reward, method="ppo", updates=1)
    with pytest.raises(ValueError, match="method"):
        al.train_sequence_rl(policy, reference, reward, method="dpo", updates=1)


def test_population_grpo_functions_reject_bad_input():
    ref_logp = torch.log_softmax(t64([0.5, 0.0, -0.5]), -1)
    with pytest.raises(TypeError):
        al.population_grpo_loss(ref_logp, ref_logp, [0.0, 1.0, 2.0], 0.1, 4)
    with pytest.raises(ValueError, match="shapes must match"):
        al.population_grpo_loss(ref_logp, ref_logp, t64([0.0, 1.0]), 0.1, 4)
    with pytest.raises(TypeError):
        al.grpo_fixed_point(ref_logp, [0.0, 1.0, 2.0], 0.1, 4)
    with pytest.raises(ValueError, match="group_size"):
        al.grpo_fixed_point(ref_logp, t64([0.0, 1.0, 2.0]), 0.1, 1)


def test_with_a_binary_reward_correct_replies_gain_probability_at_the_grpo_fixed_point():
    ref_logp = torch.log_softmax(t64([0.8, 0.3, 0.0, -0.4]), -1)
    reward = t64([0.0, 1.0, 0.0, 1.0])                     # replies 1 and 3 are correct
    a = al.expected_group_advantage(ref_logp, reward, 4)
    assert bool((a[reward == 1] >= 0).all()) and bool((a[reward == 0] <= 0).all())
    policy = al.TabularPolicy(ref_logp)
    al.fit(policy, lambda m: al.population_grpo_loss(m(), ref_logp, reward, 1.0, 4), steps=300,
           lr=0.05)
    fixed = al.grpo_fixed_point(ref_logp, reward, 1.0, 4, start=policy().detach())
    gain = fixed.exp() - ref_logp.exp()
    assert bool((gain[reward == 1] > 0).all()) and bool((gain[reward == 0] < 0).all())


# ------------------------------------------------------- verifiable rewards (R1-Zero in miniature)

def test_rule_reward_on_hand_written_cases():
    prompts = al.encode(["3+4=", "9+9=", "3+4=", "2+5=", "2+5=", "2+5=", "5+5=", "1+2=", "0+0="])
    responses = al.encode(["7.", "18.", "8.", "07.", "7777", ".", "100.", "+3.", "0.81"], 4)
    assert al.decode(responses)[0] == "7." and al.decode(responses)[8] == "0."
    fmt = [True, True, True, True, False, False, False, False, True]
    right = [True, True, False, False, False, False, False, False, True]
    assert al.format_ok(responses).tolist() == fmt
    assert al.answer_correct(prompts, responses).tolist() == right
    expected = [1.5, 1.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 1.5]
    assert torch.allclose(al.rule_reward(prompts, responses).double(), t64(expected))
    assert torch.allclose(al.rule_reward(prompts, responses, format_weight=0.0).double(),
                          t64([float(r) for r in right]))


def test_end_mask_and_lengths():
    tokens = al.encode(["7.", "18.", "1234"], 4)
    assert al.end_mask(tokens).tolist() == [[True, True, False, False], [True, True, True, False],
                                           [True] * 4]
    assert al.response_lengths(tokens).tolist() == [2, 3, 4]


def test_masking_after_end_and_prompt_conditioning():
    torch.manual_seed(0)
    policy = al.PromptPolicy(hidden=8, numeric=10)
    prompt = al.encode(["3+4="])
    short = al.encode(["7."])
    padded = torch.cat([short, torch.tensor([[5, al.PLUS, 9]])], dim=1)   # junk after END
    assert torch.allclose(al.sequence_logp(policy, prompt, padded), al.sequence_logp(policy, prompt, short))
    other = al.encode(["5+1="])
    assert not torch.allclose(policy(padded, prompt), policy(padded, other))      # reads the prompt
    y = policy.respond(al.addition_prompts(), 4, generator=gen(0))
    after = ~al.end_mask(y) & (torch.arange(4) > 0)
    assert bool((y[after] == al.END).all())                                       # padded with END
    dist = al.answer_distribution(policy, al.encode(["3+4=", "9+9="]))
    assert dist.shape == (2, 20) and torch.allclose(dist.sum(-1), torch.ones(2))


def test_sampled_accuracy_matches_the_exact_one():
    torch.manual_seed(1)
    policy = al.PromptPolicy(hidden=8, numeric=10)
    prompts = al.encode(["3+4=", "1+1="])
    al.supervised_warmup(policy, prompts, al.correct_answers(prompts), steps=30, lr=3e-2)
    exact = al.expected_accuracy(policy, prompts)
    x = prompts.repeat(2000, 1)
    sampled = float(al.answer_correct(x, policy.respond(x, 4, generator=gen(2))).double().mean())
    assert 0.2 < exact < 0.999 and abs(sampled - exact) < 0.04


def test_masked_grpo_loss_ignores_padding_and_matches_the_bandit_loss():
    logp = torch.log(t64([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]])).requires_grad_(True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = t64([1.0, -1.0])
    loss = al.masked_grpo_loss(logp, logp.detach(), logp.detach() - 0.1, adv, mask, 0.1)
    changed = logp.detach().clone()
    changed[0, 2], changed[1, 1:] = -5.0, -7.0                         # only padding differs
    again = al.masked_grpo_loss(changed, changed, changed - 0.1, adv, mask, 0.1)
    assert torch.allclose(loss, again)
    # one token per response: the bandit GRPO loss with the same advantages and k3
    one = torch.ones(2, 1, dtype=torch.bool)
    lp = logp[:, :1]
    bandit = al.policy_gradient_loss(lp, adv[:, None], lp.detach(), 0.2) + 0.1 * kl.k3(-0.1 + 0 * lp).mean()
    assert torch.allclose(al.masked_grpo_loss(lp, lp.detach(), lp.detach() - 0.1, adv, one, 0.1), bandit)


def test_grpo_on_the_rule_reward_raises_accuracy():
    torch.manual_seed(0)
    policy = al.PromptPolicy(hidden=16, numeric=10)
    prompts = al.encode(["3+4=", "1+1=", "2+6=", "5+4="])
    al.supervised_warmup(policy, prompts[:2], al.correct_answers(prompts[:2]), steps=20, lr=2e-2)
    reference = al.PromptPolicy(hidden=16, numeric=10).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    before = al.expected_accuracy(policy, prompts)
    history = al.train_r1zero(policy, reference, prompts, al.rule_reward, group_size=8,
                              prompts_per_update=4, updates=25, lr=1e-2, generator=gen(0))
    assert al.expected_accuracy(policy, prompts) > before + 0.1
    assert set(history) == {"reward", "correct", "format", "length", "kl"}


def test_reward_model_features_and_fit():
    prompts = al.encode(["3+4=", "3+4=", "1+1=", "1+1="])
    responses = al.encode(["7.", "8.", "2.", "3."], 4)
    phi = al.answer_features(prompts, responses)
    assert phi.shape == (4, 20 + 13 * 4) and float(phi[0].sum()) == 4.0     # a, b, two tokens
    labels = al.answer_correct(prompts, responses).long()
    model = al.fit_reward_classifier(phi, labels, steps=200, lr=0.1)
    score = model(phi).squeeze(-1)
    assert bool((score[labels == 1] > score[labels == 0].max()).all())


def test_r1zero_functions_reject_bad_input():
    with pytest.raises(ValueError, match="symbols"):
        al.encode(["3*4="])
    with pytest.raises(TypeError):
        al.encode("3+4=")
    with pytest.raises(ValueError, match="a\\+b="):
        al.correct_answers(al.encode(["34+5"]))
    with pytest.raises(TypeError, match="integer"):
        al.format_ok(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one response"):
        al.answer_correct(al.encode(["3+4="]), al.encode(["7.", "8."], 4))
    with pytest.raises(ValueError, match="numeric"):
        al.PromptPolicy(numeric=1)
    policy = al.PromptPolicy(hidden=4)
    with pytest.raises(ValueError, match="one prompt per response"):
        policy(al.encode(["7.", "8."], 4), al.encode(["3+4="]))
    with pytest.raises(TypeError, match="PromptPolicy"):
        al.train_r1zero(al.SequencePolicy(13), policy, al.addition_prompts(), al.rule_reward)
    with pytest.raises(TypeError, match="callable"):
        al.train_r1zero(policy, policy, al.addition_prompts(), None)
    logp = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="bool"):
        al.masked_grpo_loss(logp, logp, logp, t64([1.0, -1.0]), torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="one advantage"):
        al.masked_grpo_loss(logp, logp, logp, t64([1.0]), torch.ones(2, 3, dtype=torch.bool), 0.1)
    with pytest.raises(ValueError, match="0 or 1"):
        al.fit_reward_classifier(torch.zeros(3, 2), torch.tensor([0, 2, 1]))


def test_check_rule_reward_passes_a_right_answer_and_fails_a_wrong_one():
    def right(prompt, response):
        a, b = int(prompt[0]), int(prompt[2])
        ok = response.endswith(".") and 1 <= len(response) - 1 <= 2 and response[:-1].isdigit()
        return (1.0 if ok and response[:-1] == str(a + b) else 0.0) + 0.5 * ok

    def lenient(prompt, response):                        # forgets the limit of two digits
        a, b = int(prompt[0]), int(prompt[2])
        ok = response.endswith(".") and len(response) > 1 and response[:-1].isdigit()
        return (1.0 if ok and response[:-1] == str(a + b) else 0.0) + 0.5 * ok

    assert al.check_rule_reward(right)
    assert not al.check_rule_reward(lenient)

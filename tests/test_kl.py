"""mlbook.kl: the k1, k2, k3 Monte-Carlo estimators of KL[q, p] and the Gaussian worked example."""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from mlbook import kl
from helpers import gen, t64

MUS = [0.1, 0.5, 1.0, 2.0]


# ------------------------------------------------------------------ the estimators

def test_k1_is_minus_log_ratio():
    assert torch.equal(kl.k1(t64([0.5, -1.0, 0.0])), t64([-0.5, 1.0, -0.0]))


def test_k2_is_half_the_squared_log_ratio():
    assert torch.equal(kl.k2(t64([0.5, -1.0, 3.0])), t64([0.125, 0.5, 4.5]))


def test_k3_is_r_minus_one_minus_log_r():
    lr = np.array([-3.0, -1.0, -0.2, 0.5, 2.0])
    np.testing.assert_allclose(kl.k3(torch.from_numpy(lr)).numpy(), np.exp(lr) - 1 - lr, rtol=1e-14)


def test_k3_at_zero_log_ratio_is_exactly_zero():
    assert kl.k3(t64([0.0, -0.0])).tolist() == [0.0, 0.0]
    assert kl.k3(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("x", [1e-12, -1e-12, 3e-10, -3e-10, 1e-8, -1e-8, 1e-6, -1e-6])
def test_k3_is_accurate_for_tiny_log_ratios(x):
    # Naive exp(x) - 1 - x loses every significant digit here (and can go negative).
    series = x * x / 2 + x ** 3 / 6 + x ** 4 / 24
    got = float(kl.k3(t64([x]))[0])
    assert got > 0
    assert got == pytest.approx(series, rel=2e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_k3_is_never_negative(dtype):
    tiny = torch.cat([torch.logspace(-30, 0, 301, dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)])
    lr = torch.cat([tiny, -tiny, torch.linspace(-30, 30, 601, dtype=torch.float64)]).to(dtype)
    assert (kl.k3(lr) >= 0).all()


def test_k2_and_k3_are_not_negative_but_k1_can_be():
    lr = torch.linspace(-3, 3, 61, dtype=torch.float64)
    assert (kl.k2(lr) >= 0).all() and (kl.k3(lr) >= 0).all()
    assert (kl.k1(lr) < 0).any()


def test_estimators_table_maps_names_to_functions():
    assert kl.ESTIMATORS == {"k1": kl.k1, "k2": kl.k2, "k3": kl.k3}


# ------------------------------------------------------------------ kl_from_log_probs

@pytest.mark.parametrize("estimator", ["k1", "k3"])                   # the unbiased ones
def test_kl_from_log_probs_of_two_gaussians_matches_torch(estimator):
    q, p = Normal(t64(0.3), t64(1.2)), Normal(t64(-0.2), t64(0.9))
    x = 0.3 + 1.2 * torch.randn(200_000, generator=gen(1), dtype=torch.float64)
    logp, logq = p.log_prob(x), q.log_prob(x)
    est = kl.kl_from_log_probs(logp, logq, estimator)
    per_sample = kl.ESTIMATORS[estimator](logp - logq)
    se = float(per_sample.std()) / math.sqrt(len(x))
    assert est.ndim == 0
    assert abs(float(est) - float(kl_divergence(q, p))) < 4 * se


def test_kl_from_log_probs_of_two_bivariate_gaussians_matches_torch():
    q = MultivariateNormal(t64([0.0, 1.0]), t64([[1.0, 0.3], [0.3, 0.5]]))
    p = MultivariateNormal(t64([0.5, 0.5]), t64([[1.5, 0.0], [0.0, 1.0]]))
    z = torch.randn(100_000, 2, generator=gen(3), dtype=torch.float64)
    x = q.loc + z @ q.scale_tril.T
    log_r = p.log_prob(x) - q.log_prob(x)
    est = kl.kl_from_log_probs(p.log_prob(x), q.log_prob(x))           # default: k3
    se = float(kl.k3(log_r).std()) / math.sqrt(len(x))
    assert abs(float(est) - float(kl_divergence(q, p))) < 4 * se


def test_kl_from_log_probs_is_the_mean_of_the_estimator():
    logp, logq = t64([-1.0, -2.0, -0.5]), t64([-1.5, -1.0, -0.5])
    d = np.array([0.5, -1.0, 0.0])
    assert float(kl.kl_from_log_probs(logp, logq, "k2")) == pytest.approx(np.mean(d ** 2 / 2))
    assert float(kl.kl_from_log_probs(logp, logq, "k1")) == pytest.approx(np.mean(-d))


# ------------------------------------------------------------------ Gaussian worked example

@pytest.mark.parametrize("mu", MUS)
def test_gaussian_log_ratio_matches_torch_densities(mu):
    x = torch.randn(100, generator=gen(), dtype=torch.float64)
    expected = Normal(t64(mu), t64(1.0)).log_prob(x) - Normal(t64(0.0), t64(1.0)).log_prob(x)
    torch.testing.assert_close(kl.gaussian_log_ratio(x, mu), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mu", MUS + [-1.5])
def test_gaussian_kl_matches_torch(mu):
    expected = float(kl_divergence(Normal(t64(0.0), t64(1.0)), Normal(t64(mu), t64(1.0))))
    assert kl.gaussian_kl(mu) == pytest.approx(expected, rel=1e-12)


def _quadrature_stats(mu):
    """(bias / KL, stdev / KL) of each estimator under x ~ N(0, 1), by Gauss-Hermite quadrature."""
    nodes, weights = hermegauss(200)                        # weight exp(-x^2 / 2)
    weights = weights / math.sqrt(2 * math.pi)              # now an expectation under N(0, 1)
    log_r = mu * nodes - mu * mu / 2
    values = {"k1": -log_r, "k2": log_r ** 2 / 2, "k3": np.expm1(log_r) - log_r}
    true = mu * mu / 2
    out = {}
    for name, v in values.items():
        mean = np.sum(weights * v)
        var = np.sum(weights * (v - mean) ** 2)
        out[name] = ((mean - true) / true, math.sqrt(var) / true)
    return out


def test_quadrature_itself_integrates_the_normal_moments():
    nodes, weights = hermegauss(200)
    weights = weights / math.sqrt(2 * math.pi)
    assert np.sum(weights) == pytest.approx(1.0, rel=1e-12)
    assert np.sum(weights * nodes ** 4) == pytest.approx(3.0, rel=1e-12)
    assert np.sum(weights * np.exp(4 * nodes)) == pytest.approx(math.exp(8), rel=1e-10)


@pytest.mark.parametrize("mu", MUS + [-1.0])
def test_relative_stats_closed_forms_match_quadrature(mu):
    closed = kl.gaussian_relative_stats(mu)
    numeric = _quadrature_stats(mu)
    assert set(closed) == {"k1", "k2", "k3"}
    for name in closed:
        bias, std = closed[name]
        assert bias == pytest.approx(numeric[name][0], abs=1e-9), name
        assert std == pytest.approx(numeric[name][1], rel=1e-8), name


@pytest.mark.parametrize("mu", [0.5, 1.0])
def test_monte_carlo_stats_agree_with_closed_forms_within_4_standard_errors(mu):
    closed = kl.gaussian_relative_stats(mu)
    stats = kl.monte_carlo_stats(mu, 100_000, generator=gen(5), device="cpu")
    assert [s.name for s in stats] == ["k1", "k2", "k3"]
    for s in stats:
        assert s.mu == mu and s.n == 100_000
        bias, std = closed[s.name]
        assert abs(s.rel_bias - bias) < 4 * s.rel_bias_se, s
        assert abs(s.rel_std - std) < 4 * s.rel_std_se, s


def test_monte_carlo_stats_are_computed_from_the_seeded_draws():
    mu, n = 0.7, 1000
    x = torch.randn(n, generator=gen(9), dtype=torch.float64).numpy()
    log_r = mu * x - mu * mu / 2
    true = mu * mu / 2
    stats = {s.name: s for s in kl.monte_carlo_stats(mu, n, generator=gen(9), device="cpu")}
    for name, v in {"k1": -log_r, "k2": log_r ** 2 / 2, "k3": np.exp(log_r) - 1 - log_r}.items():
        s = stats[name]
        assert s.rel_bias == pytest.approx((v.mean() - true) / true, rel=1e-9, abs=1e-12)
        assert s.rel_std == pytest.approx(v.std() / true, rel=1e-9)
        assert s.rel_bias_se == pytest.approx(v.std() / true / math.sqrt(n), rel=1e-9)
        c = v - v.mean()
        var_se = math.sqrt((np.mean(c ** 4) - np.mean(c ** 2) ** 2) / n)
        assert s.rel_std_se == pytest.approx(var_se / (2 * v.std()) / true, rel=1e-9)


def test_sampling_distribution_shapes_and_values():
    mu, n, repeats = 0.8, 10, 7
    out = kl.sampling_distribution(mu, n, repeats, generator=gen(2), device="cpu")
    assert set(out) == {"k1", "k2", "k3"}
    assert all(v.shape == (repeats,) and v.dtype == torch.float64 for v in out.values())
    x = torch.randn(repeats, n, generator=gen(2), dtype=torch.float64)
    torch.testing.assert_close(out["k1"], (-(mu * x - mu * mu / 2)).mean(1))


def test_sampling_distribution_of_k1_is_centred_on_the_true_kl():
    mu, n, repeats = 1.0, 20, 5000
    est = kl.sampling_distribution(mu, n, repeats, generator=gen(3), device="cpu")["k1"]
    se = mu / math.sqrt(n) / math.sqrt(repeats)                  # k1 has stdev |mu| per sample
    assert abs(float(est.mean()) - mu * mu / 2) < 4 * se
    assert float(est.std()) == pytest.approx(mu / math.sqrt(n), rel=0.05)


# ------------------------------------------------------------------ bad inputs

def test_zero_mu_is_rejected_where_relative_errors_are_undefined():
    with pytest.raises(ValueError, match="mu must be non-zero"):
        kl.gaussian_relative_stats(0.0)
    with pytest.raises(ValueError, match="mu must be non-zero"):
        kl.monte_carlo_stats(0, 100)


@pytest.mark.parametrize("mu, error", [("1", TypeError), (float("nan"), ValueError), (True, TypeError)])
def test_mu_must_be_a_finite_real(mu, error):
    with pytest.raises(error, match="mu"):
        kl.gaussian_kl(mu)


def test_unknown_estimator_lists_the_options():
    with pytest.raises(ValueError, match="estimator must be one of 'k1', 'k2', 'k3'; got 'k4'"):
        kl.kl_from_log_probs(t64([0.0]), t64([0.0]), "k4")


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(2,\)"):
        kl.kl_from_log_probs(torch.zeros(3), torch.zeros(2))


@pytest.mark.parametrize("fn", [kl.k1, kl.k2, kl.k3])
def test_estimators_reject_integer_tensors_and_non_tensors(fn):
    with pytest.raises(TypeError, match="log_ratio must be a floating-point tensor"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="log_ratio must be a torch.Tensor"):
        fn([0.1, 0.2])


def test_kl_from_log_probs_rejects_integer_tensors():
    with pytest.raises(TypeError, match="logp must be a floating-point tensor"):
        kl.kl_from_log_probs(torch.tensor([1, 2]), torch.zeros(2))


@pytest.mark.parametrize("call, match", [
    (lambda: kl.monte_carlo_stats(1.0, 1), "n must be >= 2"),
    (lambda: kl.sampling_distribution(1.0, 0, 5), "n must be >= 1"),
    (lambda: kl.sampling_distribution(1.0, 5, 0), "repeats must be >= 1"),
    (lambda: kl.gaussian_log_ratio(torch.tensor([1, 2]), 1.0), "x must be a floating-point tensor"),
])
def test_sample_counts_and_points_are_checked(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ----------------------------------------------------- heavy tails and the estimators as losses

def test_scale_log_ratio_matches_torch_distributions():
    from torch.distributions import Normal

    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    want = Normal(0.0, 2.0).log_prob(x) - Normal(0.0, 1.0).log_prob(x)
    assert torch.allclose(kl.scale_log_ratio(x, 4.0), want.double(), atol=1e-12)


def test_k3_tail_index_and_its_bad_input():
    assert kl.k3_tail_index(4.0) == pytest.approx(4 / 3)
    assert kl.k3_tail_index(2.0) == pytest.approx(2.0)          # the edge of finite variance
    with pytest.raises(ValueError, match="s2 must be > 1"):
        kl.k3_tail_index(1.0)


def test_hill_estimator_recovers_a_pareto_index():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pareto = u.pow(-1 / 1.5)                                      # P(X > x) = x^-1.5
    assert kl.hill_estimator(pareto, 2000) == pytest.approx(1.5, abs=4 * 1.5 / 2000**0.5)


def test_hill_estimator_refuses_bad_input():
    with pytest.raises(ValueError, match="k must be smaller"):
        kl.hill_estimator(torch.ones(5, dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="positive"):
        kl.hill_estimator(-torch.arange(1.0, 10.0, dtype=torch.float64), 3)
    with pytest.raises(TypeError):
        kl.hill_estimator(torch.arange(10), 3)


def test_loss_gradients_are_zero_and_the_two_kl_gradients():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, generator=g, dtype=torch.float64)
    ref_logp = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    (forward,) = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta)
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    (reverse,) = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta)
    assert torch.allclose(kl.loss_gradient(logits, ref_logp, "k1"), torch.zeros(6, dtype=torch.float64),
                          atol=1e-14)
    assert torch.allclose(kl.loss_gradient(logits, ref_logp, "k2"), forward, atol=1e-14)
    assert torch.allclose(kl.loss_gradient(logits, ref_logp, "k3"), reverse, atol=1e-14)
    assert not torch.allclose(forward, reverse, atol=1e-3)         # the two directions differ here


def test_loss_gradient_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        kl.loss_gradient(torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), "k3")
    with pytest.raises(ValueError, match="estimator"):
        kl.loss_gradient(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), "k4")

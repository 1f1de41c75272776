"""mlbook.inverse: exact posteriors of a Gaussian-mixture prior, DPS and replacement."""

import math

import pytest
import torch

from mlbook import data, diffusion, inverse, sampling
from mlbook.diffusion import VP, MixtureScore

MIX = data.GaussianMixture([[-1.5, -1.0], [0.5, 1.5], [1.0, -1.5]], [0.4, 0.5, 0.3], [0.3, 0.3, 0.4])
A, Y, R = [[0.6, 0.8]], [0.7], 0.3


def log_lik(x):
    a = torch.tensor(A, dtype=torch.float64)
    return -((x @ a.T)[:, 0] - Y[0]) ** 2 / (2 * R * R)


def test_gaussian_posterior_matches_the_precision_form():
    mean, cov = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([[1.0, 0.3], [0.3, 0.5]],
                                                                               dtype=torch.float64)
    a = torch.tensor(A, dtype=torch.float64)
    prec = torch.linalg.inv(cov) + a.T @ a / R**2
    want_cov = torch.linalg.inv(prec)
    want_mean = want_cov @ (torch.linalg.solve(cov, mean) + a.T[:, 0] * Y[0] / R**2)
    got_mean, got_cov = inverse.gaussian_posterior(mean, cov, A, Y, R)
    assert torch.allclose(got_mean, want_mean, atol=1e-12)
    assert torch.allclose(got_cov, want_cov, atol=1e-12)


def test_mixture_posterior_is_prior_times_likelihood():
    post = inverse.mixture_posterior(MIX, A, Y, R)
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    gap = post.log_prob(x) - MIX.log_prob(x) - log_lik(x)         # log p(y), the same everywhere
    assert float(gap.std()) < 1e-9
    assert math.isclose(float(post.weights.sum()), 1.0)


def test_posterior_score_equals_exact_likelihood_guidance():
    vp = VP()
    exact = inverse.PosteriorScore(inverse.mixture_posterior(MIX, A, Y, R), vp)
    guided = inverse.likelihood_score(MixtureScore(MIX, vp), A, Y, R)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for t in (0.01, 0.2, 0.6, 1.0):
        tt = torch.full((64,), t, dtype=torch.float64)
        assert torch.allclose(exact(x, tt), guided(x, tt), atol=1e-8), t


def test_posterior_score_at_time_zero_is_the_gradient_of_the_posterior():
    vp = VP(t_min=0.0)
    post = inverse.mixture_posterior(MIX, A, Y, R)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_()
    want = torch.autograd.grad(post.log_prob(x).sum(), x)[0]
    got = inverse.PosteriorScore(post, vp)(x.detach(), torch.zeros(32, dtype=torch.float64))
    assert torch.allclose(got, want, atol=1e-8)


def test_dps_on_a_gaussian_prior_matches_its_formula():
    vp, s = VP(), 0.7
    prior = MixtureScore(data.GaussianMixture([[0.0, 0.0]], s), vp)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.full((16,), 0.4, dtype=torch.float64)
    a, sig = float(vp.alpha(t[0])), float(vp.sigma(t[0]))
    shrink = a * s * s / (a * a * s * s + sig * sig)                 # x0_hat = shrink * x
    mat = torch.tensor(A, dtype=torch.float64)
    want = prior(x, t) - 2.0 * shrink * ((shrink * x) @ mat.T - Y[0]) @ mat / R**2
    got = inverse.dps_score(prior, vp, A, Y, R, zeta=2.0)(x, t)
    assert torch.allclose(got, want, atol=1e-10)
    as_callable = inverse.dps_score(prior, vp, lambda x0: x0 @ mat.T, Y, R, zeta=2.0)(x, t)
    assert torch.allclose(as_callable, want, atol=1e-10)
    assert torch.allclose(inverse.dps_score(prior, vp, A, Y, R, zeta=0.0)(x, t), prior(x, t))


def test_replacement_keeps_the_known_coordinates():
    vp = VP()
    x = vp.prior(50, 2, generator=torch.Generator().manual_seed(4)).double()
    known = torch.zeros(50, 2, dtype=torch.float64)
    known[:, 0] = 1.0
    mask = torch.zeros(50, 2, dtype=torch.bool)
    mask[:, 0] = True
    out = inverse.replace_known(sampling.sample_ancestral, MixtureScore(MIX, vp), vp, x, vp.time_grid(20),
                                known, mask, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out[:, 0], known[:, 0])
    assert bool(torch.isfinite(out).all()) and float(out[:, 1].std()) > 0.1


def test_resampling_brings_replacement_closer_to_the_exact_conditional():
    # x ~ N(0, [[1, .95], [.95, 1]]), x_0 = 1 known: x_1 | x_0 = 1 is N(0.95, 0.0975)
    vp = VP()
    prior = inverse.FullGaussianMixture([[0.0, 0.0]], [[[1.0, 0.95], [0.95, 1.0]]], [1.0])
    score, n = inverse.PosteriorScore(prior, vp), 2000
    known = torch.zeros(n, 2, dtype=torch.float64)
    known[:, 0] = 1.0
    mask = torch.zeros(n, 2, dtype=torch.bool)
    mask[:, 0] = True
    errors = {}
    for jumps in (1, 10):
        x = vp.prior(n, 2, generator=torch.Generator().manual_seed(4)).double()
        out = inverse.replace_known(sampling.sample_ancestral, score, vp, x, vp.time_grid(20), known,
                                    mask, jumps=jumps, generator=torch.Generator().manual_seed(5))
        assert torch.equal(out[:, 0], known[:, 0])
        errors[jumps] = abs(float(out[:, 1].mean()) - 0.95)
    assert errors[1] > 0.2                      # plain replacement misses the conditional mean
    assert errors[10] < 0.5 * errors[1]         # resampling recovers most of it


def test_one_jump_is_plain_replacement():
    vp = VP()
    x = vp.prior(8, 2, generator=torch.Generator().manual_seed(4)).double()
    known, mask = torch.ones(8, 2, dtype=torch.float64), torch.zeros(8, 2, dtype=torch.bool)
    mask[:, 0] = True
    runs = [inverse.replace_known(sampling.sample_ancestral, MixtureScore(MIX, vp), vp, x,
                                  vp.time_grid(5), known, mask, generator=torch.Generator().manual_seed(1),
                                  **kw) for kw in ({}, {"jumps": 1})]
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="jumps"):
        inverse.replace_known(sampling.sample_ancestral, MixtureScore(MIX, vp), vp, x,
                              vp.time_grid(5), known, mask, jumps=0)


def test_full_mixture_samples_have_the_right_moments():
    post = inverse.mixture_posterior(MIX, A, Y, R)
    x = post.sample(20000, generator=torch.Generator().manual_seed(6))
    mean = (post.weights[:, None] * post.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.03)


def test_checker_passes_a_right_answer_and_fails_a_wrong_one():
    assert inverse.check_gaussian_posterior(inverse.gaussian_posterior)

    def forgot_noise(mean, cov, A, y, r):                             # drops r^2 from the gram matrix
        gain = torch.linalg.solve(A @ cov @ A.T, A @ cov).T
        return mean + gain @ (y - A @ mean), cov - gain @ A @ cov

    assert not inverse.check_gaussian_posterior(forgot_noise)


def test_bad_input():
    with pytest.raises(ValueError, match="A must be a matrix"):
        inverse.mixture_posterior(MIX, [[1.0, 0.0, 0.0]], Y, R)
    with pytest.raises(ValueError, match="y must hold"):
        inverse.mixture_posterior(MIX, A, [1.0, 2.0], R)
    with pytest.raises(ValueError, match="noise_std"):
        inverse.gaussian_posterior([0.0, 0.0], torch.eye(2), A, Y, 0.0)
    with pytest.raises(TypeError, match="GaussianMixture"):
        inverse.mixture_posterior("not a prior", A, Y, R)
    with pytest.raises(TypeError, match="MixtureScore"):
        inverse.likelihood_score(lambda x, t: x, A, Y, R)
    with pytest.raises(ValueError, match="zeta"):
        inverse.dps_score(MixtureScore(MIX, VP()), VP(), A, Y, R, zeta=-1.0)
    with pytest.raises(ValueError, match="covs must have shape"):
        inverse.FullGaussianMixture([[0.0, 0.0]], torch.eye(2), [1.0])
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="boolean"):
        inverse.replace_known(sampling.sample_ancestral, MixtureScore(MIX, VP()), VP(), x, [1.0, 0.5],
                              x, torch.zeros(4, 2))

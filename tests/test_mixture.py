import itertools
import math

import pytest
import torch
from sklearn.base import clone

from mlbook import mixture


def _planted(n=600, d=12, seed=0):
    """Rows from a known two-component Bernoulli mixture."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor([[0.9] * (d // 2) + [0.1] * (d - d // 2),
                       [0.1] * (d // 2) + [0.9] * (d - d // 2)], dtype=torch.float64)
    z = torch.randint(2, (n,), generator=g)
    X = (torch.rand(n, d, generator=g, dtype=torch.float64) < mu[z]).double()
    return X, z, mu


def test_em_log_likelihood_never_decreases():
    X, _, _ = _planted()
    for seed in range(3):
        res = mixture.em(mixture.BernoulliFamily(), X, 4, max_iter=60, tol=0.0,
                         generator=torch.Generator().manual_seed(seed))
        steps = torch.diff(torch.tensor(res.history))
        assert bool((steps >= -1e-10).all()), steps.min()
        assert res.history[-1] > res.history[0] + 0.1        # and it does climb


def test_lower_bound_tight_at_e_step_and_below_elsewhere():
    X, _, _ = _planted()
    fam = mixture.BernoulliFamily()
    params = fam.init(X, 3, torch.Generator().manual_seed(1))
    logw = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    resp, log_px = mixture.e_step(fam, X, logw, params)
    assert torch.allclose(resp.sum(1), torch.ones(len(X), dtype=torch.float64))
    elbo = mixture.lower_bound(fam, X, resp, logw, params)
    assert abs(float(elbo) - float(log_px.mean())) < 1e-10
    other = torch.softmax(torch.randn(len(X), 3, generator=torch.Generator().manual_seed(2),
                                      dtype=torch.float64), 1)
    assert float(mixture.lower_bound(fam, X, other, logw, params)) < float(log_px.mean())


def test_e_step_is_stable_in_high_dimension():
    # 2000 pixels: every component density underflows in float64, log-sum-exp does not
    X = (torch.rand(5, 2000, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    fam = mixture.BernoulliFamily()
    params = fam.init(X, 3, torch.Generator().manual_seed(0))
    resp, log_px = mixture.e_step(fam, X, torch.log(torch.ones(3) / 3).double(), params)
    assert torch.isfinite(resp).all() and torch.isfinite(log_px).all()
    assert float(log_px.max()) < -700                      # exp would be 0


def test_recovers_planted_mixture():
    X, z, mu = _planted(n=2000)
    model = mixture.BernoulliMixture(2, random_state=0, device="cpu").fit(X)
    # match components to the truth up to relabelling
    err = min(float((model.means_[list(p)] - mu).abs().max())
              for p in itertools.permutations(range(2)))
    assert err < 0.05
    assert abs(float(model.weights_.min()) - 0.5) < 0.05
    assert model.converged_


def test_probabilities_sum_to_one_over_all_states():
    X, _, _ = _planted(d=8)
    model = mixture.BernoulliMixture(3, random_state=0, device="cpu").fit(X)
    states = torch.tensor(list(itertools.product([0, 1], repeat=8)), dtype=torch.float64)
    total = torch.logsumexp(model.score_samples(states), 0)
    assert abs(float(total)) < 1e-10


def test_one_component_is_independent_bernoulli():
    X, _, _ = _planted()
    model = mixture.BernoulliMixture(1, device="cpu").fit(X)
    p = X.mean(0).clamp(1e-3, 1 - 1e-3)
    direct = (X * p.log() + (1 - X) * (-p).log1p()).sum(1).mean()
    assert abs(model.score(X) - float(direct)) < 1e-10


def test_sklearn_conventions_and_sampling():
    X, _, _ = _planted()
    model = mixture.BernoulliMixture(2, max_iter=50, random_state=3, device="cpu")
    assert clone(model).get_params()["random_state"] == 3
    model.fit(X)
    S, comps = model.sample(4000, generator=torch.Generator().manual_seed(0))
    assert S.shape == (4000, X.shape[1]) and set(S.unique().tolist()) <= {0.0, 1.0}
    expected = model.weights_ @ model.means_
    assert float((S.mean(0) - expected).abs().max()) < 0.04
    assert model.predict_proba(X).shape == (len(X), 2)


def test_bad_input():
    X, _, _ = _planted()
    with pytest.raises(ValueError, match="only 0 and 1"):
        mixture.BernoulliMixture(2).fit(X * 0.5)
    with pytest.raises(ValueError, match="n_components"):
        mixture.BernoulliMixture(0).fit(X)
    with pytest.raises(TypeError, match="n_components"):
        mixture.BernoulliMixture(2.5).fit(X)
    with pytest.raises(ValueError, match="exceeds"):
        mixture.BernoulliMixture(10).fit(X[:5])
    with pytest.raises(RuntimeError, match="not fitted"):
        mixture.BernoulliMixture(2).score(X)
    model = mixture.BernoulliMixture(2, device="cpu").fit(X)
    with pytest.raises(ValueError, match="features"):
        model.score(X[:, :5])
    with pytest.raises(ValueError, match="min_prob"):
        mixture.BernoulliFamily(min_prob=0.7)
    assert math.isfinite(model.score(X))


class _Gaussian1D(mixture.ComponentFamily):
    """A family written outside the module: the EM loop needs no change to use it."""

    def init(self, X, n_components, generator):
        idx = torch.randperm(len(X), generator=generator)[:n_components]
        return X[idx, 0].clone(), torch.ones(n_components, dtype=X.dtype)

    def log_prob(self, X, params):
        mean, var = params
        return -0.5 * ((X - mean) ** 2 / var + torch.log(2 * math.pi * var))

    def m_step(self, X, resp, params):
        counts = resp.sum(0)
        mean = (resp * X).sum(0) / counts
        var = (resp * (X - mean) ** 2).sum(0) / counts + 1e-6
        return mean, var


def test_em_loop_is_generic_over_the_family():
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(300, 1, generator=g, dtype=torch.float64) - 3,
                   0.5 * torch.randn(200, 1, generator=g, dtype=torch.float64) + 2])
    res = mixture.em(_Gaussian1D(), X, 2, max_iter=200, tol=1e-10, generator=g)
    assert bool((torch.diff(torch.tensor(res.history)) >= -1e-10).all())
    mean, var = res.params
    order = mean.argsort()
    assert torch.allclose(mean[order], torch.tensor([-3.0, 2.0], dtype=torch.float64), atol=0.15)
    assert torch.allclose(res.log_weights.exp()[order],
                          torch.tensor([0.6, 0.4], dtype=torch.float64), atol=0.05)


# ------------------------------------------------------------------------- Gaussian mixtures

def _blobs(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[1.0, 0.5], [0.0, 0.5]], dtype=torch.float64)
    return torch.cat([torch.randn(n, 2, generator=g, dtype=torch.float64) @ A + torch.tensor([2.0, 0.0], dtype=torch.float64),
                      torch.randn(n, 2, generator=g, dtype=torch.float64) - 1.0])


def test_gaussian_log_prob_is_the_multivariate_normal_density():
    X = _blobs(20)
    fam = mixture.GaussianFamily()
    means, covs = fam.init(X, 3, torch.Generator().manual_seed(3))
    covs = covs + torch.diag(torch.tensor([0.3, 0.1], dtype=torch.float64))
    lp = fam.log_prob(X, (means, covs))
    for k in range(3):
        ref = torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(X)
        assert torch.allclose(lp[:, k], ref, atol=1e-12)


@pytest.mark.parametrize("n_iter", [1, 10])
def test_gaussian_mixture_matches_scikit_learn_from_the_same_start(n_iter):
    import numpy as np
    import warnings
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X = _blobs()
    means, covs = mixture.GaussianFamily().init(X, 3, torch.Generator().manual_seed(1))
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    ours = mixture.GaussianMixture(3, max_iter=n_iter, tol=0.0, weights_init=w, means_init=means,
                                   covariances_init=covs).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # "did not converge": on purpose
        ref = SkGaussianMixture(3, max_iter=n_iter, tol=0.0, reg_covar=1e-6, weights_init=w.numpy(),
                                means_init=means.numpy(), precisions_init=np.linalg.inv(covs.numpy())
                                ).fit(X.numpy())
    assert abs(ours.score(X) - ref.score(X.numpy())) < 1e-6
    assert np.allclose(ours.means_.numpy(), ref.means_, atol=1e-8)
    assert np.allclose(ours.covariances_.numpy(), ref.covariances_, atol=1e-8)
    assert np.allclose(ours.weights_.numpy(), ref.weights_, atol=1e-10)


def test_gaussian_em_is_monotone_and_the_bound_is_tight_at_the_e_step():
    X = _blobs()
    fam = mixture.GaussianFamily(reg_covar=0.0)                # the exact M step
    res = mixture.em(fam, X, 3, max_iter=40, tol=0.0, generator=torch.Generator().manual_seed(2))
    steps = torch.diff(torch.tensor(res.history))
    assert bool((steps >= -1e-10).all()), steps.min()
    assert res.history[-1] > res.history[0] + 0.1
    resp, log_px = mixture.e_step(fam, X, res.log_weights, res.params)
    assert abs(float(mixture.lower_bound(fam, X, resp, res.log_weights, res.params))
               - float(log_px.mean())) < 1e-10


def test_small_shared_variance_makes_em_a_lloyd_step():
    from mlbook import unsupervised

    X = _blobs()
    start = X[torch.tensor([0, 5, 200])].clone()
    sq = unsupervised.squared_distances(X, start)
    nearest = sq.argmin(1)
    gap = sq.sort(1).values[:, 1] - sq.min(1).values          # margin to the second-nearest mean
    for variance in [1e-2, 1e-1]:                             # the rate: 1 - r <= (K - 1) e^{-gap / 2 var}
        resp, _ = mixture.shared_variance_step(X, start, variance)
        slack = 1 - resp.gather(1, nearest[:, None])[:, 0]
        assert bool((slack <= 2 * torch.exp(-gap / (2 * variance)) + 1e-15).all())
    resp, new = mixture.shared_variance_step(X, start, 1e-9)
    centres, labels, *_ = unsupervised.lloyd(X, start[None], max_iter=1)
    assert float(gap.min()) > 1e-6                            # no near tie at this variance
    assert torch.allclose(resp, torch.nn.functional.one_hot(nearest, 3).double(), atol=1e-12)
    assert torch.allclose(new, centres[0], atol=1e-10)
    soft, _ = mixture.shared_variance_step(X, start, 1.0)      # a large variance: soft
    assert float(soft.max(1).values.min()) < 0.9


def test_gaussian_mixture_conventions_and_bad_input():
    X = _blobs(40)
    model = mixture.GaussianMixture(2, random_state=0)
    assert clone(model).get_params() == model.get_params()
    fitted = model.fit(X)
    assert fitted.predict(X).shape == (80,) and torch.allclose(fitted.weights_.sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="together"):
        mixture.GaussianMixture(2, means_init=X[:2]).fit(X)
    with pytest.raises(ValueError, match="shapes"):
        mixture.GaussianMixture(2, weights_init=[0.5, 0.5], means_init=X[:3],
                                covariances_init=torch.eye(2).expand(2, 2, 2)).fit(X)
    with pytest.raises(ValueError, match="reg_covar"):
        mixture.GaussianMixture(2, reg_covar=-1.0).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        mixture.GaussianMixture(2).fit(X.clone().fill_(float("nan")))
    with pytest.raises(RuntimeError, match="not fitted"):
        mixture.GaussianMixture(2).score(X)
    with pytest.raises(ValueError, match="variance"):
        mixture.shared_variance_step(X, X[:2], 0.0)

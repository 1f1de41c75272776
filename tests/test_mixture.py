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

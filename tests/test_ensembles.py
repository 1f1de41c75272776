"""mlbook.ensembles: forests and OOB, AdaBoost's weights and bound, gradient and second-order boosting."""

import math

import numpy as np
import pytest
import torch

from mlbook import ensembles as E
from mlbook import trees
from mlbook._checks import NotFittedError


def _blobs(n=120, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 2)
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.4 * rng.randn(n) > 0).astype(int)
    return X, y


def test_stack_keeps_each_trees_predictions():
    X, y = _blobs()
    a = trees.DecisionTreeClassifier(max_depth=2).fit(X, y).tree_
    b = trees.DecisionTreeClassifier(max_depth=4).fit(X, 1 - y).tree_
    both = E.stack([a, b])
    Xt = torch.as_tensor(X)
    leaves = trees.apply(both, Xt)
    assert torch.equal(both.value[leaves[:, 0]], a.value[trees.apply(a, Xt)[:, 0]])
    assert torch.equal(both.value[leaves[:, 1]], b.value[trees.apply(b, Xt)[:, 0]])


def test_forest_without_bootstrap_or_feature_sampling_is_copies_of_one_tree():
    X, y = _blobs()
    forest = E.RandomForestClassifier(5, max_features=None, bootstrap=False).fit(X, y)
    single = trees.DecisionTreeClassifier().fit(X, y)
    vals = forest.tree_values(X)                                   # (n, 5, classes)
    assert torch.equal(vals, single.predict_proba(X)[:, None, :].expand_as(vals))
    assert math.isnan(forest.oob_score_)                           # every row is in every "bag"


def test_oob_uses_only_trees_that_did_not_see_the_row():
    X, y = _blobs(80)
    forest = E.RandomForestClassifier(30, seed=3).fit(X, y)
    vals = forest.tree_values(X)
    i = 5
    out = ~forest.in_bag_[:, i]
    assert out.any()
    assert torch.allclose(forest.oob_decision_function_[i], vals[i, out].mean(0))
    # about a fraction 1/e of the rows is out of each bag
    assert abs(float((~forest.in_bag_).double().mean()) - math.exp(-1)) < 0.05
    assert 0.6 < forest.oob_score_ <= 1.0


def test_bagging_regressor_averages_trees_and_predict_uses_the_first_n():
    X, y = _blobs()
    reg = E.RandomForestRegressor(10, seed=1).fit(X, y.astype(float))
    vals = reg.tree_values(X)[..., 0]
    assert torch.allclose(reg.predict(X), vals.mean(1))
    assert torch.allclose(reg.predict(X, n_trees=3), vals[:, :3].mean(1))
    for bad in (0, 11):                                  # an empty average would be nan, not an error
        with pytest.raises(ValueError, match="n_trees"):
            reg.predict(X, n_trees=bad)


def test_adaboost_round_one_reweights_mistakes_to_half_the_mass():
    X, y = _blobs(100, seed=2)
    ada = E.AdaBoostClassifier(3).fit(X, y)
    eps = float(ada.errors_[0])
    assert 0 < eps < 0.5
    assert float(ada.alphas_[0]) == pytest.approx(math.log((1 - eps) / eps))
    stump = trees.DecisionTreeClassifier(max_depth=1).fit(X, y)
    miss = torch.as_tensor(stump.predict(X).numpy() != y)
    w1 = ada.sample_weights_[1]
    # after re-weighting the first learner has weighted error exactly 1/2 (eq. ens-ada-half)
    assert float(w1[miss].sum()) == pytest.approx(0.5)


def test_adaboost_training_error_stays_under_the_bound():
    X, y = _blobs(150, seed=4)
    ada = E.AdaBoostClassifier(40).fit(X, y)
    train_err = (ada.staged_predict(X).numpy() != y).mean(1)
    prod, expo = E.adaboost_bound(ada.errors_)
    assert (torch.as_tensor(train_err) <= prod + 1e-12).all()
    assert (prod <= expo + 1e-12).all()


def test_adaboost_bound_on_known_errors():
    prod, expo = E.adaboost_bound([0.25, 0.1])
    assert prod.tolist() == pytest.approx([math.sqrt(0.75), math.sqrt(0.75) * 0.6])
    assert expo[-1].item() == pytest.approx(math.exp(-2 * (0.25**2 + 0.4**2)))


def test_gradient_boosting_first_round_fits_the_residuals():
    X, y = _blobs()
    yr = X[:, 0] ** 2 + 0.1 * np.random.RandomState(0).randn(len(X))
    gb = E.GradientBoostingRegressor(1, learning_rate=1.0, max_depth=2).fit(X, yr)
    tree = trees.DecisionTreeRegressor(max_depth=2).fit(X, yr - yr.mean())
    assert torch.allclose(gb.predict(X), yr.mean() + tree.predict(X))


def test_gradient_boosting_reduces_training_loss_every_round():
    X, y = _blobs()
    gb = E.GradientBoostingClassifier(20, max_depth=2).fit(X, y)
    p = torch.sigmoid(gb.staged_raw(X)).clamp(1e-12, 1 - 1e-12)
    yt = torch.as_tensor(y, dtype=torch.float64)
    loss = -(yt * p.log() + (1 - yt) * (1 - p).log()).mean(1)
    assert (loss[1:] <= loss[:-1] + 1e-12).all()
    assert torch.allclose(gb.predict_proba(X).sum(1), torch.ones(len(X), dtype=torch.float64))


def test_newton_boosting_squared_loss_with_no_penalty_is_gradient_boosting():
    # with h = 1, lam = 0, gamma = 0 the Newton leaf -G/H is the mean residual and the gain orders
    # splits like least squares, so both boosters build the same model
    X, _ = _blobs()
    yr = np.sin(2 * X[:, 0]) + X[:, 1]
    a = E.NewtonBoostingRegressor(5, lam=0.0, gamma=0.0, max_depth=2).fit(X, yr)
    b = E.GradientBoostingRegressor(5, max_depth=2).fit(X, yr)
    assert torch.allclose(a.predict(X), b.predict(X), atol=1e-10)


def test_newton_root_gain_matches_the_formula():
    X, y = _blobs()
    nb = E.NewtonBoostingClassifier(1, lam=2.0, gamma=0.5, max_depth=1).fit(X, y)
    t = nb.ensemble_
    p = torch.full((len(X),), float(y.mean()), dtype=torch.float64)
    g, h = p - torch.as_tensor(y, dtype=torch.float64), p * (1 - p)
    left = torch.as_tensor(X[:, int(t.feature[0])]).float().double() <= t.threshold[0]
    assert t.gain[0].item() == pytest.approx(E.newton_gain(g, h, left, 2.0, 0.5), abs=1e-9)


@pytest.mark.parametrize("make", [lambda: E.RandomForestClassifier(3), lambda: E.RandomForestRegressor(3),
                                  lambda: E.AdaBoostClassifier(3), lambda: E.GradientBoostingRegressor(3),
                                  lambda: E.GradientBoostingClassifier(3), lambda: E.NewtonBoostingClassifier(3),
                                  lambda: E.NewtonBoostingRegressor(3)])
def test_estimators_check_their_input(make):
    X, y = _blobs(40)
    with pytest.raises(NotFittedError):
        make().predict(X)
    est = make().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :1])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.predict(bad)
    with pytest.raises(ValueError, match="NaN"):
        make().fit(bad, y)


def test_binary_losses_reject_three_classes_and_bad_parameters():
    X, _ = _blobs(30)
    y3 = np.arange(30) % 3
    with pytest.raises(ValueError, match="exactly 2 classes"):
        E.GradientBoostingClassifier(2).fit(X, y3)
    with pytest.raises(ValueError, match="exactly 2 classes"):
        E.NewtonBoostingClassifier(2).fit(X, y3)
    with pytest.raises(ValueError, match="n_estimators"):
        E.AdaBoostClassifier(0)
    with pytest.raises(ValueError, match="learning_rate"):
        E.GradientBoostingRegressor(learning_rate=0.0)
    with pytest.raises(ValueError, match="lam"):
        E.NewtonBoostingRegressor(lam=-1.0)
    with pytest.raises(ValueError, match="at least two classes"):
        E.AdaBoostClassifier(2).fit(X, np.zeros(30, dtype=int))


def test_newton_boosting_without_l2_penalty_stays_finite():
    # lam = 0 on separable data: p saturates to 0 or 1, so h = p (1 - p) and children's H reach 0;
    # leaves must not become 0/0 = nan, and gains must not become G^2 / 0 ~ 1e250
    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.2 * torch.rand(300, generator=g, dtype=torch.float64) > 0.6).long()
    m = E.NewtonBoostingClassifier(60, lam=0.0, max_depth=3, learning_rate=1.0).fit(X, y)
    assert torch.isfinite(m.ensemble_.value).all()
    assert float(torch.nan_to_num(m.ensemble_.gain, nan=0.0).max()) < 1e3
    assert torch.isfinite(m.predict_proba(X)).all()
    assert float((m.predict(X) == y).double().mean()) == 1.0

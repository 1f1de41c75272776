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
    forest = E.RandomForestClassifier(30, random_state=3).fit(X, y)
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
    reg = E.RandomForestRegressor(10, random_state=1).fit(X, y.astype(float))
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
    a = E.NewtonBoostingRegressor(5, reg_lambda=0.0, gamma=0.0, max_depth=2).fit(X, yr)
    b = E.GradientBoostingRegressor(5, max_depth=2).fit(X, yr)
    assert torch.allclose(a.predict(X), b.predict(X), atol=1e-10)


def test_newton_root_gain_matches_the_formula():
    X, y = _blobs()
    nb = E.NewtonBoostingClassifier(1, reg_lambda=2.0, gamma=0.5, max_depth=1).fit(X, y)
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
    bad[0, 0] = np.inf if getattr(est, "_missing", False) else np.nan   # Newton boosting takes NaN
    with pytest.raises(ValueError, match="NaN or infinite"):
        est.predict(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        make().fit(bad, y)


@pytest.mark.parametrize("make", [lambda: E.RandomForestClassifier(3), lambda: E.AdaBoostClassifier(3),
                                  lambda: E.GradientBoostingClassifier(3)])
def test_estimators_without_a_missing_value_rule_reject_nan(make):
    X, y = _blobs(40)
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make().fit(X, y)


@pytest.mark.parametrize("splitter", ["exact", "hist"])
def test_newton_boosting_learns_where_informative_missing_values_go(splitter):
    # feature 0 is missing exactly for class 1 (and never for class 0): the learned default direction
    # must send the missing rows to the class-1 side, so they are all predicted 1, as are new ones
    X, y = _blobs(200)
    X = X.copy()
    X[y == 1, 0] = np.nan
    nb = E.NewtonBoostingClassifier(5, max_depth=1, learning_rate=0.5, splitter=splitter).fit(X, y)
    assert nb.ensemble_.missing_left is not None
    assert nb.predict(X[y == 1]).tolist() == [1] * int((y == 1).sum())
    assert nb.score(X, y) == 1.0


def test_binary_losses_reject_three_classes_and_bad_parameters():
    X, _ = _blobs(30)
    y3 = np.arange(30) % 3
    with pytest.raises(ValueError, match="exactly 2 classes"):
        E.NewtonBoostingClassifier(2).fit(X, y3)
    # parameters are stored by __init__ unchanged and checked by fit
    with pytest.raises(ValueError, match="n_estimators"):
        E.AdaBoostClassifier(0).fit(X, y3)
    with pytest.raises(ValueError, match="learning_rate"):
        E.GradientBoostingRegressor(learning_rate=0.0).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="reg_lambda"):
        E.NewtonBoostingRegressor(reg_lambda=-1.0).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="subsample"):
        E.GradientBoostingClassifier(subsample=1.5).fit(X, y3)
    with pytest.raises(ValueError, match="max_features"):
        E.RandomForestClassifier(3, max_features=0.0).fit(X, y3)
    with pytest.raises(TypeError, match="bootstrap"):
        E.RandomForestRegressor(3, bootstrap="yes").fit(X, X[:, 0])
    with pytest.raises(ValueError, match="at least two classes"):
        E.AdaBoostClassifier(2).fit(X, np.zeros(30, dtype=int))


def test_newton_boosting_without_l2_penalty_stays_finite():
    # lam = 0 on separable data: p saturates to 0 or 1, so h = p (1 - p) and children's H reach 0;
    # leaves must not become 0/0 = nan, and gains must not become G^2 / 0 ~ 1e250
    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.2 * torch.rand(300, generator=g, dtype=torch.float64) > 0.6).long()
    m = E.NewtonBoostingClassifier(60, reg_lambda=0.0, max_depth=3, learning_rate=1.0).fit(X, y)
    assert torch.isfinite(m.ensemble_.value).all()
    assert float(torch.nan_to_num(m.ensemble_.gain, nan=0.0).max()) < 1e3
    assert torch.isfinite(m.predict_proba(X)).all()
    assert float((m.predict(X) == y).double().mean()) == 1.0


def test_forest_on_5000_rows_and_20_features_with_blocked_search(monkeypatch):
    # the data of the crash report: make_classification(5000, 20). A 100-tree forest needs two
    # feature blocks at the default cell budget; a smaller budget makes 4 trees need five
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier as SkForest
    X, y = make_classification(5000, 20, random_state=0)
    monkeypatch.setattr(trees, "_MAX_CELLS", 5000 * 4 * 3 * 4)
    rf = E.RandomForestClassifier(4, max_depth=3, random_state=0).fit(X, y)
    assert rf.forest_.roots.numel() == 4 and rf.forest_.depth == 3
    sk = SkForest(4, max_depth=3, random_state=0).fit(X, y)
    ours, theirs = float((rf.predict(X).numpy() == y).mean()), sk.score(X, y)
    assert ours > 0.85 and abs(ours - theirs) < 0.05


def test_boosting_on_5000_and_20000_rows():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier as SkGB
    X, y = make_classification(5000, 20, random_state=0)
    gb = E.GradientBoostingClassifier(5, max_depth=3).fit(X, y)
    sk = SkGB(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    ours = torch.sigmoid(gb.staged_raw(X)).numpy()
    theirs = np.array([p[:, 1] for p in sk.staged_predict_proba(X)])
    assert np.abs(ours - theirs).max() < 1e-9             # no feature tie: the same five trees
    X, y = make_classification(20000, 20, random_state=1)
    nb = E.NewtonBoostingClassifier(3, max_depth=3, splitter="hist").fit(X, y)
    raw = nb.staged_raw(X)
    p = torch.sigmoid(raw).clamp(1e-12, 1 - 1e-12)
    yt = torch.as_tensor(y, dtype=torch.float64)
    loss = -(yt * p.log() + (1 - yt) * (1 - p).log()).mean(1)
    assert bool((loss[1:] < loss[:-1]).all()) and float((nb.predict(X).numpy() == y).mean()) > 0.85


ESTIMATORS = [E.RandomForestClassifier(5, random_state=0), E.RandomForestRegressor(5),
              E.AdaBoostClassifier(5), E.GradientBoostingClassifier(5), E.GradientBoostingRegressor(5),
              E.NewtonBoostingClassifier(5), E.NewtonBoostingRegressor(5),
              trees.DecisionTreeClassifier(max_depth=3), trees.DecisionTreeRegressor(max_depth=3)]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_scikit_learn_tools_run_on_every_estimator(est):
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import GridSearchCV, cross_val_score
    X, y = _blobs(90)
    target = y if is_classifier(est) else X[:, 0] + y
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert clone(est.set_params(max_depth=2)).max_depth == 2
    scores = cross_val_score(clone(est), X, target, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    grid = GridSearchCV(clone(est), {"max_depth": [1, 3]}, cv=3).fit(X, target)
    assert grid.best_params_["max_depth"] in (1, 3)
    # numpy arrays and torch tensors give the same fit
    a = clone(est).fit(X, target).predict(X)
    b = clone(est).fit(torch.as_tensor(X), torch.as_tensor(target)).predict(torch.as_tensor(X))
    assert torch.equal(a, b)


def test_init_stores_parameters_unchanged():
    est = E.RandomForestClassifier(n_estimators="many", max_features="cube", device="nowhere")
    assert est.get_params()["n_estimators"] == "many" and est.device == "nowhere"
    with pytest.raises(ValueError, match="device"):
        est.fit(*_blobs(20))
    with pytest.raises(TypeError, match="n_estimators"):
        est.set_params(device=None).fit(*_blobs(20))


def test_multiclass_gradient_boosting_equals_scikit_learn():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier as SkGB
    X, y = make_classification(300, 6, n_informative=4, n_classes=3, random_state=0)
    ours = E.GradientBoostingClassifier(8, max_depth=2).fit(X, y)
    sk = SkGB(n_estimators=8, max_depth=2, random_state=0).fit(X, y)
    proba = ours.staged_predict_proba(X).numpy()               # (rounds, n, 3)
    assert np.abs(proba - np.stack(list(sk.staged_predict_proba(X)))).max() < 1e-9
    assert proba.shape == (8, 300, 3)


def test_subsample_fits_each_round_on_a_fraction_of_the_rows():
    X, y = _blobs(200)
    full = E.GradientBoostingClassifier(6, max_depth=2).fit(X, y)
    half = E.GradientBoostingClassifier(6, max_depth=2, subsample=0.5, random_state=1).fit(X, y)
    roots = half.ensemble_.n_samples[half.ensemble_.roots]
    assert roots.tolist() == [100] * 6
    assert full.ensemble_.n_samples[full.ensemble_.roots].tolist() == [200] * 6
    again = E.GradientBoostingClassifier(6, max_depth=2, subsample=0.5, random_state=1).fit(X, y)
    assert torch.equal(half.predict_proba(X), again.predict_proba(X))


def test_forest_importances_match_scikit_learns_rule():
    # scikit-learn: normalise each tree's impurity decreases to sum 1, average over the trees,
    # normalise again. Two different trees (no feature ties in either) stacked into one forest:
    from sklearn.datasets import make_friedman1
    from sklearn.tree import DecisionTreeRegressor as SkTree
    X, y = make_friedman1(150, noise=1.0, random_state=0)
    fits = [trees.DecisionTreeRegressor(max_depth=d, min_samples_leaf=5).fit(X, y) for d in (2, 6)]
    sks = [SkTree(max_depth=d, min_samples_leaf=5, random_state=0).fit(X, y) for d in (2, 6)]
    expected = np.mean([sk.feature_importances_ for sk in sks], 0)
    ours = trees.impurity_importance(E.stack([f.tree_ for f in fits]), 10).numpy()
    assert np.allclose(ours, expected / expected.sum(), atol=1e-12) and ours.sum() == pytest.approx(1)
    one = E.RandomForestRegressor(1, bootstrap=False, max_depth=6, min_samples_leaf=5).fit(X, y)
    assert np.allclose(one.feature_importances_.numpy(), sks[1].feature_importances_, atol=1e-12)


def test_check_gini_gain_passes_a_right_answer_and_fails_wrong_ones():
    def right(yl, yr, K):
        score = [(torch.bincount(v, minlength=K).double() ** 2).sum() / len(v) for v in (yl, yr)]
        parent = torch.bincount(torch.cat([yl, yr]), minlength=K).double()
        return float(score[0] + score[1] - (parent ** 2).sum() / parent.sum())

    def impurity_drop(yl, yr, K):                 # unweighted impurities: a common mistake
        def gini(v):
            p = torch.bincount(v, minlength=K).double() / len(v)
            return 1 - float((p * p).sum())
        return gini(torch.cat([yl, yr])) - gini(yl) - gini(yr)

    def unwritten(yl, yr, K):
        raise NotImplementedError

    assert E.check_gini_gain(right)
    assert not E.check_gini_gain(impurity_drop)
    assert "not yet" in repr(E.check_gini_gain(unwritten))


def test_variance_of_averages_matches_the_formula_on_exchangeable_draws():
    # predictions with a known structure: per set a shared part (variance c) plus independent
    # parts (variance w): rho = c / (c + w), and forests of B trees have variance c + w / B
    g = torch.Generator().manual_seed(0)
    R, T, n, c, w = 400, 20, 30, 1.0, 3.0
    pred = (c ** 0.5) * torch.randn(R, 1, n, generator=g, dtype=torch.float64) \
        + (w ** 0.5) * torch.randn(R, T, n, generator=g, dtype=torch.float64)
    est = E.tree_correlation(pred)
    assert est["s2"] == pytest.approx(4.0, rel=0.05) and est["rho"] == pytest.approx(0.25, abs=0.03)
    for B in (1, 4, 10):
        assert E.forest_variance(pred, B) == pytest.approx(c + w / B, rel=0.08)
        assert E.averaged_variance(4.0, 0.25, B) == pytest.approx(c + w / B)
    with pytest.raises(ValueError, match="2 training sets"):
        E.tree_correlation(pred[:1])
    with pytest.raises(ValueError, match="n_trees"):
        E.forest_variance(pred, T + 1)


def test_stacking_equals_scikit_learns_with_the_same_folds():
    from sklearn.ensemble import StackingClassifier as SkStack
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    X, y = _blobs(120)
    bases = [("forest", E.RandomForestClassifier(5, max_depth=3, random_state=0)),
             ("boost", E.GradientBoostingClassifier(5, max_depth=2))]
    ours = E.StackingClassifier(bases, LogisticRegression(), cv=4).fit(X, y)
    sk = SkStack(bases, LogisticRegression(), cv=KFold(4)).fit(X, y)
    assert ours.stack_features_.shape == (120, 2)              # one column per base (2 classes)
    assert np.allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-12)
    assert np.array_equal(ours.predict(X), sk.predict(X))
    with pytest.raises(TypeError, match="predict_proba"):
        E.StackingClassifier([("ada", E.AdaBoostClassifier(3))]).fit(X, y)
    with pytest.raises(ValueError, match="pairs"):
        E.StackingClassifier([]).fit(X, y)


def test_importances_exist_only_after_fit():
    est = E.RandomForestRegressor(3)
    assert not hasattr(est, "feature_importances_")
    X, y = _blobs(40)
    assert est.fit(X, y.astype(float)).feature_importances_.shape == (2,)


def test_hessian_sketch_fits_the_training_rows_better_than_uniform_bins():
    from sklearn.datasets import make_classification
    X, y = make_classification(1000, 6, n_informative=4, class_sep=1.5, random_state=0)
    loss = {}
    for sketch in ("uniform", "hessian"):
        nb = E.NewtonBoostingClassifier(25, max_depth=3, learning_rate=0.3, splitter="hist",
                                        max_bins=6, sketch=sketch).fit(X, y)
        p = nb.predict_proba(X)[:, 1].clamp(1e-12, 1 - 1e-12).numpy()
        loss[sketch] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert loss["hessian"] < loss["uniform"]
    with pytest.raises(ValueError, match="sketch"):
        E.NewtonBoostingClassifier(2, splitter="hist", sketch="exact").fit(X, y)


# ------------------------------------------------------------ losses: exponential, L1, Huber

def test_exponential_minimiser_is_half_the_log_odds_and_minimises_the_expected_loss():
    F = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    for p in (0.05, 0.3, 0.5, 0.9):
        best = F[(p * torch.exp(-F) + (1 - p) * torch.exp(F)).argmin()]
        assert abs(float(best - E.exponential_minimiser(p))) < 2e-4
        assert math.isclose(float(torch.sigmoid(2 * E.exponential_minimiser(p))), p, rel_tol=1e-12)
    with pytest.raises(ValueError, match="between 0 and 1"):
        E.exponential_minimiser(1.0)


def test_margin_weights_are_minus_the_derivative_and_their_ratio_is_cosh():
    z = torch.linspace(-5, 5, 21, dtype=torch.float64, requires_grad=True)
    for loss, fn in (("exponential", lambda t: torch.exp(-t)),
                     ("deviance", lambda t: torch.log1p(torch.exp(-2 * t)))):
        (grad,) = torch.autograd.grad(fn(z).sum(), z)
        assert torch.allclose(E.margin_weight(z.detach(), loss), -grad, rtol=1e-12)
    z = z.detach()
    ratio = E.margin_weight(z, "exponential") / E.margin_weight(z, "deviance")
    assert torch.allclose(ratio, torch.cosh(z), rtol=1e-12)
    assert float(E.margin_weight(torch.tensor(-50.0), "deviance")) <= 2
    with pytest.raises(ValueError, match="loss"):
        E.margin_weight(z, "hinge")


def test_flip_labels_flips_exactly_the_requested_share():
    y = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(0))
    noisy, flipped = E.flip_labels(y, 0.2, torch.Generator().manual_seed(1))
    assert int(flipped.sum()) == 40 and torch.equal(noisy[flipped], 1 - y[flipped])
    assert torch.equal(noisy[~flipped], y[~flipped])
    with pytest.raises(ValueError, match="labels in"):
        E.flip_labels(y + 1, 0.1)
    with pytest.raises(ValueError, match="fraction"):
        E.flip_labels(y, 1.5)
    X, t = E.sphere_data(2000, generator=torch.Generator().manual_seed(0))
    assert X.shape == (2000, 10) and abs(float(t.double().mean()) - 0.5) < 0.04   # median split


def test_exponential_gradient_boosting_equals_scikit_learns():
    from sklearn.ensemble import GradientBoostingClassifier as SkGBC
    X, y = _blobs(150)
    ours = E.GradientBoostingClassifier(15, loss="exponential", max_depth=2, min_samples_leaf=3).fit(X, y)
    sk = SkGBC(loss="exponential", n_estimators=15, max_depth=2, min_samples_leaf=3,
               random_state=0).fit(X.astype(np.float32), y)
    assert np.allclose(ours.predict_proba(X)[:, 1].numpy(), sk.predict_proba(X.astype(np.float32))[:, 1],
                       atol=1e-9)
    with pytest.raises(ValueError, match="loss"):
        E.GradientBoostingClassifier(2, loss="hinge").fit(X, y)
    with pytest.raises(ValueError, match="binary"):
        E.GradientBoostingClassifier(2, loss="exponential").fit(X, np.arange(150) % 3)


def test_weighted_quantile_is_the_inverted_cdf_per_group():
    v = torch.tensor([4.0, 1.0, 3.0, 2.0, 10.0, 7.0, 8.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 0, 2, 2, 2])
    med = E.weighted_quantile(v, 0.5, g, 3)
    assert med.tolist() == [2.0, 0.0, 8.0]                     # lower middle; empty group 0
    assert float(E.weighted_quantile(v, 0.9)[0]) == float(np.quantile(v.numpy(), 0.9, method="inverted_cdf"))
    with pytest.raises(ValueError, match="q must"):
        E.weighted_quantile(v, 0.0)


@pytest.mark.parametrize("loss", ["squared_error", "huber"])
def test_regression_losses_equal_scikit_learns(loss):
    from sklearn.ensemble import GradientBoostingRegressor as SkGBR
    rng = np.random.RandomState(0)
    X = rng.randn(150, 3).astype(np.float32)
    y = X[:, 0] + np.sin(2 * X[:, 1]) + rng.standard_t(2, 150)
    kw = dict(n_estimators=20, max_depth=2, min_samples_leaf=5, learning_rate=0.2)
    ours = E.GradientBoostingRegressor(loss=loss, **kw).fit(X, y)
    sk = SkGBR(loss=loss, random_state=0, **kw).fit(X, y)
    Xt = rng.randn(300, 3).astype(np.float32)
    assert np.allclose(ours.predict(Xt).numpy(), sk.predict(Xt), atol=1e-9)


def test_absolute_error_leaves_are_medians_and_the_fit_is_robust():
    rng = np.random.RandomState(0)
    X = rng.randn(200, 2)
    y = X[:, 0].copy()
    y[:10] += 1000.0                                            # ten wild outliers
    l1 = E.GradientBoostingRegressor(30, loss="absolute_error", max_depth=2).fit(X, y)
    l2 = E.GradientBoostingRegressor(30, loss="squared_error", max_depth=2).fit(X, y)
    clean = slice(10, None)
    err = {k: float(np.abs(m.predict(X).numpy()[clean] - X[clean, 0]).mean()) for k, m in
           (("l1", l1), ("l2", l2))}
    assert err["l1"] < err["l2"] / 5
    one = E.GradientBoostingRegressor(1, loss="absolute_error", max_depth=1, learning_rate=1.0).fit(X, y)
    r = torch.as_tensor(y) - float(np.median(y))
    leaf = trees.apply(one.ensemble_, torch.as_tensor(X, dtype=torch.float64))[:, 0]
    for j in leaf.unique():
        rows = r[leaf == j]
        want = rows.sort().values[(len(rows) - 1) // 2]
        assert math.isclose(float(one.ensemble_.value[j, 0]), float(want), rel_tol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        E.GradientBoostingRegressor(2, loss="huber", alpha=1.0).fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        E.GradientBoostingRegressor(2, loss="quantile").fit(X, y)


def test_huber_leaf_interpolates_mean_and_median_and_the_checker_judges():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0, 50.0], dtype=torch.float64)
    assert math.isclose(float(E.huber_leaf(r, 1e6)[0]), float(r.mean()))
    assert math.isclose(float(E.huber_leaf(r, 1e-9)[0]), 2.0, abs_tol=1e-8)
    assert float(E.huber_leaf(r, 1.0)[0]) == 2.0 + (-1 - 1 + 0 + 1 + 1) / 5

    def right(r, delta):
        m = r.sort().values[(len(r) - 1) // 2]
        return float(m + (torch.sign(r - m) * (r - m).abs().clamp(max=delta)).mean())

    def mean_only(r, delta):
        return float(r.mean())

    assert E.check_huber_leaf(right)
    assert not E.check_huber_leaf(mean_only)


# ------------------------------------------------------------ AdaBoost by resampling, AdaBoost.R2

def test_adaboost_by_resampling_learns_and_is_seeded():
    X, y = _blobs(200)
    a = E.AdaBoostClassifier(20, resample=True, random_state=3).fit(X, y)
    b = E.AdaBoostClassifier(20, resample=True, random_state=3).fit(X, y)
    assert torch.equal(a.alphas_, b.alphas_) and len(a.alphas_) == 20
    assert (a.errors_ < 0.5).all() and float((a.predict(X) == torch.as_tensor(y)).double().mean()) > 0.85
    w = E.AdaBoostClassifier(20).fit(X, y)
    assert not torch.equal(a.alphas_, w.alphas_)                # the draws change the trees
    with pytest.raises(TypeError, match="resample"):
        E.AdaBoostClassifier(2, resample="yes").fit(X, y)


def test_weighted_median_is_the_first_value_reaching_half_the_weight():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(30, 7, generator=g, dtype=torch.float64)
    weights = torch.rand(7, generator=g, dtype=torch.float64)
    got = E.weighted_median(pred, weights)
    for i in range(30):
        order = pred[i].argsort()
        cum = weights[order].cumsum(0)
        k = next(j for j in range(7) if cum[j] >= 0.5 * cum[-1])
        assert got[i] == pred[i, order[k]]
    assert torch.equal(E.weighted_median(pred, torch.ones(7, dtype=torch.float64)),
                       pred.sort(1).values[:, 3])               # equal weights: the plain median


@pytest.mark.parametrize("loss", ["linear", "square", "exponential"])
def test_adaboost_r2_is_as_good_as_scikit_learns(loss):
    from sklearn.datasets import make_friedman1
    from sklearn.ensemble import AdaBoostRegressor as SkAda
    from sklearn.tree import DecisionTreeRegressor
    X, y = make_friedman1(300, noise=1.0, random_state=0)
    Xt, yt = make_friedman1(500, noise=0.0, random_state=1)
    ours = E.AdaBoostRegressor(20, loss=loss, max_depth=3).fit(X, y)
    sk = SkAda(DecisionTreeRegressor(max_depth=3), n_estimators=20, loss=loss, random_state=0).fit(X, y)
    rmse = [float(np.sqrt(np.mean((np.asarray(p) - yt) ** 2))) for p in (ours.predict(Xt), sk.predict(Xt))]
    assert abs(rmse[0] - rmse[1]) < 0.15 * rmse[1]
    assert (ours.losses_ < 0.5).all() and (ours.alphas_ > 0).all()
    assert torch.equal(ours.staged_predict(Xt)[-1], ours.predict(Xt))
    with pytest.raises(ValueError, match="loss"):
        E.AdaBoostRegressor(2, loss="huber").fit(X, y)


def test_weighted_median_checker_passes_a_right_answer_and_fails_the_plain_median():
    def right(values, weights):
        order = values.argsort()
        cum = weights[order].cumsum(0)
        return float(values[order][int((cum >= cum[-1] / 2).nonzero()[0])])

    def plain(values, weights):
        return float(values.median())

    assert E.check_weighted_median(right)
    assert not E.check_weighted_median(plain)


# ------------------------------------------------------------ column subsampling

def test_column_subsampling_keeps_each_tree_to_its_columns():
    from sklearn.datasets import make_classification
    X, y = make_classification(300, 8, n_informative=5, random_state=0)
    full = E.NewtonBoostingClassifier(10, max_depth=3).fit(X, y)
    same = E.NewtonBoostingClassifier(10, max_depth=3, colsample_bytree=1.0, colsample_bynode=1.0).fit(X, y)
    assert torch.equal(full.predict_proba(X), same.predict_proba(X))
    sub = E.NewtonBoostingClassifier(10, max_depth=3, colsample_bytree=0.25, random_state=2).fit(X, y)
    owner = E.tree_of_nodes(sub.ensemble_)
    for t, cols in enumerate(sub.columns_):
        assert len(cols) == 2
        used = sub.ensemble_.feature[(owner == t) & (sub.ensemble_.feature >= 0)]
        assert set(used.tolist()) <= set(cols.tolist())
    node = E.NewtonBoostingRegressor(5, max_depth=2, colsample_bynode=0.5).fit(X, y.astype(float))
    again = E.NewtonBoostingRegressor(5, max_depth=2, colsample_bynode=0.5).fit(X, y.astype(float))
    assert torch.equal(node.predict(X), again.predict(X))          # seeded
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="colsample_bytree"):
            E.NewtonBoostingClassifier(2, colsample_bytree=bad).fit(X, y)
    with pytest.raises(ValueError, match="colsample_bynode"):
        E.NewtonBoostingClassifier(2, colsample_bynode=-1.0).fit(X, y)


def test_mean_tree_correlation_of_copies_is_one_and_of_independent_columns_near_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    assert math.isclose(E.mean_tree_correlation(torch.cat([a, 2 * a, a + 1, torch.zeros_like(a)], 1)), 1.0,
                        rel_tol=1e-12)                          # the constant column is left out
    assert abs(E.mean_tree_correlation(torch.randn(500, 6, generator=g, dtype=torch.float64))) < 0.05
    with pytest.raises(ValueError, match="two trees"):
        E.mean_tree_correlation(torch.cat([a, torch.zeros_like(a)], 1))


@pytest.mark.parametrize("est", [E.AdaBoostRegressor(5), E.AdaBoostClassifier(5, resample=True),
                                 E.GradientBoostingRegressor(5, loss="huber"),
                                 E.GradientBoostingClassifier(5, loss="exponential"),
                                 E.NewtonBoostingClassifier(5, colsample_bytree=0.5, colsample_bynode=0.5)],
                         ids=lambda e: type(e).__name__)
def test_scikit_learn_tools_run_on_the_new_variants(est):
    test_scikit_learn_tools_run_on_every_estimator(est)


def test_partial_dependence_equals_scikit_learns_brute_method():
    from sklearn.ensemble import GradientBoostingClassifier as SkGBC
    from sklearn.inspection import partial_dependence as sk_pd
    X, y = _blobs(120)
    grid = np.linspace(-1.5, 1.5, 7)
    for est in (SkGBC(n_estimators=10, max_depth=2, random_state=0).fit(X, y),
                E.GradientBoostingRegressor(10, max_depth=2).fit(X, X[:, 0] + y)):
        want = sk_pd(est, X, [1], custom_values={1: grid}, method="brute")["average"][0]
        assert np.allclose(E.partial_dependence(est, X, 1, grid).numpy(), want, atol=1e-12)
    with pytest.raises(ValueError, match="feature"):
        E.partial_dependence(est, X, 2, grid)
    with pytest.raises(ValueError, match="grid"):
        E.partial_dependence(est, X, 0, [])

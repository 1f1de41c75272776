"""mlbook.svm: losses, kernels, SMO in the dual, the primal subgradient solver, and the estimators."""

import math

import numpy as np
import pytest
import torch

from mlbook import svm
from mlbook._checks import NotFittedError
from helpers import gen, t64

TWO_POINTS = ([[0.0, 0.0], [2.0, 2.0]], [0, 1])


# ------------------------------------------------------------------------------------ losses

def test_hinge_loss_values():
    z = t64([-2.0, 0.0, 0.5, 1.0, 3.0])
    assert svm.hinge_loss(z).tolist() == [3.0, 1.0, 0.5, 0.0, 0.0]


def test_logistic_loss_is_one_bit_at_zero_and_stable_in_the_tails():
    z = t64([0.0, -800.0, 800.0])
    out = svm.logistic_loss(z)
    assert out[0] == pytest.approx(1.0, abs=1e-15)
    assert out[1] == pytest.approx(800 / math.log(2), rel=1e-12)          # no overflow
    assert 0 <= out[2] < 1e-300 or out[2] == 0


@pytest.mark.parametrize("name", ["hinge", "logistic"])
def test_surrogates_upper_bound_the_zero_one_loss(name):
    z = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert (svm.LOSSES[name](z) >= svm.zero_one_loss(z)).all()


def test_zero_one_loss_counts_zero_margin_as_an_error():
    assert svm.zero_one_loss(t64([-1.0, 0.0, 1e-9])).tolist() == [1.0, 1.0, 0.0]


def test_losses_reject_integer_tensors():
    with pytest.raises(TypeError, match="floating"):
        svm.hinge_loss(torch.tensor([1, 2]))


# ------------------------------------------------------------------------------------ kernels

def test_kernels_match_their_formulas():
    X = torch.randn(5, 3, generator=gen(0), dtype=torch.float64)
    Z = torch.randn(4, 3, generator=gen(1), dtype=torch.float64)
    d2 = ((X[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(svm.kernel_matrix("linear", X, Z), X @ Z.T)
    torch.testing.assert_close(svm.kernel_matrix("rbf", X, Z, gamma=0.7), torch.exp(-0.7 * d2))
    torch.testing.assert_close(svm.kernel_matrix("poly", X, Z, degree=2, gamma=0.5, coef0=1.0),
                               (0.5 * X @ Z.T + 1.0) ** 2)


def test_kernels_agree_with_scikit_learn():
    from sklearn.metrics.pairwise import polynomial_kernel, rbf_kernel

    X = torch.randn(6, 4, generator=gen(2), dtype=torch.float64)
    np.testing.assert_allclose(svm.rbf_kernel(X, X, gamma=0.3).numpy(), rbf_kernel(X.numpy(), gamma=0.3), atol=1e-13)
    np.testing.assert_allclose(svm.polynomial_kernel(X, X, degree=3, gamma=0.2, coef0=1.0).numpy(),
                               polynomial_kernel(X.numpy(), degree=3, gamma=0.2, coef0=1.0), rtol=1e-12)


def test_rbf_diagonal_is_exactly_one_and_gram_is_psd():
    X = 10 * torch.randn(30, 2, generator=gen(3), dtype=torch.float64)
    K = svm.rbf_kernel(X, X, gamma=0.01)
    assert (K.diagonal() - 1).abs().max() < 1e-12
    assert torch.linalg.eigvalsh(K).min() > -1e-10


def test_unknown_kernel_raises_naming_the_choices():
    X = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown kernel 'sigmoid'.*'linear', 'rbf', 'poly'"):
        svm.kernel_matrix("sigmoid", X, X)
    with pytest.raises(ValueError, match="unknown kernel 'gaussian'"):
        svm.SVC(kernel="gaussian").fit(*TWO_POINTS)


def test_kernel_rejects_mismatched_feature_counts_and_bad_parameters():
    with pytest.raises(ValueError, match="last dimension 2"):
        svm.kernel_matrix("linear", torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))
    X = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        svm.kernel_matrix("rbf", X, X, gamma=0.0)
    with pytest.raises(ValueError, match="degree must be >= 1"):
        svm.kernel_matrix("poly", X, X, degree=0)


# ------------------------------------------------------------------------- the two-point example

def test_two_points_give_the_closed_form_solution_exactly():
    model = svm.SVC(C=10.0, kernel="linear").fit(*TWO_POINTS)
    assert model.coef_.tolist() == [0.5, 0.5]
    assert model.intercept_ == -1.0
    assert model.alpha_.tolist() == [0.25, 0.25]
    assert 2 / float(model.coef_.norm()) == pytest.approx(2 * math.sqrt(2), rel=1e-15)
    assert model.dual_objective_ == 0.25                     # = ||w||^2 / 2: no duality gap
    assert model.predict([[0.0, 0.0], [2.0, 2.0], [0.9, 0.9], [1.1, 1.1]]).tolist() == [0, 1, 0, 1]


def test_two_points_soft_margin_caps_alpha_at_C():
    model = svm.SVC(C=0.1, kernel="linear").fit(*TWO_POINTS)
    assert model.alpha_.tolist() == [0.1, 0.1]
    torch.testing.assert_close(model.coef_, t64([0.2, 0.2]))
    # no free vector: b is the midpoint of the optimal interval [-1, 1 - 8C] (exercise svm-ex-two-soft)
    assert model.intercept_ == pytest.approx(-0.4, abs=1e-15)
    w = model.coef_
    for b in [-1.0, -0.4, 0.2]:                                             # the primal is flat in b there
        assert float(svm.primal_objective(w, b, t64(TWO_POINTS[0]), t64([-1.0, 1.0]), C=0.1)) == pytest.approx(
            0.5 * 0.08 + 0.1 * (2 - 0.8))


# ---------------------------------------------------------------------------------------- SMO

def test_smo_solution_satisfies_the_kkt_conditions():
    X, y = svm.moons(80, noise=0.25, generator=gen(4))
    C, tol = 1.0, 1e-6
    K = svm.rbf_kernel(X, X, gamma=2.0)
    res = svm.smo(K, y, C, tol=tol)
    assert res.converged and res.gap <= tol
    alpha = res.alpha
    assert (alpha >= 0).all() and (alpha <= C).all()
    assert abs(float(alpha @ y)) < 1e-10                                    # equality constraint
    margin = y * (K @ (alpha * y) + res.b)                                   # y_i f(x_i)
    assert (margin[alpha == 0] >= 1 - 1e-5).all()
    assert (margin[alpha == C] <= 1 + 1e-5).all()
    free = (alpha > 0) & (alpha < C)
    assert free.any() and torch.allclose(margin[free], torch.ones_like(margin[free]), atol=1e-5)


def test_smo_dual_is_not_above_primal_and_the_gap_shrinks_with_tol():
    X, y = svm.moons(60, noise=0.3, generator=gen(5))
    C = 2.0
    K = X @ X.T
    gaps = []
    for tol in [1e-2, 1e-6]:
        res = svm.smo(K, y, C, tol=tol)
        w = (res.alpha * y) @ X
        P = float(svm.primal_objective(w, res.b, X, y, C))
        D = float(svm.dual_objective(res.alpha, y, K))
        assert D <= P + 1e-9
        gaps.append(P - D)
    assert gaps[1] < gaps[0] and gaps[1] < 1e-4 * gaps[0] + 1e-6


@pytest.mark.parametrize("kernel,params", [("rbf", {"gamma": 1.0}), ("poly", {"gamma": 0.5, "degree": 3, "coef0": 1.0}),
                                           ("linear", {})])
def test_svc_matches_scikit_learn(kernel, params):
    from sklearn.svm import SVC as SkSVC

    X, y = svm.moons(50, noise=0.2, generator=gen(6))
    ours = svm.SVC(C=1.0, kernel=kernel, tol=1e-3, **params).fit(X, y)
    ref = SkSVC(C=1.0, kernel=kernel, tol=1e-3, **params).fit(X.numpy(), y.numpy())
    assert ours.support_.tolist() == sorted(ref.support_.tolist())
    d_ours, d_ref = ours.decision_function(X).numpy(), ref.decision_function(X.numpy())
    assert np.abs(d_ours - d_ref).max() < 1e-2
    assert (np.sign(d_ours) == np.sign(d_ref)).all()


def test_smo_warns_when_it_runs_out_of_iterations():
    X, y = svm.moons(40, noise=0.3, generator=gen(7))
    with pytest.warns(RuntimeWarning, match="max_iter=2"):
        res = svm.smo(X @ X.T, y, 1.0, max_iter=2)
    assert not res.converged and res.n_iter == 2


def test_smo_rejects_bad_input():
    K = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="only the labels -1 and \\+1"):
        svm.smo(K, t64([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="both classes"):
        svm.smo(K, t64([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="K must be \\(3, 3\\)"):
        svm.smo(torch.eye(2, dtype=torch.float64), t64([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="C must be > 0"):
        svm.smo(K, t64([1.0, -1.0, 1.0]), C=0.0)


# ------------------------------------------------------------------------------ the estimators

def test_svc_labels_map_to_classes_like_scikit_learn():
    from sklearn.svm import SVC as SkSVC

    X, y = svm.moons(40, noise=0.1, generator=gen(8))
    labels = torch.where(y > 0, 7, 3)                                       # any two class values
    model = svm.SVC(C=1.0, gamma=2.0).fit(X, labels)
    ref = SkSVC(C=1.0, gamma=2.0).fit(X.numpy(), labels.numpy())
    assert model.classes_.tolist() == [3, 7] == ref.classes_.tolist()
    assert model.predict(X).tolist() == ref.predict(X.numpy()).tolist()
    assert np.sign(model.decision_function(X).numpy()).tolist() == np.sign(ref.decision_function(X.numpy())).tolist()


def test_svc_support_vectors_are_sparse_and_w_is_their_combination():
    X, y = svm.moons(100, noise=0.1, generator=gen(9))
    model = svm.SVC(C=10.0, kernel="linear").fit(X, y)
    assert 0 < len(model.support_) < len(X) // 2
    torch.testing.assert_close(model.coef_, (model.alpha_ * y) @ X)        # eq. (svm-w)
    torch.testing.assert_close(model.decision_function(X), X @ model.coef_ + model.intercept_)


def test_gamma_scale_follows_scikit_learn():
    X, y = svm.moons(30, generator=gen(10))
    model = svm.SVC().fit(X, y)
    assert model.gamma_ == pytest.approx(1 / (2 * float(X.var(unbiased=False))))


def test_estimators_refuse_bad_input_with_clear_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        svm.SVC().predict([[0.0, 0.0]])
    with pytest.raises(NotFittedError, match="not fitted"):
        svm.LinearSVM().decision_function([[0.0, 0.0]])
    with pytest.raises(ValueError, match="exactly two classes"):
        svm.SVC().fit([[0.0], [1.0], [2.0]], [0, 1, 2])
    with pytest.raises(TypeError, match="numeric class labels"):
        svm.SVC().fit([[0.0], [1.0]], ["cat", "dog"])
    with pytest.raises(ValueError, match="3 rows but y has 2"):
        svm.SVC().fit([[0.0], [1.0], [2.0]], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        svm.SVC().fit([[0.0], [float("nan")]], [0, 1])
    model = svm.SVC(kernel="linear").fit(*TWO_POINTS)
    with pytest.raises(ValueError, match="3 features, but the estimator was fitted with 2"):
        model.decision_function([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="C must be > 0"):
        svm.SVC(C=-1.0).fit(*TWO_POINTS)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        svm.SVC(gamma=0.0).fit(*TWO_POINTS)
    with pytest.raises(ValueError, match="gamma must be 'scale' or a positive number"):
        svm.SVC(gamma="auto").fit(*TWO_POINTS)
    with pytest.raises(TypeError, match="degree must be an integer"):
        svm.SVC(kernel="poly", degree=2.5).fit(*TWO_POINTS)
    with pytest.raises(ValueError, match="loss must be one of"):
        svm.LinearSVM(loss="squared").fit(*TWO_POINTS)
    with pytest.raises(ValueError, match="nu = 0.9 is infeasible"):
        svm.NuSVC(nu=0.9).fit([[0.0], [1.0], [2.0], [3.0], [4.0]], [0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        svm.SVR(epsilon=-0.1).fit([[0.0], [1.0]], [0.0, 1.0])
    with pytest.raises(ValueError, match="y contains NaN"):
        svm.SVR().fit([[0.0], [1.0]], [0.0, float("nan")])
    with pytest.raises(ValueError, match="at least two classes"):
        svm.OneVsOne(svm.SVC()).fit([[0.0], [1.0]], [1, 1])
    with pytest.raises(TypeError, match="fit and decision_function"):
        svm.OneVsRest(object()).fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ValueError, match="both classes"):
        svm.platt_fit([0.1, 0.2], [1, 1])


def test_linear_svm_by_subgradient_descent_reaches_the_dual_optimum():
    X, y = svm.moons(120, noise=0.2, generator=gen(11))
    C = 0.5
    exact = svm.SVC(C=C, kernel="linear", tol=1e-6).fit(X, y)
    primal = svm.LinearSVM(C=C, lr=0.1, steps=1500).fit(X, y)
    P = min(primal.objective_)
    assert P >= exact.dual_objective_ - 1e-9                                # weak duality
    assert P - exact.dual_objective_ < 1e-3 * exact.dual_objective_
    torch.testing.assert_close(primal.coef_, exact.coef_, atol=0.02, rtol=0)
    assert abs(primal.intercept_ - exact.intercept_) < 0.02


def test_logistic_regression_option_fits_a_separating_line():
    X, y = svm.moons(100, noise=0.1, generator=gen(12))
    model = svm.LinearSVM(C=1.0, loss="logistic", steps=500).fit(X, y)
    assert (model.predict(X) == y).double().mean() > 0.8
    assert model.objective_[-1] < model.objective_[0]


def test_moons_are_balanced_and_seeded():
    X1, y1 = svm.moons(11, generator=gen(13))
    X2, y2 = svm.moons(11, generator=gen(13))
    assert torch.equal(X1, X2) and X1.shape == (11, 2)
    assert y1.tolist() == [1.0] * 5 + [-1.0] * 6


def test_draw_margins_draws_boundary_margins_and_circles_every_support_vector():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    X = torch.tensor([[0.0, 0.0], [2.0, 2.0], [-1.0, 0.5], [3.0, 2.5]], dtype=torch.float64)
    y = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    model = svm.SVC(C=10.0, kernel="linear").fit(X, y)
    ax = Figure().subplots()
    F = svm.draw_margins(ax, model, X, y, (-2, 4, -1, 3), resolution=50)
    assert F.shape == (50, 50)
    # f = x1/2 + x2/2 - 1 (the two-point solution): zero at (2, 0), +1 at (4, 0)
    assert float(F[0, 33]) == pytest.approx(0.5 * (-2 + 6 * 33 / 49) - 0.5 - 1)
    circles = ax.collections[-1]
    assert len(circles.get_offsets()) == len(model.support_) == 2



def test_init_stores_parameters_unchanged_and_fit_checks_them():
    model = svm.SVC(C=-1.0, kernel="nonsense", gamma="auto")               # no error yet: scikit-learn's rule
    assert model.get_params()["C"] == -1.0 and model.kernel == "nonsense" and model.gamma == "auto"
    assert not hasattr(model, "support_vectors_")
    model.set_params(C=2.0, kernel="linear", gamma="scale")
    assert model.fit(*TWO_POINTS).C == 2.0


@pytest.mark.parametrize("make", [lambda: svm.SVC(C=3.0, gamma=0.5), lambda: svm.NuSVC(nu=0.3),
                                  lambda: svm.SVR(C=2.0, epsilon=0.2), lambda: svm.LinearSVM(C=0.5, steps=50),
                                  lambda: svm.OneVsOne(svm.SVC(C=2.0)), lambda: svm.OneVsRest(svm.SVC()),
                                  lambda: svm.OneClassSVM(nu=0.2)])
def test_estimators_clone_with_the_same_parameters(make):
    from sklearn.base import clone

    model = make()
    copy = clone(model)
    assert type(copy) is type(model) and copy is not model
    params, copied = model.get_params(deep=False), copy.get_params(deep=False)
    assert params.keys() == copied.keys()
    for key in params:
        if hasattr(params[key], "get_params"):                              # a nested estimator, cloned too
            assert params[key].get_params() == copied[key].get_params()
        else:
            assert params[key] == copied[key]


def test_grid_search_and_cross_val_score_run_on_the_estimators():
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

    X, y = svm.moons(90, noise=0.25, generator=gen(20))
    Xn, yn = X.numpy(), y.numpy()
    scores = cross_val_score(svm.SVC(gamma=1.0), Xn, yn, cv=3)
    assert scores.shape == (3,) and (scores > 0.7).all()
    search = GridSearchCV(svm.SVC(), {"C": [0.1, 10.0], "gamma": [0.5, 2.0]}, cv=3).fit(Xn, yn)
    assert search.best_params_["C"] in (0.1, 10.0) and search.best_score_ > 0.8
    assert isinstance(search.predict(Xn), np.ndarray)
    assert cross_val_score(svm.NuSVC(nu=0.4, gamma=1.0), Xn, yn, cv=3).mean() > 0.7
    assert cross_val_score(svm.LinearSVM(steps=100), Xn, yn, cv=3).mean() > 0.6
    Xr = np.linspace(-2, 2, 60)[:, None]
    folds = KFold(3, shuffle=True, random_state=0)                          # interpolation, not extrapolation
    assert cross_val_score(svm.SVR(C=10.0, epsilon=0.05), Xr, np.sin(Xr[:, 0]), cv=folds).mean() > 0.9  # R^2
    Xi, yi = load_iris(return_X_y=True)
    search = GridSearchCV(svm.OneVsOne(svm.SVC()), {"estimator__C": [1.0, 10.0]}, cv=3).fit(Xi, yi)
    assert search.best_score_ > 0.9
    assert cross_val_score(svm.OneVsRest(svm.SVC(C=10.0)), Xi, yi, cv=3).mean() > 0.9


def test_numpy_in_numpy_out_and_tensor_in_tensor_out():
    X, y = svm.moons(40, noise=0.2, generator=gen(21))
    model = svm.SVC(gamma=1.0).fit(X.numpy(), y.numpy())
    assert isinstance(model.predict(X.numpy()), np.ndarray)
    assert isinstance(model.decision_function(X), torch.Tensor)
    np.testing.assert_array_equal(model.predict(X.numpy()), model.predict(X).numpy())
    same = svm.SVC(gamma=1.0).fit(X, y)
    torch.testing.assert_close(same.decision_function(X), model.decision_function(X))


# ------------------------------------------------------------------------------ extensions

def test_epsilon_insensitive_loss_is_flat_inside_the_tube():
    r = t64([-2.0, -0.1, 0.0, 0.05, 0.3])
    torch.testing.assert_close(svm.epsilon_insensitive_loss(r, 0.1), t64([1.9, 0.0, 0.0, 0.0, 0.2]))


def test_svr_matches_scikit_learn():
    from sklearn.svm import SVR as SkSVR

    X = torch.linspace(-3, 3, 60, dtype=torch.float64)[:, None]
    z = torch.sin(X[:, 0]) + 0.1 * torch.randn(60, generator=gen(22), dtype=torch.float64)
    ours = svm.SVR(C=2.0, epsilon=0.1, gamma=0.5, tol=1e-5).fit(X, z)
    ref = SkSVR(C=2.0, epsilon=0.1, gamma=0.5, tol=1e-5).fit(X.numpy(), z.numpy())
    assert ours.support_.tolist() == sorted(ref.support_.tolist())
    np.testing.assert_allclose(ours.predict(X).numpy(), ref.predict(X.numpy()), atol=1e-4)
    beta = torch.as_tensor(ref.dual_coef_[0])
    K = svm.rbf_kernel(X[ref.support_], X[ref.support_], gamma=0.5)
    ref_dual = float(svm.svr_dual_objective(beta, z[ref.support_], K, 0.1))
    assert ours.dual_objective_ == pytest.approx(ref_dual, rel=1e-6)
    assert (ours.alpha_ * ours.alpha_star_ == 0).all()                      # never both sides of the tube
    inside = (z - ours.predict(X)).abs() < 0.1 - 1e-3
    assert (ours.alpha_[inside] == 0).all() and (ours.alpha_star_[inside] == 0).all()


@pytest.mark.parametrize("nu", [0.3, 0.6])
def test_nu_svc_matches_scikit_learn_and_nu_bounds_the_fractions(nu):
    from sklearn.svm import NuSVC as SkNuSVC

    X, y = svm.moons(80, noise=0.3, generator=gen(23))
    ours = svm.NuSVC(nu=nu, gamma=1.0, tol=1e-5).fit(X, y)
    ref = SkNuSVC(nu=nu, gamma=1.0, tol=1e-5).fit(X.numpy(), y.numpy())
    assert ours.support_.tolist() == sorted(ref.support_.tolist())
    np.testing.assert_allclose(ours.decision_function(X).numpy(), ref.decision_function(X.numpy()), atol=1e-3)
    assert float(ours.alpha_.sum()) == pytest.approx(nu)                   # the second equality constraint
    same = svm.SVC(C=1 / (len(X) * ours.rho_), gamma=1.0, tol=1e-6).fit(X, y)   # eq. (svm-nu-c)
    torch.testing.assert_close(same.decision_function(X), ours.decision_function(X), atol=1e-3, rtol=0)
    margin_errors = float((y * ours.decision_function(X) < 1 - 1e-3).double().mean())   # 1e-3: solver slack
    at_bound = float((ours.alpha_ == 1 / len(X)).double().mean())
    assert margin_errors <= at_bound <= nu <= len(ours.support_) / len(X)


def test_one_vs_one_is_scikit_learns_multiclass_svc():
    from sklearn.datasets import load_iris
    from sklearn.svm import SVC as SkSVC

    X, y = load_iris(return_X_y=True)
    ours = svm.OneVsOne(svm.SVC(C=1.0, gamma=0.5, tol=1e-5)).fit(X, y)
    ref = SkSVC(C=1.0, gamma=0.5, tol=1e-5, decision_function_shape="ovo").fit(X, y)
    assert ours.pairs_ == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(ours.decision_function(X), -ref.decision_function(X), atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_one_vs_rest_predicts_the_largest_score():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    ovr = svm.OneVsRest(svm.SVC(C=1.0, gamma=0.5)).fit(X, y)
    scores = ovr.decision_function(X)
    assert scores.shape == (150, 3)
    np.testing.assert_array_equal(ovr.predict(X), scores.argmax(1))
    assert (ovr.predict(X) == y).mean() > 0.95


def test_platt_fit_matches_scikit_learns_sigmoid_calibration():
    from sklearn.calibration import _sigmoid_calibration

    f = torch.randn(300, generator=gen(24), dtype=torch.float64)
    y = (torch.rand(300, generator=gen(25), dtype=torch.float64) < torch.sigmoid(2 * f - 0.5)).long()
    A, B = svm.platt_fit(f, y)
    a_ref, b_ref = _sigmoid_calibration(f.numpy(), y.numpy())
    assert A == pytest.approx(a_ref, abs=1e-4) and B == pytest.approx(b_ref, abs=1e-4)
    assert -2.6 < A < -1.4                                                   # the slope that made the labels
    p = svm.platt_proba(f.numpy(), A, B)
    assert isinstance(p, np.ndarray) and ((0 < p) & (p < 1)).all()


def test_smo_step_checker_passes_the_right_step_and_fails_wrong_ones(capsys):
    assert svm.check_smo_step(svm._pair_step)

    def unclipped(alpha_i, alpha_j, y_i, y_j, g_i, g_j, a_ij, C):
        t = (g_i - g_j) / a_ij
        return alpha_i + y_i * t, alpha_j - y_j * t

    def same_sign(alpha_i, alpha_j, y_i, y_j, g_i, g_j, a_ij, C):
        t = min((g_i - g_j) / a_ij, C - alpha_i, alpha_j)
        return alpha_i + t, alpha_j - t

    assert not svm.check_smo_step(unclipped)
    assert not svm.check_smo_step(same_sign)
    assert "not yet" in capsys.readouterr().out


def test_one_smo_iteration_takes_the_reference_step():
    # on two points the first SMO iteration is the whole solution: (alpha_1, alpha_2) = (1/4, 1/4)
    X, y = t64(TWO_POINTS[0]), t64([-1.0, 1.0])
    K = X @ X.T
    g = y.clone()                                                           # g = -y * grad at alpha = 0
    # i: the "up" index with the largest g is point 2 (y = +1), j: point 1
    step = svm._pair_step(0.0, 0.0, 1.0, -1.0, float(g[1]), float(g[0]), float(K[0, 0] + K[1, 1] - 2 * K[0, 1]), 10.0)
    res = svm.smo(K, y, 10.0)
    assert res.n_iter == 1 and step == (float(res.alpha[1]), float(res.alpha[0])) == (0.25, 0.25)


def test_poly2_features_are_the_polynomial_kernel():
    X = torch.randn(7, 2, generator=gen(26), dtype=torch.float64)
    Phi = svm.poly2_features(X, 1.5)
    torch.testing.assert_close(Phi @ Phi.T, svm.polynomial_kernel(X, X, degree=2, gamma=1.0, coef0=1.5))
    with pytest.raises(ValueError, match="last dimension 2"):
        svm.poly2_features(torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("nu", [0.1, 0.5])
def test_one_class_svm_matches_scikit_learn_and_nu_bounds_the_outliers(nu):
    from sklearn.svm import OneClassSVM as SkOneClassSVM

    X = torch.randn(120, 2, generator=gen(27), dtype=torch.float64)
    ours = svm.OneClassSVM(nu=nu, gamma=0.5, tol=1e-5).fit(X)
    ref = SkOneClassSVM(nu=nu, gamma=0.5, tol=1e-5).fit(X.numpy())
    f = ours.decision_function(X.numpy())
    np.testing.assert_allclose(f, ref.decision_function(X.numpy()), atol=1e-4)
    assert ours.support_.tolist() == sorted(ref.support_.tolist())
    clear = np.abs(f) > 1e-3                                                # off the boundary itself
    np.testing.assert_array_equal(ours.predict(X.numpy())[clear], ref.predict(X.numpy())[clear])
    assert float(ours.alpha_.sum()) == pytest.approx(nu * len(X))
    assert (f < -1e-3).mean() <= nu <= len(ours.support_) / len(X)
    with pytest.raises(ValueError, match="nu must be in"):
        svm.OneClassSVM(nu=1.5).fit(X)


# ------------------------------------------------------------------ relevance vector machine

def _sinc(n, seed, noise=0.1):
    g = gen(seed)
    x = 20 * torch.rand(n, generator=g, dtype=torch.float64) - 10
    return x[:, None], torch.sinc(x / math.pi) + noise * torch.randn(n, generator=g, dtype=torch.float64)


def test_rvm_log_evidence_is_the_gaussian_marginal_likelihood():
    g = gen(30)
    Phi = torch.randn(12, 5, generator=g, dtype=torch.float64)
    t = torch.randn(12, generator=g, dtype=torch.float64)
    alpha, beta = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, 3.0
    C = torch.eye(12, dtype=torch.float64) / beta + Phi @ torch.diag(1 / alpha) @ Phi.T
    direct = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), C).log_prob(t)
    assert svm.rvm_log_evidence(Phi, t, alpha, beta) == pytest.approx(float(direct), rel=1e-10)


def test_rvm_updates_are_the_stationarity_conditions_of_the_evidence():
    # d log p / d log alpha_i = (gamma_i - alpha_i m_i^2) / 2 and
    # d log p / d log beta = (n - sum gamma - beta ||t - Phi m||^2) / 2, checked by central differences
    g = gen(31)
    Phi = torch.randn(15, 4, generator=g, dtype=torch.float64)
    t = torch.randn(15, generator=g, dtype=torch.float64)
    alpha, beta = torch.rand(4, generator=g, dtype=torch.float64) + 0.2, 2.0
    m, Sigma = svm.rvm_posterior(Phi, t, alpha, beta)
    gam = 1 - alpha * torch.diagonal(Sigma)
    h = 1e-6
    for i in range(4):
        up, down = alpha.clone(), alpha.clone()
        up[i], down[i] = alpha[i] * math.exp(h), alpha[i] * math.exp(-h)
        fd = (svm.rvm_log_evidence(Phi, t, up, beta) - svm.rvm_log_evidence(Phi, t, down, beta)) / (2 * h)
        assert fd == pytest.approx(0.5 * float(gam[i] - alpha[i] * m[i] ** 2), abs=1e-6)
    fd = (svm.rvm_log_evidence(Phi, t, alpha, beta * math.exp(h))
          - svm.rvm_log_evidence(Phi, t, alpha, beta * math.exp(-h))) / (2 * h)
    resid = float(((t - Phi @ m) ** 2).sum())
    assert fd == pytest.approx(0.5 * (15 - float(gam.sum()) - beta * resid), abs=1e-6)


def test_rvm_is_sparse_raises_the_evidence_and_predicts_sinc():
    X, t = _sinc(50, 32)
    rvm = svm.RelevanceVectorRegressor(gamma=0.1).fit(X, t)
    ev = np.array(rvm.log_evidence_)
    assert rvm.converged_ and np.all(np.diff(ev) >= -1e-9 * abs(ev[-1]))   # monotone evidence
    assert len(rvm.support_) <= 10 and len(rvm.dual_coef_) == len(rvm.support_)
    grid = torch.linspace(-9, 9, 200, dtype=torch.float64)[:, None]
    mean, std = rvm.predict(grid, return_std=True)
    assert float(((mean - torch.sinc(grid[:, 0] / math.pi)) ** 2).mean().sqrt()) < 0.1
    assert bool((std >= rvm.beta_ ** -0.5 - 1e-12).all())                  # noise is the floor
    assert 0.05 < rvm.beta_ ** -0.5 < 0.2                                   # the noise level, 0.1
    mean_np, std_np = rvm.predict(grid.numpy(), return_std=True)
    assert isinstance(std_np, np.ndarray) and np.allclose(mean_np, mean.numpy())


def test_rvm_follows_scikit_learn_conventions_and_rejects_bad_input():
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    X, t = _sinc(30, 33)
    model = svm.RelevanceVectorRegressor(gamma=0.2, alpha_max=1e5)
    assert clone(model).get_params() == model.get_params()
    assert cross_val_score(model, X.numpy(), t.numpy(), cv=3).mean() > 0.5
    with pytest.raises(ValueError, match="unknown kernel"):
        svm.RelevanceVectorRegressor(kernel="sigmoid").fit(X, t)
    with pytest.raises(TypeError, match="bias must be True or False"):
        svm.RelevanceVectorRegressor(bias=1).fit(X, t)
    with pytest.raises(ValueError, match="alpha_max"):
        svm.RelevanceVectorRegressor(alpha_max=-1.0).fit(X, t)
    with pytest.raises(ValueError, match="30 rows but y has 29"):
        model.fit(X, t[:-1])
    with pytest.raises(ValueError, match="NaN"):
        model.fit(X, t.clone().fill_(float("nan")))
    with pytest.raises(NotFittedError):
        svm.RelevanceVectorRegressor().predict(X)
    with pytest.raises(ValueError, match="alpha must be positive"):
        svm.rvm_posterior(torch.ones(3, 2, dtype=torch.float64), t64([1.0, 2.0, 3.0]), t64([1.0, 0.0]), 1.0)


# ------------------------------------------------------------------------------- ranking SVM

def _ranking_data(n_queries, seed, m=10, d=4):
    g = gen(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)[:d]
    X = torch.randn(n_queries * m, d, generator=g, dtype=torch.float64)
    u = X @ w + 0.3 * torch.randn(len(X), generator=g, dtype=torch.float64)
    y = torch.bucketize(u, t64([-1.0, 1.0])).to(torch.float64)              # grades 0, 1, 2
    return X, y, torch.arange(n_queries).repeat_interleave(m), w


def test_ranking_pairs_and_pairwise_accuracy():
    y, groups = t64([2.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 0, 1])
    assert sorted(map(tuple, svm.ranking_pairs(y).tolist())) == [(0, 1), (0, 2), (0, 3), (2, 1), (3, 1)]
    assert sorted(map(tuple, svm.ranking_pairs(y, groups).tolist())) == [(0, 1), (0, 2), (2, 1)]
    assert svm.pairwise_accuracy(t64([3.0, 1.0, 2.0, 0.0]), y) == pytest.approx(0.8)   # (3, 1) wrong
    assert svm.pairwise_accuracy(t64([0.0, 0.0, 0.0, 0.0]), y) == pytest.approx(0.5)   # ties: half
    with pytest.raises(ValueError, match="no pair"):
        svm.pairwise_accuracy(t64([1.0, 2.0]), t64([1.0, 1.0]))
    with pytest.raises(ValueError, match="groups must have one entry"):
        svm.ranking_pairs(y, torch.tensor([0, 1]))


def test_rank_svm_matches_linear_svc_on_the_pairs():
    from sklearn.svm import LinearSVC

    X, y, q, w_true = _ranking_data(4, 34)
    rank = svm.RankSVM(C=0.5).fit(X, y, groups=q)
    P = svm.ranking_pairs(y, q)
    D = (X[P[:, 0]] - X[P[:, 1]]).numpy()
    s = np.where(np.arange(len(D)) % 2 == 0, 1.0, -1.0)                     # flip half: two classes
    ref = LinearSVC(C=0.5, loss="hinge", fit_intercept=False, tol=1e-10, max_iter=1_000_000).fit(D * s[:, None], s)
    np.testing.assert_allclose(rank.coef_.numpy(), ref.coef_[0], atol=1e-4)
    assert abs(rank.svc_.intercept_) < 1e-4                                  # zero by symmetry
    assert rank.n_pairs_ == len(P)
    Xt, yt, qt, _ = _ranking_data(10, 35)
    assert rank.score(Xt, yt, qt) > 0.9


def test_rank_svm_rejects_bad_input():
    X, y, q, _ = _ranking_data(2, 36)
    with pytest.raises(ValueError, match="nothing to rank"):
        svm.RankSVM().fit(X, torch.ones(len(X), dtype=torch.float64))
    with pytest.raises(ValueError, match="C must be"):
        svm.RankSVM(C=0.0).fit(X, y)
    with pytest.raises(ValueError, match="rows but y has"):
        svm.RankSVM().fit(X, y[:-1])
    with pytest.raises(NotFittedError):
        svm.RankSVM().decision_function(X)


# ------------------------------------------------------------------- network on the hinge loss

def test_hinge_network_separates_two_blobs_and_checks_its_input():
    torch.manual_seed(0)
    g = gen(37)
    X = torch.cat([torch.randn(40, 2, generator=g, dtype=torch.float64) - 2,
                   torch.randn(40, 2, generator=g, dtype=torch.float64) + 2])
    y = torch.cat([torch.zeros(40), torch.ones(40)])
    net = svm.hinge_network(X, y, hidden=(8,), steps=150, generator=gen(38), device="cpu")
    with torch.no_grad():
        f = net(X.float())[:, 0]
    assert float(((f > 0).float() == y).float().mean()) > 0.95
    assert float(svm.hinge_loss(torch.where(y > 0, 1.0, -1.0) * f.double()).mean()) < 0.2
    with pytest.raises(ValueError, match="hidden"):
        svm.hinge_network(X, y, hidden=(0,))
    with pytest.raises(ValueError, match="exactly two classes"):
        svm.hinge_network(X, torch.arange(80.0) % 3)

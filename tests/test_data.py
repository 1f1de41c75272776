"""mlbook.data: toy 2-D distributions with exact densities, scikit-learn's bundled data sets."""

import math

import numpy as np
import pytest
import sklearn.datasets
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mlbook import data
from helpers import gen

MEANS = [[-1.0, 0.5], [2.0, 1.0], [0.0, -2.0]]
STDS = [0.5, 1.0, 0.3]
WEIGHTS = [0.2, 0.5, 0.3]


def grid(lo, hi, step):
    """Midpoints of a square grid of cells of side ``step`` on [lo, hi]^2, as (N, 2) float64."""
    c = np.arange(lo + step / 2, hi, step)
    xx, yy = np.meshgrid(c, c, indexing="ij")
    return torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1))


def mixture_logpdf_scipy(x, means, stds, weights):
    w = np.asarray(weights, float) / np.sum(weights)
    d = len(means[0])
    comps = [np.log(wk) + multivariate_normal(mean=m, cov=s * s * np.eye(d)).logpdf(x)
             for m, s, wk in zip(means, stds, w)]
    return logsumexp(np.stack(comps, 1), axis=1)


# ------------------------------------------------------------------ GaussianMixture

def test_mixture_log_prob_matches_scipy_in_2d():
    gm = data.GaussianMixture(MEANS, STDS, WEIGHTS)
    x = torch.randn(200, 2, generator=gen(1), dtype=torch.float64) * 2
    expected = mixture_logpdf_scipy(x.numpy(), MEANS, STDS, WEIGHTS)
    np.testing.assert_allclose(gm.log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_mixture_log_prob_matches_scipy_in_3d_with_unnormalised_weights():
    means = [[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]]
    gm = data.GaussianMixture(means, [0.7, 1.3], [3.0, 1.0])
    x = torch.randn(50, 3, generator=gen(2), dtype=torch.float64)
    expected = mixture_logpdf_scipy(x.numpy(), means, [0.7, 1.3], [3.0, 1.0])
    np.testing.assert_allclose(gm.log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_mixture_scalar_std_and_default_weights():
    gm = data.GaussianMixture(MEANS, 0.8)
    x = torch.randn(30, 2, generator=gen(3), dtype=torch.float64)
    expected = mixture_logpdf_scipy(x.numpy(), MEANS, [0.8] * 3, [1, 1, 1])
    np.testing.assert_allclose(gm.log_prob(x).numpy(), expected, rtol=1e-10)


def test_mixture_component_log_probs_sum_to_log_prob():
    gm = data.GaussianMixture(MEANS, STDS, WEIGHTS)
    x = torch.randn(20, 2, generator=gen(4), dtype=torch.float64)
    comp = gm.component_log_probs(x)
    assert comp.shape == (20, 3)
    d = 2
    for k in range(3):
        ref = np.log(WEIGHTS[k]) + multivariate_normal(MEANS[k], STDS[k] ** 2 * np.eye(d)).logpdf(x.numpy())
        np.testing.assert_allclose(comp[:, k].numpy(), ref, rtol=1e-10)


def test_mixture_density_integrates_to_one_on_a_grid():
    gm = data.GaussianMixture(MEANS, STDS, WEIGHTS)
    step = 0.02
    pts = grid(-6.0, 7.0, step)                       # > 5 standard deviations around every mean
    total = float(gm.log_prob(pts).exp().sum()) * step * step
    assert total == pytest.approx(1.0, abs=1e-6)


def test_mixture_log_prob_float32_close_to_float64():
    gm = data.GaussianMixture(MEANS, STDS, WEIGHTS)
    x = torch.randn(100, 2, generator=gen(5), dtype=torch.float64)
    lp32 = gm.log_prob(x.float())
    assert lp32.dtype == torch.float32
    np.testing.assert_allclose(lp32.double().numpy(), gm.log_prob(x).numpy(), rtol=1e-4, atol=1e-4)


def test_mixture_sample_moments_match_the_analytic_moments():
    gm = data.GaussianMixture(MEANS, STDS, WEIGHTS)
    n = 200_000
    x = gm.sample(n, generator=gen(6), device="cpu").double().numpy()
    m, s, w = np.array(MEANS), np.array(STDS), np.array(WEIGHTS)
    mean = w @ m
    cov = sum(wk * (sk ** 2 * np.eye(2) + np.outer(mk, mk)) for mk, sk, wk in zip(m, s, w)) - np.outer(mean, mean)

    mean_se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 4 * mean_se)
    c = x - mean                                                        # centre on the true mean
    prods = c[:, :, None] * c[:, None, :]                               # (n, 2, 2)
    cov_se = prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - cov) < 4 * cov_se)


def test_mixture_samples_pick_components_by_weight():
    # Far-apart components: each sample's nearest mean is its component.
    means = [[-20.0, 0.0], [0.0, 0.0], [20.0, 0.0]]
    gm = data.GaussianMixture(means, 1.0, [1.0, 2.0, 7.0])
    n = 50_000
    x = gm.sample(n, generator=gen(7), device="cpu")
    counts = np.bincount(torch.cdist(x.double(), torch.tensor(means, dtype=torch.float64)).argmin(1).numpy(), minlength=3)
    p = np.array([0.1, 0.2, 0.7])
    assert np.all(np.abs(counts / n - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_mixture_sample_shape_dtype_device():
    x = data.GaussianMixture(MEANS, STDS).sample(17, generator=gen(), device="cpu")
    assert x.shape == (17, 2) and x.dtype == torch.float32 and x.device.type == "cpu"


def test_mixture_reports_its_dimension_and_has_log_prob():
    gm = data.GaussianMixture([[0.0, 0.0, 0.0, 0.0]])
    assert gm.dim == 4
    assert gm.has_log_prob


# ------------------------------------------------------------------ gaussian_ring

@pytest.mark.parametrize("k, radius, std", [(8, 2.0, 0.2), (5, 1.5, 0.1), (1, 3.0, 0.5)])
def test_gaussian_ring_geometry(k, radius, std):
    ring = data.gaussian_ring(k, radius, std)
    means = ring.means.numpy()
    assert means.shape == (k, 2)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), radius, rtol=1e-12)
    angles = np.sort(np.mod(np.arctan2(means[:, 1], means[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(angles, 2 * np.pi * np.arange(k) / k, atol=1e-12)
    np.testing.assert_allclose(ring.stds.numpy(), std)
    np.testing.assert_allclose(ring.weights.numpy(), 1.0 / k)


def test_gaussian_ring_samples_lie_near_the_circle():
    x = data.gaussian_ring(8, 2.0, 0.05).sample(5000, generator=gen(), device="cpu")
    r = x.double().norm(dim=1)
    assert float((r - 2.0).abs().max()) < 6 * 0.05 * math.sqrt(2)


@pytest.mark.parametrize("kwargs, error", [({"k": 0}, ValueError), ({"k": 2.5}, TypeError),
                                           ({"radius": -1.0}, ValueError), ({"std": 0.0}, ValueError)])
def test_gaussian_ring_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        data.gaussian_ring(**kwargs)


# ------------------------------------------------------------------ Checkerboard

@pytest.mark.parametrize("squares, half_width", [(4, 2.0), (3, 1.0), (5, 1.3)])
def test_checkerboard_density_integrates_to_one(squares, half_width):
    cb = data.Checkerboard(squares, half_width)
    cell = 2 * half_width / squares
    step = cell / 10                                      # cell edges fall between midpoints
    lo = -half_width - cell
    pts = grid(lo, lo + (squares + 2) * cell - step / 4, step)
    assert len(pts) == (10 * (squares + 2)) ** 2
    assert float(cb.log_prob(pts).exp().sum()) * step * step == pytest.approx(1.0, rel=1e-9)


def _cell_centres(squares, half_width, dark):
    cell = 2 * half_width / squares
    ij = [(i, j) for i in range(squares) for j in range(squares) if ((i + j) % 2 == 0) == dark]
    return torch.tensor([[(i + 0.5) * cell - half_width, (j + 0.5) * cell - half_width] for i, j in ij],
                        dtype=torch.float64)


def test_checkerboard_density_is_one_over_dark_area_on_dark_squares():
    cb = data.Checkerboard(4, 2.0)                        # board area 16, dark half of it is 8
    lp = cb.log_prob(_cell_centres(4, 2.0, dark=True))
    np.testing.assert_allclose(lp.numpy(), -math.log(8.0), rtol=1e-12)


def test_checkerboard_odd_board_has_more_dark_squares():
    cb = data.Checkerboard(3, 1.5)                        # 5 dark unit squares
    np.testing.assert_allclose(cb.log_prob(_cell_centres(3, 1.5, dark=True)).numpy(), -math.log(5.0))


def test_checkerboard_is_minus_infinity_on_light_squares_and_off_the_board():
    cb = data.Checkerboard(4, 2.0)
    light = cb.log_prob(_cell_centres(4, 2.0, dark=False))
    outside = cb.log_prob(torch.tensor([[2.5, 0.5], [-2.1, -1.5], [0.5, 3.0], [10.0, -10.0]]))
    assert torch.all(light == -math.inf)
    assert torch.all(outside == -math.inf)


def test_checkerboard_samples_only_on_dark_squares_and_uniformly():
    squares, hw = 4, 2.0
    cb = data.Checkerboard(squares, hw)
    n = 40_000
    x = cb.sample(n, generator=gen(8), device="cpu").double().numpy()
    assert np.all(np.abs(x) <= hw)
    ij = np.floor((x + hw) / (2 * hw / squares)).astype(int)
    assert np.all((ij.sum(1) % 2) == 0)
    counts = np.bincount(ij[:, 0] * squares + ij[:, 1], minlength=squares * squares)
    dark = counts[[i * squares + j for i in range(squares) for j in range(squares) if (i + j) % 2 == 0]]
    p = 1 / len(dark)
    assert np.all(np.abs(dark / n - p) < 4 * math.sqrt(p * (1 - p) / n))
    assert np.all(np.isfinite(cb.log_prob(torch.from_numpy(x)).numpy()))


def test_checkerboard_extreme_uniform_draws_stay_on_their_dark_square(monkeypatch):
    below_one = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
    real_rand = torch.rand

    def rand_at_top(*shape, generator=None, **kwargs):
        return torch.full_like(real_rand(*shape, generator=generator, **kwargs), below_one)

    cb = data.Checkerboard(4, 2.0)
    monkeypatch.setattr(torch, "rand", rand_at_top)
    x = cb.sample(64, generator=gen(9), device="cpu")
    monkeypatch.undo()
    assert torch.isfinite(cb.log_prob(x)).all()


def test_checkerboard_rejects_bad_arguments():
    with pytest.raises(ValueError, match="squares"):
        data.Checkerboard(1)
    with pytest.raises(ValueError, match="half_width"):
        data.Checkerboard(4, 0.0)


# ------------------------------------------------------------------ curves without a density

CURVES = [data.Moons, data.Rings, data.SwissRoll]


@pytest.mark.parametrize("cls", CURVES)
def test_curve_samples_have_shape_dtype_device(cls):
    x = cls().sample(123, generator=gen(), device="cpu")
    assert x.shape == (123, 2)
    assert x.dtype == torch.float32
    assert x.device.type == "cpu"


@pytest.mark.parametrize("cls", CURVES + [data.Checkerboard, lambda: data.gaussian_ring()])
def test_sampling_is_deterministic_for_a_seeded_generator(cls):
    dist = cls()
    a = dist.sample(50, generator=gen(11), device="cpu")
    b = dist.sample(50, generator=gen(11), device="cpu")
    c = dist.sample(50, generator=gen(12), device="cpu")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("cls", CURVES)
def test_curves_have_no_log_prob(cls):
    dist = cls()
    assert not dist.has_log_prob
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        dist.log_prob(torch.zeros(3, 2))


def test_noiseless_moons_lie_on_two_unit_half_circles():
    x = data.Moons(noise=0.0).sample(2000, generator=gen(), device="cpu").double() + torch.tensor([0.5, 0.25])
    upper = (x[:, 0].square() + x[:, 1].square() - 1).abs() < 1e-5
    lower = ((x[:, 0] - 1).square() + (x[:, 1] - 0.5).square() - 1).abs() < 1e-5
    assert torch.all(upper | lower)
    assert torch.all(x[upper, 1] >= -1e-6) and torch.all(x[lower, 1] <= 0.5 + 1e-6)
    assert 0.45 < float(upper.double().mean()) < 0.55


def test_moons_are_centred():
    x = data.Moons().sample(100_000, generator=gen(), device="cpu").double()
    assert torch.all(x.mean(0).abs() < 0.01)


def test_noiseless_rings_pick_radii_in_proportion_to_arc_length():
    radii = (1.0, 3.0)
    x = data.Rings(radii, noise=0.0).sample(20_000, generator=gen(), device="cpu").double()
    r = x.norm(dim=1)
    on_small, on_large = (r - 1).abs() < 1e-5, (r - 3).abs() < 1e-5
    assert torch.all(on_small | on_large)
    p = 0.75
    assert abs(float(on_large.double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / 20_000)


def test_noiseless_swiss_roll_lies_on_its_spiral():
    x = data.SwissRoll(noise=0.0).sample(1000, generator=gen(), device="cpu").double() * 5
    t = x.norm(dim=1)                                          # |t (cos t, sin t)| = t
    assert float(t.min()) >= 1.5 * math.pi - 1e-4 and float(t.max()) <= 4.5 * math.pi + 1e-4
    np.testing.assert_allclose(x[:, 0].numpy(), (t * t.cos()).numpy(), atol=1e-3)
    np.testing.assert_allclose(x[:, 1].numpy(), (t * t.sin()).numpy(), atol=1e-3)


@pytest.mark.parametrize("make", [lambda: data.Moons(noise=-0.1), lambda: data.SwissRoll(noise=-1.0),
                                  lambda: data.Rings(noise=-0.1), lambda: data.Rings(radii=()),
                                  lambda: data.Rings(radii=(1.0, -2.0)), lambda: data.Rings(radii=[[1.0]])])
def test_curves_reject_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------------ toy()

@pytest.mark.parametrize("name, cls", [("gaussian_ring", data.GaussianMixture), ("moons", data.Moons),
                                       ("rings", data.Rings), ("checkerboard", data.Checkerboard),
                                       ("swiss_roll", data.SwissRoll)])
def test_toy_builds_by_name(name, cls):
    assert isinstance(data.toy(name), cls)


def test_toy_passes_keyword_arguments():
    assert data.toy("moons", noise=0.3).noise == 0.3
    assert len(data.toy("gaussian_ring", k=5).weights) == 5


def test_toy_unknown_name_lists_the_options():
    with pytest.raises(ValueError) as err:
        data.toy("spiral")
    for name in ("gaussian_ring", "moons", "rings", "checkerboard", "swiss_roll"):
        assert repr(name) in str(err.value)
    assert "'spiral'" in str(err.value)


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("kwargs, match", [
    ({"means": MEANS, "stds": [-0.5, 1.0, 1.0]}, "stds must all be > 0"),
    ({"means": MEANS, "stds": 0.0}, "stds must all be > 0"),
    ({"means": MEANS, "stds": [1.0, 1.0]}, r"stds must be a number or have shape \(3,\)"),
    ({"means": MEANS, "weights": [0.5, 0.5]}, r"weights must have shape \(3,\)"),
    ({"means": MEANS, "weights": [[0.2, 0.3, 0.5]]}, r"weights must have shape \(3,\)"),
    ({"means": MEANS, "weights": [0.5, -0.1, 0.6]}, "non-negative"),
    ({"means": MEANS, "weights": [0.0, 0.0, 0.0]}, "positive sum"),
    ({"means": [0.0, 1.0]}, "means must have 2 dimensions"),
    ({"means": np.zeros((0, 2))}, "means needs at least 1 rows"),
])
def test_mixture_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.GaussianMixture(**kwargs)


@pytest.mark.parametrize("n, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_sample_rejects_bad_n(n, error):
    with pytest.raises(error, match="n must"):
        data.Moons().sample(n)


@pytest.mark.parametrize("dist", [data.GaussianMixture(MEANS), data.Checkerboard()], ids=["mixture", "board"])
@pytest.mark.parametrize("x, error, match", [
    (torch.zeros(5, 3), ValueError, "last dimension 2"),
    (torch.zeros(5), ValueError, "2 dimensions"),
    (torch.zeros(2, 5, 2), ValueError, "2 dimensions"),
    (torch.zeros(5, 2, dtype=torch.long), TypeError, "floating-point"),
    (np.zeros((5, 2)), TypeError, "torch.Tensor"),
])
def test_log_prob_rejects_points_of_the_wrong_shape_or_type(dist, x, error, match):
    with pytest.raises(error, match=match):
        dist.log_prob(x)


# ------------------------------------------------------------------ scikit-learn's data sets

@pytest.mark.parametrize("name", ["digits", "iris", "breast_cancer", "wine"])
def test_load_dataset_matches_sklearn(name):
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    ds = data.load_dataset(name, device="cpu")
    assert ds.X.shape == bunch.data.shape and ds.y.shape == bunch.target.shape
    assert ds.X.dtype == torch.float32 and ds.y.dtype == torch.long
    np.testing.assert_array_equal(ds.X.numpy(), bunch.data.astype(np.float32))
    np.testing.assert_array_equal(ds.y.numpy(), bunch.target)
    assert ds.target_names == [str(t) for t in bunch.target_names]
    assert len(ds.target_names) == len(np.unique(bunch.target))
    assert ds.X.device.type == "cpu"


def test_load_dataset_keeps_feature_names():
    ds = data.load_dataset("iris", device="cpu")
    assert ds.feature_names == list(sklearn.datasets.load_iris().feature_names)
    assert "classes=3" in repr(ds)


def test_load_dataset_float64_is_exact():
    ds = data.load_dataset("wine", device="cpu", dtype=torch.float64)
    np.testing.assert_array_equal(ds.X.numpy(), sklearn.datasets.load_wine().data)


def test_load_dataset_unknown_name_lists_the_options():
    with pytest.raises(ValueError, match="'digits', 'iris', 'breast_cancer', 'wine'"):
        data.load_dataset("mnist")


# ------------------------------------------------------------------ train_test_split

def _indexed(n):
    X = torch.arange(n, dtype=torch.float64)[:, None] * torch.tensor([1.0, -1.0], dtype=torch.float64)
    return X, torch.arange(n) * 10


@pytest.mark.parametrize("n, fraction, n_test", [(100, 0.25, 25), (10, 0.3, 3), (7, 0.5, 4),
                                                  (2, 0.5, 1), (50, 0.001, 1), (50, 0.999, 49)])
def test_split_sizes(n, fraction, n_test):
    X, y = _indexed(n)
    X_tr, X_te, y_tr, y_te = data.train_test_split(X, y, test_fraction=fraction, generator=gen())
    assert (len(X_tr), len(X_te), len(y_tr), len(y_te)) == (n - n_test, n_test, n - n_test, n_test)
    assert X_tr.shape[1:] == X.shape[1:]


def test_split_is_a_disjoint_cover_that_keeps_rows_paired():
    X, y = _indexed(40)
    X_tr, X_te, y_tr, y_te = data.train_test_split(X, y, generator=gen())
    ids_tr, ids_te = X_tr[:, 0].long(), X_te[:, 0].long()
    assert set(ids_tr.tolist()).isdisjoint(ids_te.tolist())
    assert sorted(ids_tr.tolist() + ids_te.tolist()) == list(range(40))
    assert torch.equal(y_tr, ids_tr * 10) and torch.equal(y_te, ids_te * 10)
    assert torch.equal(X_tr[:, 1], -X_tr[:, 0])


def test_split_is_deterministic_for_a_seeded_generator_and_shuffles():
    X, y = _indexed(60)
    a = data.train_test_split(X, y, generator=gen(3))
    b = data.train_test_split(X, y, generator=gen(3))
    c = data.train_test_split(X, y, generator=gen(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(a[1][:, 0], torch.arange(60, dtype=torch.float64)[:15])   # not just a slice


@pytest.mark.parametrize("fraction, error", [(0.0, ValueError), (1.0, ValueError), (1.5, ValueError),
                                             (-0.2, ValueError), (float("nan"), ValueError), ("0.2", TypeError)])
def test_split_rejects_bad_test_fraction(fraction, error):
    X, y = _indexed(10)
    with pytest.raises(error, match="test_fraction"):
        data.train_test_split(X, y, test_fraction=fraction)


def test_split_rejects_mismatched_or_bad_inputs():
    X, y = _indexed(10)
    with pytest.raises(ValueError, match="same number of rows"):
        data.train_test_split(X, y[:9])
    with pytest.raises(ValueError, match="at least 2 rows"):
        data.train_test_split(X[:1], y[:1])
    with pytest.raises(ValueError, match="y must have 1 dimensions"):
        data.train_test_split(X, y[:, None])
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        data.train_test_split(X.numpy(), y)

"""mlbook.metrics: MMD, sliced Wasserstein, and the noise floor of a metric."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from mlbook import data, metrics
from helpers import gen


def normal(n, d=2, shift=0.0, seed=0):
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64) + shift


def mmd_reference(x, y, bandwidths):
    """Double-loop V-statistic MMD with the summed Gaussian kernel, straight from the definition."""
    def k(a, b):
        sq = float(np.sum((a - b) ** 2))
        return sum(math.exp(-sq / (2 * h * h)) for h in bandwidths)

    def mean_k(a, b):
        return sum(k(ai, bj) for ai in a for bj in b) / (len(a) * len(b))

    return math.sqrt(max(mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y), 0.0))


# ------------------------------------------------------------------ mmd

def test_mmd_matches_a_brute_force_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2)), rng.normal(0.7, 1.2, size=(4, 2))
    bw = (0.3, 1.0)
    got = metrics.mmd(torch.from_numpy(x), torch.from_numpy(y), bandwidths=bw)
    assert got == pytest.approx(mmd_reference(x, y, bw), rel=1e-9)


def test_mmd_default_bandwidths_match_the_brute_force_reference():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(3, 3)) + [0.0, 1.0, 0.0]
    got = metrics.mmd(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert got == pytest.approx(mmd_reference(x, y, (0.1, 0.2, 0.5, 1.0, 2.0)), rel=1e-5)


def test_mmd_of_identical_samples_is_zero():
    x = normal(200)
    assert metrics.mmd(x, x.clone()) == pytest.approx(0.0, abs=1e-6)


def test_mmd_is_symmetric():
    x, y = normal(100, seed=1), normal(80, shift=0.5, seed=2)
    assert metrics.mmd(x, y) == pytest.approx(metrics.mmd(y, x), rel=1e-10)


def test_mmd_is_positive_for_shifted_samples_and_above_the_same_distribution_value():
    x, same, shifted = normal(300, seed=1), normal(300, seed=2), normal(300, shift=1.0, seed=3)
    assert metrics.mmd(x, shifted) > 2 * metrics.mmd(x, same) > 0


def test_mmd_grows_with_the_shift():
    x = normal(300, seed=1)
    values = [metrics.mmd(x, normal(300, shift=s, seed=2)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_mmd_returns_a_python_float():
    assert isinstance(metrics.mmd(normal(10), normal(10, seed=1)), float)


# ------------------------------------------------------------------ sliced_wasserstein

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sliced_w1_in_one_dimension_is_scipy_wasserstein(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=60), rng.exponential(size=60)
    got = metrics.sliced_wasserstein(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None],
                                     p=1, n_projections=7)
    assert got == pytest.approx(wasserstein_distance(x, y), rel=1e-10)


def test_sliced_w2_in_one_dimension_is_the_sorted_quantile_distance():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=40), rng.uniform(-1, 3, size=40)
    expected = math.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    got = metrics.sliced_wasserstein(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], p=2)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [2, 3])
def test_sliced_w2_of_a_shift_is_norm_over_sqrt_dimension(d):
    # W2 between theta.x and theta.(x + v) is |theta.v|; E[(theta.v)^2] = |v|^2 / d for uniform theta.
    x = normal(500, d=d)
    v = torch.zeros(d, dtype=torch.float64)
    v[0], v[1] = 3.0, -4.0
    got = metrics.sliced_wasserstein(x, x + v, n_projections=4096)
    assert got == pytest.approx(5.0 / math.sqrt(d), rel=0.03)


def test_sliced_wasserstein_of_identical_samples_is_zero():
    x = normal(100)
    assert metrics.sliced_wasserstein(x, x[torch.randperm(100, generator=gen())]) == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_is_deterministic_for_a_fixed_seed():
    x, y = normal(100, seed=1), normal(120, shift=0.3, seed=2)
    a = metrics.sliced_wasserstein(x, y, n_projections=16, seed=5)
    assert a == metrics.sliced_wasserstein(x, y, n_projections=16, seed=5)
    assert a != metrics.sliced_wasserstein(x, y, n_projections=16, seed=6)


def test_sliced_wasserstein_grows_with_the_shift():
    x = normal(400, seed=1)
    values = [metrics.sliced_wasserstein(x, normal(400, shift=s, seed=2)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


# ------------------------------------------------------------------ noise_floor

def test_noise_floor_is_mean_and_sample_std_of_the_metric():
    values = iter([1.0, 2.0, 4.0, 7.0])
    calls = []

    def sample(n, generator=None):
        calls.append(n)
        return torch.zeros(n, 2)

    mean, std = metrics.noise_floor(lambda a, b: next(values), sample, 13, repeats=4)
    assert mean == pytest.approx(np.mean([1, 2, 4, 7]))
    assert std == pytest.approx(np.std([1, 2, 4, 7], ddof=1))
    assert calls == [13] * 8                                   # two fresh data sets per repeat


def test_noise_floor_of_sliced_wasserstein_is_positive_and_shrinks_with_n():
    ring = data.gaussian_ring()
    small = metrics.noise_floor(metrics.sliced_wasserstein, ring.sample, 50, repeats=5, generator=gen(1))
    large = metrics.noise_floor(metrics.sliced_wasserstein, ring.sample, 2000, repeats=5, generator=gen(2))
    assert isinstance(small, tuple) and len(small) == 2
    assert small[0] > 0 and small[1] > 0
    assert large[0] < small[0] / 2                             # roughly 1/sqrt(n)


def test_noise_floor_is_deterministic_for_a_seeded_generator():
    ring = data.gaussian_ring()
    a = metrics.noise_floor(metrics.mmd, ring.sample, 100, repeats=3, generator=gen(4))
    b = metrics.noise_floor(metrics.mmd, ring.sample, 100, repeats=3, generator=gen(4))
    assert a == b


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("metric", [metrics.mmd, metrics.sliced_wasserstein])
@pytest.mark.parametrize("x, y, error, match", [
    (torch.zeros(5, 2), torch.zeros(5, 3), ValueError, "same number of columns, got 2 and 3"),
    (torch.zeros(5), torch.zeros(5), ValueError, "x must have 2 dimensions"),
    (torch.zeros(5, 2), torch.zeros(5), ValueError, "y must have 2 dimensions"),
    (torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2), TypeError, "x must be a floating-point tensor"),
    (torch.zeros(5, 2), torch.zeros(5, 2, dtype=torch.int32), TypeError, "y must be a floating-point tensor"),
    (torch.zeros(0, 2), torch.zeros(5, 2), ValueError, "x needs at least 1 rows"),
    (np.zeros((5, 2)), torch.zeros(5, 2), TypeError, "x must be a torch.Tensor"),
])
def test_metrics_reject_bad_samples(metric, x, y, error, match):
    with pytest.raises(error, match=match):
        metric(x, y)


@pytest.mark.parametrize("bandwidths, error, match", [
    ((), ValueError, "bandwidths must not be empty"),
    ((1.0, -0.5), ValueError, "bandwidths must be > 0"),
    ((1.0, 0.0), ValueError, "bandwidths must be > 0"),
    (("1",), TypeError, "bandwidths must be a real number"),
])
def test_mmd_rejects_bad_bandwidths(bandwidths, error, match):
    with pytest.raises(error, match=match):
        metrics.mmd(torch.zeros(3, 2), torch.ones(3, 2), bandwidths=bandwidths)


@pytest.mark.parametrize("kwargs, error", [({"n_projections": 0}, ValueError), ({"p": 0}, ValueError),
                                           ({"p": 1.5}, TypeError), ({"seed": -1}, ValueError)])
def test_sliced_wasserstein_rejects_bad_options(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        metrics.sliced_wasserstein(torch.zeros(3, 2), torch.ones(3, 2), **kwargs)


def test_noise_floor_rejects_bad_arguments():
    sample = data.gaussian_ring().sample
    with pytest.raises(ValueError, match="repeats must be >= 2"):
        metrics.noise_floor(metrics.mmd, sample, 10, repeats=1)
    with pytest.raises(ValueError, match="n must be >= 2"):
        metrics.noise_floor(metrics.mmd, sample, 1)
    with pytest.raises(TypeError, match="must be callables"):
        metrics.noise_floor("mmd", sample, 10)
    with pytest.raises(TypeError, match="must be callables"):
        metrics.noise_floor(metrics.mmd, torch.zeros(10, 2), 10)


def test_wasserstein1_to_cdf_of_a_point_mass_and_a_shift():
    from mlbook.data import GaussianMixture

    mix = GaussianMixture(means=[[0.0]], stds=1.0)
    # A point mass at 0 against N(0, 1): W1 = E|Z| = sqrt(2 / pi).
    w = metrics.wasserstein1_to_cdf(torch.zeros(10, 1, dtype=torch.float64), mix.cdf, support=(-8, 8))
    assert abs(w - math.sqrt(2 / math.pi)) < 1e-4
    # A large sample of N(0.3, 1) against N(0, 1): W1 = 0.3 up to sampling noise.
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.3
    assert abs(metrics.wasserstein1_to_cdf(x, mix.cdf, support=(-8, 8)) - 0.3) < 0.01


def test_wasserstein1_to_cdf_rejects_bad_input():
    from mlbook.data import GaussianMixture

    cdf = GaussianMixture(means=[[0.0]]).cdf
    with pytest.raises(ValueError, match="shape"):
        metrics.wasserstein1_to_cdf(torch.zeros(5, 2), cdf, support=(-1, 1))
    with pytest.raises(ValueError, match="lo < hi"):
        metrics.wasserstein1_to_cdf(torch.zeros(5), cdf, support=(1, -1))


def test_mixture_cdf_matches_scipy_and_needs_one_dimension():
    from scipy import stats

    from mlbook.data import GaussianMixture

    mix = GaussianMixture(means=[[-1.0], [2.0]], stds=[0.5, 1.5], weights=[0.3, 0.7])
    z = torch.linspace(-4, 6, 11, dtype=torch.float64)
    want = 0.3 * stats.norm.cdf(z, -1, 0.5) + 0.7 * stats.norm.cdf(z, 2, 1.5)
    assert torch.allclose(mix.cdf(z), torch.as_tensor(want), atol=1e-12)
    with pytest.raises(ValueError, match="1-D mixture"):
        GaussianMixture(means=[[0.0, 0.0]]).cdf(z)


# ------------------------------------------------------------------ mode_check

RING = data.gaussian_ring(k=8, radius=2.0, std=0.2)


def test_mode_statistics_of_a_hand_made_sample():
    mix = data.GaussianMixture([[0.0, 0.0], [10.0, 0.0]], 1.0)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [10.0, 3.0]], dtype=torch.float64)
    for assign in ("nearest", "posterior"):
        w, s = metrics.mode_statistics(x, mix, assign=assign)
        assert w.tolist() == pytest.approx([0.75, 0.25], abs=1e-12)
        # mode 0: squared distances 1, 1, 4 over 3 points in d = 2; mode 1: 9 over 1 point
        assert s.tolist() == pytest.approx([math.sqrt(6 / 6), math.sqrt(9 / 2)], abs=1e-9)


def test_posterior_statistics_are_unbiased_for_overlapping_modes():
    # modes one std apart: nearest-mode assignment is biased, the posterior is not
    mix = data.GaussianMixture([[0.0], [1.0]], [1.0, 0.5], weights=[0.3, 0.7])
    x = mix.sample(200_000, generator=gen(0)).double()
    w, s = metrics.mode_statistics(x, mix)
    assert w.tolist() == pytest.approx([0.3, 0.7], abs=0.005)
    assert s.tolist() == pytest.approx([1.0, 0.5], rel=0.01)
    w_near, _ = metrics.mode_statistics(x, mix, assign="nearest")
    # nearest mean: x < 0.5, so mode 0 gets 0.3 Phi(0.5) + 0.7 Phi(-1) = 0.318, not 0.3
    from scipy.stats import norm
    assert float(w_near[0]) == pytest.approx(0.3 * norm.cdf(0.5) + 0.7 * norm.cdf(-1), abs=0.004)


def test_exact_samples_pass_and_distorted_ones_fail():
    g = gen(1)
    exact = [metrics.mode_check(RING.sample(2000, generator=g), RING) for _ in range(20)]
    assert all(c.passed for c in exact), [c for c in exact if not c]
    wide = metrics.distorted_mixture(RING, spread=1.5)
    light = metrics.distorted_mixture(RING, mode=3, weight=2 / 3)
    for bad in (wide, light):
        checks = [metrics.mode_check(bad.sample(2000, generator=g), RING) for _ in range(20)]
        assert not any(c.passed for c in checks), [c for c in checks if c]
    c = metrics.mode_check(wide.sample(2000, generator=g), RING)
    assert c.spread_ratio == pytest.approx(1.5, rel=0.06) and c.weight_error < 0.2


def test_a_collapsed_mode_fails_with_nan_spread():
    x = RING.subset([0, 1, 2, 3, 4, 5, 6]).sample(2000, generator=gen(2))
    c = metrics.mode_check(x, RING, assign="nearest")
    assert not c.passed and c.weight_error == pytest.approx(1.0) and math.isnan(c.spread_ratio)
    assert len(c.rows()) == 8 and "passed=False" in repr(c)


def test_distorted_mixture_weights():
    m = metrics.distorted_mixture(RING, spread=2.0, mode=2, weight=4 / 3)
    assert float(m.weights[2]) == pytest.approx(RING.weights[2] * 4 / 3)
    assert float(m.weights.sum()) == pytest.approx(1.0)
    assert m.stds.tolist() == pytest.approx([0.4] * 8)


@pytest.mark.parametrize("call, error", [
    (lambda: metrics.mode_check(RING.sample(10).numpy(), RING), TypeError),
    (lambda: metrics.mode_check(torch.zeros(10, 3), RING), ValueError),
    (lambda: metrics.mode_check(torch.full((10, 2), float("nan")), RING), ValueError),
    (lambda: metrics.mode_check(RING.sample(10), "ring"), TypeError),
    (lambda: metrics.mode_check(RING.sample(10), RING, assign="hard"), ValueError),
    (lambda: metrics.mode_check(RING.sample(10), RING, spread_tol=0.8), ValueError),
    (lambda: metrics.mode_check(RING.sample(10), RING, weight_tol=-1), ValueError),
    (lambda: metrics.distorted_mixture(RING, mode=8), ValueError),
    (lambda: metrics.distorted_mixture(RING, weight=9.0), ValueError),
    (lambda: metrics.distorted_mixture(data.Moons()), TypeError),
])
def test_mode_check_bad_input(call, error):
    with pytest.raises(error):
        call()

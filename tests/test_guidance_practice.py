"""mlbook.sampling: dynamic thresholding and the guidance interval, on cases worked out by hand."""

import pytest
import torch

from mlbook import sampling
from mlbook.diffusion import EDM, VP

VPP = VP()
T = torch.tensor(0.3, dtype=torch.float64)
A, S2 = float(VPP.alpha(T)), float(VPP.sigma(T)) ** 2


def score_with_x0(x0):
    """The score whose Tweedie estimate (x + sigma^2 score) / alpha is x0 at every x."""
    return lambda x, t: (A * x0 - x) / S2


def x0_of(score, x):
    return (x + S2 * score(x, T)) / A


X = torch.tensor([[0.2, -0.7]], dtype=torch.float64)


def test_threshold_rescales_by_the_percentile():
    # |x0| = (4, 2); the 0.5 quantile of two values is their midpoint, s = 3:
    # clip to [-3, 3] -> (3, -2), divide by s -> (1, -2/3)
    x0 = torch.tensor([[4.0, -2.0]], dtype=torch.float64)
    out = sampling.dynamic_threshold_score(score_with_x0(x0), VPP, percentile=0.5)
    expected = torch.tensor([[1.0, -2.0 / 3.0]], dtype=torch.float64)
    torch.testing.assert_close(x0_of(out, X), expected)


def test_threshold_with_a_bound_and_the_maximum():
    # percentile 1: s = max |x0| = 3; bound 2: x0 * 2 / 3
    x0 = torch.tensor([[3.0, -1.5]], dtype=torch.float64)
    out = sampling.dynamic_threshold_score(score_with_x0(x0), VPP, percentile=1.0, bound=2.0)
    torch.testing.assert_close(x0_of(out, X), torch.tensor([[2.0, -1.0]], dtype=torch.float64))


def test_threshold_leaves_guesses_in_range_alone():
    # s = max(bound, quantile) = bound: nothing is clipped or rescaled, the score is unchanged
    x0 = torch.tensor([[0.5, -0.9]], dtype=torch.float64)
    score = score_with_x0(x0)
    out = sampling.dynamic_threshold_score(score, VPP, percentile=0.995)
    torch.testing.assert_close(out(X, T), score(X, T))


def test_threshold_is_per_sample():
    x0 = torch.tensor([[0.5, -0.9], [6.0, 3.0]], dtype=torch.float64)
    x = X.expand(2, 2)
    t = T.expand(2)
    out = sampling.dynamic_threshold_score(lambda x, t: (A * x0 - x) / S2, VPP, percentile=1.0)
    torch.testing.assert_close(x0_of(lambda x, _: out(x, t), x),
                               torch.tensor([[0.5, -0.9], [1.0, 0.5]], dtype=torch.float64))


def test_interval_switches_on_the_noise_level():
    # EDM: alpha = 1, sigma(t) = t, so the noise level is t itself
    ones = lambda x, t: torch.ones_like(x)             # noqa: E731
    zeros = lambda x, t: torch.zeros_like(x)           # noqa: E731
    score = sampling.guidance_interval(ones, zeros, EDM(), 0.5, 2.0)
    x = torch.zeros(4, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(score(x, t)[:, 0], expected)
    assert float(score(x, torch.tensor(1.0, dtype=torch.float64)).min()) == 1.0
    assert float(score(x, torch.tensor(3.0, dtype=torch.float64)).max()) == 0.0


def test_interval_uses_sigma_over_alpha_on_vp():
    ones = lambda x, t: torch.ones_like(x)             # noqa: E731
    zeros = lambda x, t: torch.zeros_like(x)           # noqa: E731
    level = float(VPP.sigma(T) / VPP.alpha(T))
    x = torch.zeros(1, 2, dtype=torch.float64)
    inside = sampling.guidance_interval(ones, zeros, VPP, 0.9 * level, 1.1 * level)
    outside = sampling.guidance_interval(ones, zeros, VPP, 1.1 * level, 2.0 * level)
    assert float(inside(x, T).min()) == 1.0 and float(outside(x, T).max()) == 0.0


def test_bad_input():
    score = lambda x, t: -x                             # noqa: E731
    with pytest.raises(ValueError, match="percentile"):
        sampling.dynamic_threshold_score(score, VPP, percentile=0.0)
    with pytest.raises(ValueError, match="percentile"):
        sampling.dynamic_threshold_score(score, VPP, percentile=1.5)
    with pytest.raises(ValueError, match="bound"):
        sampling.dynamic_threshold_score(score, VPP, bound=-1.0)
    with pytest.raises(TypeError, match="score"):
        sampling.dynamic_threshold_score("score", VPP)
    with pytest.raises(TypeError, match="process"):
        sampling.dynamic_threshold_score(score, "vp")
    with pytest.raises(ValueError, match="sigma_hi"):
        sampling.guidance_interval(score, score, VPP, 2.0, 1.0)
    with pytest.raises(ValueError, match="sigma_lo"):
        sampling.guidance_interval(score, score, VPP, -1.0, 1.0)
    with pytest.raises(TypeError, match="callables"):
        sampling.guidance_interval(score, None, VPP, 0.5, 1.0)

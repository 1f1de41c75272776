"""The two reverse variances of the DDPM ancestral sampler (page diffusion_ddpm_sampling, eq. ddpm-ancestral)."""
import pytest
import torch

from mlbook import sampling
from mlbook.diffusion import DDPM


def standard_normal_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # data N(0, 1) stays N(0, 1) on a variance-preserving path, so the score is -x
    return -x


def one_step(process: DDPM, i: int, j: int, variance: str | None, n: int = 20000) -> torch.Tensor:
    """One ancestral step from step index i to j < i, started at x = 0 (where the mean is 0)."""
    x = torch.zeros(n, 1, dtype=torch.float64)
    ts = torch.tensor([i / process.T, j / process.T], dtype=torch.float64)
    kwargs = {} if variance is None else {"variance": variance}
    g = torch.Generator().manual_seed(0)
    return sampling.sample_ancestral(standard_normal_score, process, x, ts, generator=g,
                                     show_progress=False, **kwargs)


@pytest.mark.parametrize("i, j", [(500, 499), (500, 400), (2, 1)])
def test_the_two_variances_scale_the_same_noise_by_their_stds(i, j):
    p = DDPM.linear(1000)
    ab_t, ab_s = float(p.alpha_bars[i]), float(p.alpha_bars[j])
    var_forward = 1 - ab_t - ab_t / ab_s * (1 - ab_s)          # beta_t when j = i - 1
    var_posterior = var_forward * (1 - ab_s) / (1 - ab_t)      # beta_tilde_t when j = i - 1
    large, small = one_step(p, i, j, "beta"), one_step(p, i, j, "beta_tilde")
    ratio = large / small
    assert torch.allclose(ratio, torch.full_like(ratio, (var_forward / var_posterior) ** 0.5))
    assert abs(float(large.std()) / var_forward**0.5 - 1) < 0.03
    assert abs(float(small.std()) / var_posterior**0.5 - 1) < 0.03
    if j == i - 1:
        beta = 1 - ab_t / ab_s
        assert var_forward == pytest.approx(beta, rel=1e-9)


def test_the_default_is_the_posterior_variance():
    p = DDPM.linear(1000)
    assert torch.equal(one_step(p, 300, 299, None), one_step(p, 300, 299, "beta_tilde"))
    assert not torch.equal(one_step(p, 300, 299, None), one_step(p, 300, 299, "beta"))


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_the_last_step_to_the_data_adds_no_noise(variance):
    p = DDPM.linear(1000)
    assert torch.equal(one_step(p, 1, 0, variance, n=100), torch.zeros(100, 1, dtype=torch.float64))
    assert torch.equal(one_step(p, 10, 0, variance, n=100), torch.zeros(100, 1, dtype=torch.float64))


@pytest.mark.parametrize("bad", ["sigma", "Beta", "", 1.0])
def test_an_unknown_variance_is_rejected(bad):
    p = DDPM.linear(1000)
    with pytest.raises(ValueError, match="variance"):
        one_step(p, 2, 1, bad, n=4)

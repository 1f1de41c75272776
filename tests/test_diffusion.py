"""mlbook.diffusion: noise processes, posteriors, parameterisation conversions, the exact mixture score, the loss."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import multivariate_normal
from torch.distributions import Normal

from mlbook import data, diffusion
from mlbook.diffusion import DDPM, VE, VP, MixtureScore
from helpers import gen, t64

MIX = data.GaussianMixture([[-2.0, 0.0], [1.5, 1.5], [1.0, -1.5]], [0.3, 0.5, 0.4], [0.5, 0.3, 0.2])


def processes():
    return {"vp": VP(), "ve": VE(), "ddpm_linear": DDPM.linear(1000), "ddpm_cosine": DDPM.cosine(1000)}


def vp_closed_form(t, beta_min=0.1, beta_max=20.0):
    """alpha_t, sigma_t of VP from the integral of beta done by scipy's quad, in plain floats."""
    integral = quad(lambda u: beta_min + u * (beta_max - beta_min), 0.0, t, epsabs=1e-15, epsrel=1e-13)[0]
    return math.exp(-0.5 * integral), math.sqrt(-math.expm1(-integral))


def reference_log_prob(mixture, x, a, s):
    """log sum_k w_k N(x; a m_k, (a^2 s_k^2 + s^2) I) with torch.distributions; a, s of shape (n,)."""
    loc = a[:, None, None] * mixture.means                                   # (n, K, d)
    scale = (a[:, None] ** 2 * mixture.stds ** 2 + s[:, None] ** 2).sqrt()   # (n, K)
    comp = Normal(loc, scale[..., None]).log_prob(x[:, None, :]).sum(-1)    # (n, K)
    return torch.logsumexp(mixture.weights.log() + comp, dim=1)


def autograd_score(mixture, x, a, s):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reference_log_prob(mixture, x, a, s).sum(), x)
    return grad


# ------------------------------------------------------------------ closed forms of the paths

@pytest.mark.parametrize("t", [0.0, 1e-6, 0.01, 0.3, 0.7, 1.0])
def test_vp_alpha_and_sigma_match_the_integral_of_beta(t):
    a, s = vp_closed_form(t)
    p = VP()
    assert float(p.alpha(t64(t))) == pytest.approx(a, rel=1e-12)
    assert float(p.sigma(t64(t))) == pytest.approx(s, rel=1e-10, abs=1e-300)


def test_vp_is_variance_preserving():
    t = torch.cat([t64([0.0, 1e-12, 1e-9]), torch.linspace(1e-4, 1, 101, dtype=torch.float64)])
    p = VP()
    np.testing.assert_allclose((p.alpha(t) ** 2 + p.sigma(t) ** 2).numpy(), 1.0, rtol=1e-13)


def test_vp_sigma_keeps_its_digits_near_t_zero():
    # sigma_t^2 = 1 - exp(-int beta) ~ beta_min t: a naive 1 - alpha^2 would round to 0 or lose most digits.
    p = VP()
    for t in (1e-12, 1e-9, 1e-6):
        assert float(p.sigma(t64(t))) ** 2 == pytest.approx(0.1 * t + 9.95 * t * t, rel=1e-6)


def test_ve_sigma_is_geometric_and_alpha_is_one():
    p = VE(sigma_min=0.02, sigma_max=50.0)
    t = t64([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(p.sigma(t).numpy(), 0.02 * (50.0 / 0.02) ** t.numpy(), rtol=1e-13)
    assert float(p.sigma(t64(0.5))) == pytest.approx(math.sqrt(0.02 * 50.0), rel=1e-13)
    assert torch.equal(p.alpha(t), torch.ones(4, dtype=torch.float64))
    assert p.prior_std() == 50.0


@pytest.mark.parametrize("process", [VP(), VP(beta_min=0.5, beta_max=5.0), VE(), VE(sigma_min=0.1, sigma_max=50.0)],
                         ids=["vp", "vp-custom", "ve", "ve-custom"])
def test_f_and_g2_are_the_derivatives_of_the_path(process):
    # f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2, by central differences in float64.
    h = 1e-6
    for t in (0.05, 0.3, 0.6, 0.95):
        lo, hi = t64(t - h), t64(t + h)
        dlog_alpha = float(process.alpha(hi).log() - process.alpha(lo).log()) / (2 * h)
        dsigma2 = float(process.sigma(hi) ** 2 - process.sigma(lo) ** 2) / (2 * h)
        f, g2 = float(process.f(t64(t))), float(process.g2(t64(t)))
        sigma2 = float(process.sigma(t64(t))) ** 2
        assert f == pytest.approx(dlog_alpha, rel=1e-7, abs=1e-9)
        assert g2 == pytest.approx(dsigma2 - 2 * f * sigma2, rel=1e-7)
        assert g2 > 0


def test_vp_f_and_g2_by_autograd():
    p = VP()
    t = torch.linspace(0.01, 1.0, 25, dtype=torch.float64, requires_grad=True)
    (dlog_alpha,) = torch.autograd.grad(p.alpha(t).log().sum(), t)
    (dsigma2,) = torch.autograd.grad(p.sigma(t).square().sum(), t)
    t = t.detach()
    np.testing.assert_allclose(p.f(t).numpy(), dlog_alpha.numpy(), rtol=1e-12)
    np.testing.assert_allclose(p.g2(t).numpy(), (dsigma2 - 2 * p.f(t) * p.sigma(t) ** 2).numpy(), rtol=1e-10)
    np.testing.assert_allclose(p.g2(t).numpy(), (0.1 + t * 19.9).numpy(), rtol=1e-13)


def test_ddpm_has_no_continuous_time_sde():
    with pytest.raises(NotImplementedError):
        DDPM.linear(10).f(t64(0.5))
    with pytest.raises(NotImplementedError):
        DDPM.linear(10).g2(t64(0.5))


@pytest.mark.parametrize("name", ["vp", "ve", "ddpm_linear", "ddpm_cosine"])
@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_empirical_moments_of_sample_match_alpha_and_sigma(name, t):
    process = processes()[name]
    n = 40_000
    c = t64([1.5, -0.7])
    x0 = c.expand(n, 2).clone()
    x_t, eps = process.sample(x0, t, generator=gen(1))
    # alpha and sigma from closed forms written out here, not from the process.
    if name == "vp":
        a, s = vp_closed_form(t)
    elif name == "ve":
        a, s = 1.0, 0.01 * 1000.0 ** t
    else:
        i = round(t * 1000)
        ab = float(torch.prod(1 - process.betas[:i]))
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
    mean, var = x_t.mean(0), x_t.var(0)
    se_mean, se_var = s / math.sqrt(n), s * s * math.sqrt(2 / (n - 1))
    assert torch.all((mean - a * c).abs() < 5 * se_mean), (mean, a * c)
    assert torch.all((var - s * s).abs() < 5 * se_var), (var, s * s)
    torch.testing.assert_close(x_t, a * x0 + s * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve", "ddpm_linear"])
def test_per_sample_times_act_row_by_row(name):
    process = processes()[name]
    t = t64([0.001, 0.25, 0.5, 1.0])
    x0 = torch.randn(4, 3, generator=gen(2), dtype=torch.float64)
    eps = torch.randn(4, 3, generator=gen(3), dtype=torch.float64)
    rows = torch.stack([process.marginal(x0[i:i + 1], t[i], eps[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(process.marginal(x0, t, eps), rows, rtol=1e-14, atol=1e-14)


def test_marginal_rejects_eps_of_the_wrong_shape_and_non_finite_t():
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        VP().marginal(x0, 0.5, torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        VP().marginal(x0, float("nan"), torch.zeros(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError):
        VP().marginal(torch.zeros(5, dtype=torch.float64), 0.5, torch.zeros(5, dtype=torch.float64))


def test_ddpm_linear_approaches_vp_in_the_continuous_limit():
    ddpm, vp = DDPM.linear(1000), VP()
    t = torch.arange(1001, dtype=torch.float64) / 1000
    ab, cont = ddpm.alpha_bars, vp.alpha(t) ** 2
    # Measured: max |alpha_bar_i - alpha(i/T)^2| = 8.1e-4. The gap is the second-order term of
    # log(1 - beta) = -beta - beta^2/2 - ..., whose sum reaches -0.067 at t = 1, weighted by alpha_bar.
    assert float((ab - cont).abs().max()) < 1e-3
    # With that term added back, log alpha_bar and log alpha^2 agree to 2.4e-3 (measured): what is left
    # is the Riemann sum of beta against its integral (the grid of linspace is i/(T-1), not i/T).
    second_order = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ddpm.betas ** 2 / 2, 0)])
    assert float((ab.log() + second_order - cont.log()).abs().max()) < 3e-3
    # A wrong schedule (T = 500 with the same betas) is far off: the check can fail.
    assert float((DDPM.linear(500).alpha_bars - VP().alpha(torch.arange(501, dtype=torch.float64) / 500) ** 2)
                 .abs().max()) > 1e-2


def test_ddpm_alpha_and_sigma_are_sqrt_alpha_bar_at_grid_times():
    p = DDPM.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    for i in (0, 1, 2, 500, 999, 1000):
        ab = float(np.prod(1 - betas[:i]))
        assert float(p.alpha(t64(i / 1000))) == pytest.approx(math.sqrt(ab), rel=1e-12)
        assert float(p.sigma(t64(i / 1000))) == pytest.approx(math.sqrt(1 - ab), rel=1e-12, abs=0)


@pytest.mark.parametrize("t", [0.0005, 0.5 + 0.4e-3, 1.001, -0.001, 0.0105])
def test_ddpm_times_off_the_grid_raise(t):
    p = DDPM.linear(1000)
    with pytest.raises(ValueError):
        p.alpha(t64(t))
    with pytest.raises(ValueError):
        p.sigma(t)
    with pytest.raises(ValueError):
        p.sample(torch.zeros(3, 2, dtype=torch.float64), t)


def test_ddpm_grid_times_in_float32_are_accepted():
    # float32 can't hold i/1000 exactly; the time must still map to step i.
    p = DDPM.linear(1000)
    t = torch.arange(1001, dtype=torch.float64).div(1000).float()
    torch.testing.assert_close(p.alpha(t).double(), p.alpha_bars.sqrt(), rtol=1e-6, atol=0)
    x0 = torch.ones(1001, 2)
    x_t, _ = p.sample(x0, t, generator=gen(0))
    assert x_t.dtype == torch.float32


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_matches_diffusers_ddpm_scheduler(schedule):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=1e-4, beta_end=0.02)
    p = DDPM.linear(1000) if schedule == "linear" else DDPM.cosine(1000)
    # diffusers works in float32: measured relative gaps 1.1e-7 (betas), 1.3e-5 (alphas_cumprod), 8.6e-4 (variance).
    np.testing.assert_allclose(p.betas.numpy(), ref.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(p.alpha_bars[1:].numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-4)
    assert float(p.alpha_bars[0]) == 1.0
    ours = torch.stack([p.posterior_ddpm(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                                         i)[1] ** 2 for i in range(1, 1001)]).flatten()
    theirs = torch.stack([ref._get_variance(i - 1) for i in range(1, 1001)]).double()
    assert float(ours[0]) == 0.0                                  # diffusers clamps this one to 1e-20
    np.testing.assert_allclose(ours[1:].numpy(), theirs[1:].numpy(), rtol=2e-3)


def test_ddpm_time_grid_and_sample_time():
    p = DDPM.linear(1000)
    torch.testing.assert_close(p.time_grid(10), torch.linspace(1, 0, 11, dtype=torch.float64))
    full = p.time_grid()
    assert len(full) == 1001 and float(full[0]) == 1.0 and float(full[-1]) == 0.0
    with pytest.raises(ValueError):
        p.time_grid(7)
    t = p.sample_time(5000, generator=gen(0), device="cpu")
    i = t * 1000
    torch.testing.assert_close(i, i.round(), rtol=0, atol=1e-9)
    assert int(i.round().min()) == 1 and int(i.round().max()) == 1000


def test_vp_sample_time_is_uniform_on_t_min_to_one_and_time_grid_decreases():
    p = VP(t_min=0.01)
    t = p.sample_time(100_000, generator=gen(0), device="cpu")
    assert float(t.min()) >= 0.01 and float(t.max()) <= 1.0
    assert float(t.mean()) == pytest.approx(0.505, abs=4 * 0.99 / math.sqrt(12 * 100_000))
    torch.testing.assert_close(p.time_grid(4), t64([1.0, 0.7525, 0.505, 0.2575, 0.01]))
    torch.testing.assert_close(p.time_grid(2, t_min=0.0), t64([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError):
        p.time_grid(4, t_min=1.0)


def test_prior_std_and_prior_log_prob():
    assert VP().prior_std() == pytest.approx(1.0, rel=1e-14)
    assert DDPM.linear(1000).prior_std() == pytest.approx(1.0, rel=1e-14)
    x = torch.randn(7, 3, generator=gen(0), dtype=torch.float64)
    for p in (VP(), VE(sigma_max=5.0)):
        sd = p.prior_std()
        want = Normal(t64(0.0), t64(sd)).log_prob(x).sum(1)
        torch.testing.assert_close(p.prior_log_prob(x), want, rtol=1e-12, atol=1e-12)
    draws = VE(sigma_max=5.0).prior(50_000, 2, generator=gen(1), device="cpu")
    assert draws.shape == (50_000, 2)
    assert float(draws.std()) == pytest.approx(5.0, rel=0.02)


def test_constructors_reject_bad_parameters():
    with pytest.raises(ValueError):
        VP(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError):
        VE(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError):
        DDPM([0.1, 1.0])
    with pytest.raises(ValueError):
        DDPM([])
    with pytest.raises(ValueError):
        DDPM([[0.1, 0.2]])


# ------------------------------------------------------------------ posterior q(x_s | x_t, x_0)

def brute_force_posterior(x_t, x0, a_s, sig_s, a_ts, var_ts):
    """Mean and std of p(x_s) N(x_t; a_ts x_s, var_ts) N(x_s; a_s x0, sig_s^2), normalised on a fine grid."""
    grid = np.linspace(-12.0, 12.0, 480_001)
    log_w = -0.5 * (x_t - a_ts * grid) ** 2 / var_ts - 0.5 * (grid - a_s * x0) ** 2 / sig_s ** 2
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = float((w * grid).sum())
    return mean, math.sqrt(float((w * (grid - mean) ** 2).sum()))


def path_coefficients(process, s, t):
    a_s, sig_s = float(process.alpha(t64(s))), float(process.sigma(t64(s)))
    a_t, sig_t = float(process.alpha(t64(t))), float(process.sigma(t64(t)))
    a_ts = a_t / a_s
    return a_s, sig_s, a_ts, sig_t ** 2 - a_ts ** 2 * sig_s ** 2


@pytest.mark.parametrize("name,s,t", [
    ("vp", 0.1, 0.3), ("vp", 0.5, 0.6), ("vp", 0.2, 0.9), ("vp", 0.01, 0.02), ("vp", 0.7, 1.0),
    ("ve", 0.1, 0.5), ("ve", 0.3, 0.31), ("ve", 0.6, 1.0), ("ve", 0.0, 0.2),
    ("ddpm_linear", 0.3, 0.5), ("ddpm_cosine", 0.1, 0.9),
])
def test_posterior_matches_brute_force_bayes(name, s, t):
    process = processes()[name]
    x_t, x0 = 0.3, 0.7
    a_s, sig_s, a_ts, var_ts = path_coefficients(process, s, t)
    want_mean, want_std = brute_force_posterior(x_t, x0, a_s, sig_s, a_ts, var_ts)
    mean, std = process.posterior(t64([[x_t]]), t64([[x0]]), t, s)
    assert float(mean) == pytest.approx(want_mean, rel=1e-6, abs=1e-9)
    assert float(std) == pytest.approx(want_std, rel=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("i", [2, 3, 100, 500, 1000])
def test_ddpm_consecutive_posterior_matches_brute_force_with_the_forward_step(schedule, i):
    # q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i): the forward step itself, not a ratio of marginals.
    p = getattr(DDPM, schedule)(1000)
    beta = float(p.betas[i - 1])
    ab_prev = float(np.prod(1 - p.betas[:i - 1].numpy()))
    x_t, x0 = -0.4, 1.1
    want_mean, want_std = brute_force_posterior(x_t, x0, math.sqrt(ab_prev), math.sqrt(1 - ab_prev),
                                                math.sqrt(1 - beta), beta)
    mean, std = p.posterior_ddpm(t64([[x_t]]), t64([[x0]]), i)
    assert float(mean) == pytest.approx(want_mean, rel=1e-6, abs=1e-9)
    assert float(std) == pytest.approx(want_std, rel=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("i", [1, 2, 37, 500, 999, 1000])
def test_ddpm_posterior_ddpm_equals_the_generic_posterior(schedule, i):
    p = getattr(DDPM, schedule)(1000)
    x_t = torch.randn(6, 2, generator=gen(i), dtype=torch.float64)
    x0 = torch.randn(6, 2, generator=gen(i + 1), dtype=torch.float64)
    m1, s1 = p.posterior_ddpm(x_t, x0, i)
    m2, s2 = p.posterior(x_t, x0, t64(i / 1000), t64((i - 1) / 1000))
    torch.testing.assert_close(m1, m2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s1 * torch.ones_like(m1), s2 * torch.ones_like(m2), rtol=1e-9, atol=1e-12)


def test_posterior_at_s_zero_is_the_data_for_vp_and_ddpm():
    x_t, x0 = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    for p in (VP(), DDPM.linear(1000)):
        mean, std = p.posterior(x_t, x0, t64(0.5), t64(0.0))
        torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-12)
        assert float(std.abs().max()) == 0.0


def test_posterior_with_per_sample_times_acts_row_by_row():
    p = VP()
    t, s = t64([0.3, 0.9, 0.05]), t64([0.1, 0.5, 0.01])
    x_t = torch.randn(3, 2, generator=gen(0), dtype=torch.float64)
    x0 = torch.randn(3, 2, generator=gen(1), dtype=torch.float64)
    mean, std = p.posterior(x_t, x0, t, s)
    assert mean.shape == (3, 2) and std.shape == (3, 1)
    for i in range(3):
        m_i, s_i = p.posterior(x_t[i:i + 1], x0[i:i + 1], t[i], s[i])
        torch.testing.assert_close(mean[i:i + 1], m_i, rtol=1e-13, atol=1e-13)
        assert float(std[i, 0]) == pytest.approx(float(s_i), rel=1e-13)


def test_posterior_needs_s_below_t():
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        VP().posterior(x, x, 0.3, 0.3)
    with pytest.raises(ValueError):
        VE().posterior(x, x, t64([0.3, 0.5]), t64([0.2, 0.6]))
    with pytest.raises(ValueError):
        DDPM.linear(10).posterior_ddpm(x, x, 0)
    with pytest.raises(ValueError):
        DDPM.linear(10).posterior_ddpm(x, x, 11)


# ------------------------------------------------------------------ parameterisation conversions

@pytest.mark.parametrize("per_sample", [False, True])
def test_eps_x0_score_round_trips(per_sample):
    n = 8
    x0 = torch.randn(n, 3, generator=gen(0), dtype=torch.float64)
    eps = torch.randn(n, 3, generator=gen(1), dtype=torch.float64)
    if per_sample:
        alpha = torch.rand(n, generator=gen(2), dtype=torch.float64) * 0.9 + 0.05
        sigma = torch.rand(n, generator=gen(3), dtype=torch.float64) * 2 + 0.05
        a_col, s_col = alpha[:, None], sigma[:, None]
    else:
        alpha, sigma = t64(0.6), t64(0.8)
        a_col, s_col = alpha, sigma
    x_t = a_col * x0 + s_col * eps
    torch.testing.assert_close(diffusion.eps_to_x0(x_t, eps, alpha, sigma), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diffusion.x0_to_eps(x_t, x0, alpha, sigma), eps, rtol=1e-12, atol=1e-12)
    score = diffusion.eps_to_score(eps, sigma)
    torch.testing.assert_close(score, -eps / s_col, rtol=1e-14, atol=0)
    torch.testing.assert_close(diffusion.score_to_eps(score, sigma), eps, rtol=1e-13, atol=1e-14)
    back = diffusion.x0_to_eps(x_t, diffusion.eps_to_x0(x_t, eps, alpha, sigma), alpha, sigma)
    torch.testing.assert_close(back, eps, rtol=1e-12, atol=1e-12)


def test_conversions_accept_python_floats_for_alpha_and_sigma():
    x_t, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(diffusion.eps_to_x0(x_t, eps, 0.5, 2.0), (x_t - 2.0 * eps) / 0.5)


def test_conversions_keep_float64_precision_with_python_float_coefficients():
    x_t = torch.randn(4, 2, generator=gen(0), dtype=torch.float64)
    eps = torch.randn(4, 2, generator=gen(1), dtype=torch.float64)
    a, s = 0.1, 0.3                                                     # not representable in float32
    torch.testing.assert_close(diffusion.eps_to_x0(x_t, eps, a, s), (x_t - s * eps) / a, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(diffusion.x0_to_eps(x_t, eps, a, s), (x_t - a * eps) / s, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(diffusion.eps_to_score(eps, s), -eps / s, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(diffusion.score_to_eps(eps, s), -s * eps, rtol=1e-13, atol=1e-13)


def test_score_from_eps_divides_by_minus_sigma():
    p = VE()
    model = lambda x, t: x * 2 + t[:, None]                                 # noqa: E731
    score = diffusion.score_from_eps(model, p)
    x, t = torch.randn(5, 2, dtype=torch.float64), t64([0.1, 0.2, 0.3, 0.4, 1.0])
    want = -(x * 2 + t[:, None]) / (0.01 * 1000.0 ** t[:, None])
    torch.testing.assert_close(score(x, t), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError):
        diffusion.score_from_eps("not a model", p)


# ------------------------------------------------------------------ the exact mixture score

SCORE_CASES = [
    ("vp", 0.0), ("vp", 1e-3), ("vp", 0.3), ("vp", 1.0), ("vp", [0.0, 0.001, 0.2, 0.5, 0.8, 1.0]),
    ("ve", 0.0), ("ve", 0.5), ("ve", 1.0), ("ve", [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]),
    ("ddpm_linear", 0.001), ("ddpm_linear", 0.5), ("ddpm_cosine", 1.0),
    ("ddpm_cosine", [0.0, 0.001, 0.25, 0.5, 0.999, 1.0]),
]


@pytest.mark.parametrize("name,t", SCORE_CASES)
def test_mixture_score_is_the_gradient_of_the_log_density(name, t):
    process = processes()[name]
    ms = MixtureScore(MIX, process)
    n = 6
    x = torch.randn(n, 2, generator=gen(5), dtype=torch.float64) * 2
    t = t64(t)
    tt = t.expand(n)
    a, s = process.alpha(tt), process.sigma(tt)
    want = autograd_score(MIX, x, a, s)
    torch.testing.assert_close(ms.score(x, t), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ms(x, t), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ms.log_prob(x, t), reference_log_prob(MIX, x, a, s), rtol=1e-12, atol=1e-12)
    # and it is the gradient of MixtureScore's own log_prob
    xg = x.clone().requires_grad_(True)
    (own,) = torch.autograd.grad(ms.log_prob(xg, t).sum(), xg)
    torch.testing.assert_close(ms.score(x, t), own, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,t", [("vp", 0.0), ("vp", 0.4), ("ve", 0.7), ("ddpm_linear", 0.25)])
def test_mixture_log_prob_is_the_closed_form_smoothed_mixture(name, t):
    process = processes()[name]
    if name == "vp":
        a, s = vp_closed_form(t)
    elif name == "ve":
        a, s = 1.0, 0.01 * 1000.0 ** t
    else:
        ab = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:round(t * 1000)]))
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
    x = np.random.default_rng(0).normal(size=(9, 2)) * 2
    dens = sum(w * multivariate_normal(a * m, (a * a * sd * sd + s * s) * np.eye(2)).pdf(x)
               for w, m, sd in zip(MIX.weights.numpy(), MIX.means.numpy(), MIX.stds.numpy()))
    got = MixtureScore(MIX, process).log_prob(torch.from_numpy(x), t)
    np.testing.assert_allclose(got.numpy(), np.log(dens), rtol=1e-10)


@pytest.mark.parametrize("name,t", [("vp", 0.0), ("vp", 0.3), ("ve", 0.2), ("ddpm_cosine", 0.75)])
def test_marginal_is_a_gaussian_mixture_with_the_same_log_prob(name, t):
    ms = MixtureScore(MIX, processes()[name])
    m = ms.marginal(t)
    assert isinstance(m, data.GaussianMixture)
    x = torch.randn(20, 2, generator=gen(0), dtype=torch.float64) * 2
    torch.testing.assert_close(m.log_prob(x), ms.log_prob(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.weights, MIX.weights)


@pytest.mark.parametrize("name,t", [("vp", 0.3), ("ve", 0.2), ("ddpm_linear", 0.05)])
def test_mixture_log_prob_integrates_to_one(name, t):
    ms = MixtureScore(MIX, processes()[name])
    axis = torch.linspace(-6.0, 6.0, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    dx = float(axis[1] - axis[0])
    mass = float(ms.log_prob(pts, t).exp().sum()) * dx * dx
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_marginal_moments_match_noised_data():
    # Noise exact data with the process: the result has the moments of marginal(t).
    p, t, n = VP(), 0.4, 200_000
    x0 = MIX.sample(n, generator=gen(0)).double()
    x_t, _ = p.sample(x0, t, generator=gen(1))
    a, s = vp_closed_form(t)
    w, mu, sd = MIX.weights, MIX.means, MIX.stds
    mean = a * (w @ mu)
    second = (a * a * torch.einsum("k,ki,kj->ij", w, mu, mu)
              + (a * a * (w * sd ** 2).sum() + s * s) * torch.eye(2, dtype=torch.float64))
    cov = second - torch.outer(mean, mean)
    torch.testing.assert_close(x_t.mean(0), mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(x_t.T), cov, rtol=0, atol=0.03)
    m = MixtureScore(MIX, p).marginal(t)
    torch.testing.assert_close(m.means, a * mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.stds, (a * a * sd ** 2 + s * s).sqrt(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve", "ddpm_linear"])
def test_mixture_eps_is_minus_sigma_times_score(name):
    process = processes()[name]
    ms = MixtureScore(MIX, process)
    x = torch.randn(5, 2, generator=gen(0), dtype=torch.float64)
    t = t64([0.0, 0.001, 0.5, 0.75, 1.0])
    torch.testing.assert_close(ms.eps(x, t), -process.sigma(t)[:, None] * ms.score(x, t), rtol=1e-13, atol=1e-14)


def test_mixture_score_rejects_bad_arguments():
    with pytest.raises(TypeError):
        MixtureScore(data.Moons(), VP())
    with pytest.raises(TypeError):
        MixtureScore(MIX, "vp")
    ms = MixtureScore(MIX, VP())
    with pytest.raises(ValueError):
        ms.marginal(t64([0.1, 0.2]))
    with pytest.raises(ValueError):
        ms.score(torch.zeros(3, 3, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError):
        ms.score(torch.zeros(3, dtype=torch.float64), 0.5)


# ------------------------------------------------------------------ eps_loss

def eps_posterior_trace(x_t, a, s):
    """tr Cov[eps | x_t] for data from MIX, exactly: (a^2/s^2) tr Cov[x_0 | x_t], one row each."""
    a, s = a[:, None], s[:, None]                                       # (n, 1)
    w, mu, sd2 = MIX.weights, MIX.means, MIX.stds ** 2                 # (K,), (K, d), (K,)
    tot = a * a * sd2 + s * s                                           # (n, K)
    loc = a[..., None] * mu                                             # (n, K, d)
    log_r = w.log() + Normal(loc, tot.sqrt()[..., None]).log_prob(x_t[:, None, :]).sum(-1)
    r = torch.softmax(log_r, dim=1)                                     # responsibilities (n, K)
    v = sd2 * s * s / tot                                               # posterior var of x_0 per component
    m = mu + (a * sd2 / tot)[..., None] * (x_t[:, None, :] - loc)       # posterior means (n, K, d)
    d = x_t.shape[1]
    second = (r * (d * v + m.square().sum(-1))).sum(1)
    mean = (r[..., None] * m).sum(1)
    return (a[:, 0] / s[:, 0]) ** 2 * (second - mean.square().sum(1))


@pytest.mark.parametrize("name", ["vp", "ve", "ddpm_linear"])
def test_eps_loss_is_the_mean_squared_error_on_its_own_draws(name):
    process = processes()[name]
    x0 = MIX.sample(500, generator=gen(0)).double()
    model = lambda x, t: 0.5 * x + t[:, None]                           # noqa: E731
    got = diffusion.eps_loss(model, process, x0, generator=gen(7))
    g = gen(7)                                                          # replay the same draws
    t = process.sample_time(500, generator=g, device="cpu").double()
    x_t, eps = process.sample(x0, t, generator=g)
    want = (model(x_t, t) - eps).square().sum(1).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve", "ddpm_linear"])
def test_eps_loss_of_the_exact_model_is_its_theoretical_minimum(name):
    process = processes()[name]
    ms = MixtureScore(MIX, process)
    n = 20_000
    x0 = MIX.sample(n, generator=gen(0)).double()
    exact = diffusion.eps_loss(lambda x, t: ms.eps(x, t), process, x0, generator=gen(3))
    zero = diffusion.eps_loss(lambda x, t: torch.zeros_like(x), process, x0, generator=gen(3))
    # Same draws by hand: the per-sample error and, beside it, its exact conditional mean tr Cov[eps | x_t].
    g = gen(3)
    t = process.sample_time(n, generator=g, device="cpu").double()
    x_t, eps = process.sample(x0, t, generator=g)
    err = (ms.eps(x_t, t) - eps).square().sum(1)
    minimum = eps_posterior_trace(x_t, process.alpha(t), process.sigma(t))
    se = float((err - minimum).std()) / math.sqrt(n)
    assert float(exact) == pytest.approx(float(err.mean()), rel=1e-12)
    assert abs(float(exact) - float(minimum.mean())) < 4 * se
    assert float(zero) == pytest.approx(2.0, abs=4 * math.sqrt(8 / n))     # E||eps||^2 = d, Var = 2d
    assert float(exact) < 0.9 * float(zero)
    # A slightly wrong model is worse than the exact one on the same draws.
    worse = diffusion.eps_loss(lambda x, t: 1.1 * ms.eps(x, t), process, x0, generator=gen(3))
    assert float(worse) > float(exact)


def test_eps_loss_rejects_bad_data():
    with pytest.raises(ValueError):
        diffusion.eps_loss(lambda x, t: x, VP(), torch.zeros(5))
    with pytest.raises(ValueError):
        diffusion.eps_loss(lambda x, t: x, VP(), torch.zeros(0, 2))

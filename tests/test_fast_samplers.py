"""EDM coordinates, sigma schedules, preconditioning, DDIM, Karras's Heun sampler and guidance.

Most checks use Gaussian data N(mu, s^2 I), for which everything is known in closed form. Under the
EDM process (alpha = 1, sigma(t) = t) the noisy point is x = x0 + sigma n, and Gaussian conditioning gives

    D(x; sigma) = E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu),     Var[x0 | x] = s^2 sigma^2 / (s^2 + sigma^2),

and by Tweedie the score is (D - x) / sigma^2. The probability-flow ODE is dx/dsigma = (x - D) / sigma,
which for this data reads, in y = x - mu,

    dy/dsigma = y sigma / (s^2 + sigma^2)   =>   d log y / dsigma = d/dsigma [0.5 log(s^2 + sigma^2)]
                                            =>   y(sigma) = y(sigma_max) sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)),

the exact solution the convergence orders are measured against. Every solver step on this linear ODE
multiplies y by a factor that depends on (sigma_t, sigma_s) only; the factors are derived below.
"""

import math

import numpy as np
import pytest
import torch

from mlbook import data, diffusion, ode, sampling
from mlbook.diffusion import EDM, VP, EDMPrecond, MixtureScore, sigma_schedule
from helpers import gen, t64

MU = t64([1.0, -2.0])
S = 0.5
GAUSS = data.GaussianMixture(MU[None], S)                 # N(mu, s^2 I) as a one-component mixture
EDM_P = EDM(sigma_min=0.002, sigma_max=80.0, sigma_data=S)


def col(v, x):
    """A scalar or per-sample (n,) coefficient as a column against x (n, d), in x's dtype."""
    v = torch.as_tensor(v, dtype=x.dtype)
    return v[:, None] if v.ndim == 1 else v


def gauss_denoiser(x, sigma):
    """The exact E[x0 | x0 + sigma n = x] for data N(MU, S^2 I)."""
    sig = col(sigma, x)
    return MU + S**2 / (S**2 + sig**2) * (x - MU)


def gauss_score(x, sigma):
    """The exact score of p_sigma = N(MU, (S^2 + sigma^2) I).

    Tweedie's (D - x) / sigma^2 with D - x = -sigma^2 / (S^2 + sigma^2) (x - mu), simplified: the unsimplified
    difference loses digits at small sigma (checked against it in the first test).
    """
    return -(x - MU) / (S**2 + col(sigma, x) ** 2)


def p_sigma_draws(n, sigma, seed):
    """Exact draws of p_sigma = N(MU, (S^2 + sigma^2) I)."""
    return MU + math.sqrt(S**2 + sigma**2) * torch.randn(n, 2, generator=gen(seed), dtype=torch.float64)


def lam(sigma):
    """Slope of the ODE in y: dy/dsigma = lam(sigma) y, lam = sigma / (s^2 + sigma^2)."""
    return sigma / (S**2 + sigma**2)


def euler_factor(t, s):
    # y_s = y_t + (s - t) lam(t) y_t.
    return 1 + (s - t) * lam(t)


def heun_factor(t, s):
    # Heun (explicit trapezoid) on y' = lam(sigma) y with h = s - t:
    #   k1 = lam(t) y,  predictor y_e = (1 + h lam(t)) y,  k2 = lam(s) y_e,
    #   y_s = y + h/2 (k1 + k2) = y [1 + h/2 (lam(t) + lam(s) + h lam(t) lam(s))].
    # Karras et al. skip the correction on the last step to s = 0 (where lam(0) = 0 anyway but the
    # score is not defined): that step is Euler, 1 - t lam(t) = s^2 / (s^2 + t^2), i.e. D itself.
    if s == 0:
        return euler_factor(t, s)
    h = s - t
    return 1 + 0.5 * h * (lam(t) + lam(s) + h * lam(t) * lam(s))


def ddim0_factor(t, s):
    # DDIM, eta = 0, alpha = 1: x_s = x0_hat + s eps_hat with eps_hat = (x_t - x0_hat) / t, x0_hat = D(x_t; t).
    # Then x_s = x_t + (s - t) (x_t - x0_hat) / t = x_t + (s - t) dx/dsigma: exactly the Euler step of
    # the ODE in these coordinates. In y: x_t - x0_hat = (1 - S^2/(S^2 + t^2)) y = t^2/(S^2 + t^2) y, so
    # y_s = y + (s - t) t/(S^2 + t^2) y, the Euler factor. Written here from the DDIM form, not from Euler:
    x0_factor = S**2 / (S**2 + t**2)                         # x0_hat - mu = x0_factor * y
    eps_factor = (1 - x0_factor) / t                         # eps_hat = eps_factor * y
    return x0_factor + s * eps_factor


# ------------------------------------------------------------------ the exact score of Gaussian data

@pytest.mark.parametrize("sigma", [0.002, 0.3, 2.0, 80.0])
def test_gaussian_score_closed_form_agrees_with_mixture_score(sigma):
    x = p_sigma_draws(40, sigma, seed=1)
    ms = MixtureScore(GAUSS, EDM_P)(x, t64(sigma))
    torch.testing.assert_close(ms, gauss_score(x, sigma), rtol=1e-10, atol=1e-12)
    # Tweedie's form, straight from the denoiser (cancellation costs ~1e-16 |x| / sigma^2 at small sigma).
    torch.testing.assert_close(ms, (gauss_denoiser(x, sigma) - x) / sigma**2, rtol=1e-6, atol=1e-12)


def test_gaussian_score_with_per_sample_sigma_agrees_with_mixture_score():
    x = torch.randn(5, 2, generator=gen(2), dtype=torch.float64) * 3
    sig = t64([0.01, 0.1, 1.0, 10.0, 50.0])
    torch.testing.assert_close(MixtureScore(GAUSS, EDM_P)(x, sig), gauss_score(x, sig), rtol=1e-10, atol=1e-12)


def test_score_from_the_exact_denoiser_is_the_mixture_score_under_edm():
    x = torch.randn(30, 2, generator=gen(3), dtype=torch.float64) * 2
    sig = torch.exp(torch.randn(30, generator=gen(4), dtype=torch.float64))
    score = diffusion.score_from_denoiser(gauss_denoiser, EDM_P)
    torch.testing.assert_close(score(x, sig), MixtureScore(GAUSS, EDM_P)(x, sig), rtol=1e-10, atol=1e-12)


def test_score_from_denoiser_uses_alpha_under_vp():
    # With alpha != 1: x_t = a x0 + sig n, E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sig^2) (x_t - a mu),
    # score = (a D - x_t) / sig^2. A wrong alpha (dropping it) would miss MixtureScore by O(1).
    p = VP()
    t = t64([0.05, 0.3, 0.6, 0.9])
    x = torch.randn(4, 2, generator=gen(5), dtype=torch.float64)
    a, sig = p.alpha(t)[:, None], p.sigma(t)[:, None]

    def denoiser(x, t):
        return MU + a * S**2 / (a**2 * S**2 + sig**2) * (x - a * MU)

    torch.testing.assert_close(diffusion.score_from_denoiser(denoiser, p)(x, t), MixtureScore(GAUSS, p)(x, t),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError):
        diffusion.score_from_denoiser("not callable", p)


# ------------------------------------------------------------------ one step against its closed form

STEPS = [(80.0, 40.0), (2.0, 1.3), (0.7, 0.05), (0.3, 0.0), (80.0, 0.0)]


@pytest.mark.parametrize("t,s", STEPS)
def test_one_euler_step_on_edm_is_the_closed_form(t, s):
    x = p_sigma_draws(16, t, seed=6)
    out = sampling.sample_ode(gauss_score, EDM_P, x, t64([t, s]), method="euler")
    torch.testing.assert_close(out, MU + (x - MU) * euler_factor(t, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t,s", STEPS)
def test_one_heun_edm_step_is_the_closed_form(t, s):
    x = p_sigma_draws(16, t, seed=7)
    out = sampling.sample_heun_edm(gauss_score, EDM_P, x, t64([t, s]))
    torch.testing.assert_close(out, MU + (x - MU) * heun_factor(t, s), rtol=1e-12, atol=1e-12)


def test_heun_factor_is_not_the_euler_factor():
    # Guard for the two tests above: the factors differ by far more than the tolerance on a real step.
    assert abs(heun_factor(2.0, 1.3) - euler_factor(2.0, 1.3)) > 1e-3


def test_heun_edm_last_step_to_zero_returns_the_denoiser():
    x = p_sigma_draws(16, 0.4, seed=8)
    out = sampling.sample_heun_edm(gauss_score, EDM_P, x, t64([0.4, 0.0]))
    torch.testing.assert_close(out, gauss_denoiser(x, 0.4), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t,s", STEPS)
def test_one_ddim_eta0_step_is_the_euler_step_in_edm_coordinates(t, s):
    assert ddim0_factor(t, s) == pytest.approx(euler_factor(t, s), rel=1e-14, abs=1e-14)
    x = p_sigma_draws(16, t, seed=9)
    out = sampling.sample_ddim(gauss_score, EDM_P, x, t64([t, s]), eta=0.0, generator=gen(1))
    torch.testing.assert_close(out, MU + (x - MU) * ddim0_factor(t, s), rtol=1e-12, atol=1e-12)


def test_ddim_eta0_is_euler_on_a_whole_edm_grid():
    x = p_sigma_draws(50, 80.0, seed=10)
    ts = EDM_P.time_grid(12)
    ms = MixtureScore(GAUSS, EDM_P)
    torch.testing.assert_close(sampling.sample_ddim(ms, EDM_P, x, ts),
                               sampling.sample_ode(ms, EDM_P, x, ts, method="euler"), rtol=1e-12, atol=1e-12)


def test_heun_edm_without_churn_matches_the_generic_heun_solver_off_zero():
    # On a grid that stops before sigma = 0 every step is a full trapezoid: the generic ode.heun_step on
    # the probability-flow ODE (f = 0, g^2 = 2 sigma) takes the same steps.
    x = p_sigma_draws(50, 80.0, seed=11)
    ts = EDM_P.time_grid(10)[:-1]
    ms = MixtureScore(GAUSS, EDM_P)
    torch.testing.assert_close(sampling.sample_heun_edm(ms, EDM_P, x, ts),
                               sampling.sample_ode(ms, EDM_P, x, ts, method="heun"), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ global convergence orders

def test_heun_edm_is_second_order_and_euler_first_order_against_the_exact_ode_solution():
    # Karras grid from sigma_max = 80 to sigma_min = 0.002, without the last step to 0 (whose error would
    # not shrink with N). Measured: Heun 2.10, Euler 0.93.
    ms = MixtureScore(GAUSS, EDM_P)
    smax, smin = EDM_P.sigma_max, EDM_P.sigma_min
    x = p_sigma_draws(64, smax, seed=12)
    exact = MU + (x - MU) * math.sqrt((S**2 + smin**2) / (S**2 + smax**2))
    steps = [8, 16, 32, 64]
    heun, euler = [], []
    for k in steps:
        ts = EDM_P.time_grid(k + 1)[:-1]                     # k steps, sigma_max -> sigma_min
        assert len(ts) == k + 1 and float(ts[-1]) == pytest.approx(smin, rel=1e-12)
        heun.append(float((sampling.sample_heun_edm(ms, EDM_P, x, ts) - exact).norm(dim=1).mean()))
        euler.append(float((sampling.sample_ode(ms, EDM_P, x, ts, method="euler") - exact).norm(dim=1).mean()))
    assert ode.empirical_order(steps, heun) == pytest.approx(2.0, abs=0.3), heun
    assert ode.empirical_order(steps, euler) == pytest.approx(1.0, abs=0.3), euler
    assert heun[-1] < 0.2 * euler[-1]


# ------------------------------------------------------------------ function evaluations

@pytest.mark.parametrize("n_steps", [1, 2, 7])
def test_nfe_heun_2n_minus_1_euler_and_ddim_n(n_steps):
    x = p_sigma_draws(8, 80.0, seed=13)
    ts = EDM_P.time_grid(n_steps)
    runs = {
        "heun": (lambda sc: sampling.sample_heun_edm(sc, EDM_P, x, ts), 2 * n_steps - 1),
        "euler": (lambda sc: sampling.sample_ode(sc, EDM_P, x, ts, method="euler"), n_steps),
        "ddim0": (lambda sc: sampling.sample_ddim(sc, EDM_P, x, ts, eta=0.0), n_steps),
        "ddim1": (lambda sc: sampling.sample_ddim(sc, EDM_P, x, ts, eta=1.0, generator=gen(0)), n_steps),
        "heun_no_zero": (lambda sc: sampling.sample_heun_edm(sc, EDM_P, x, ts[:-1]), 2 * (n_steps - 1)),
    }
    for name, (run, want) in runs.items():
        if want == 0:                                        # ts[:-1] of a 1-step grid is a single time
            continue
        counter = sampling.CountingScore(MixtureScore(GAUSS, EDM_P))
        run(counter)
        assert counter.calls == want, name


def test_counting_score_passes_values_through_and_rejects_non_callables():
    ms = MixtureScore(GAUSS, EDM_P)
    counter = sampling.CountingScore(ms)
    x = p_sigma_draws(4, 1.0, seed=14)
    assert torch.equal(counter(x, t64(1.0)), ms(x, t64(1.0)))
    assert counter.calls == 1
    with pytest.raises(TypeError):
        sampling.CountingScore(3)


# ------------------------------------------------------------------ DDIM's noise

@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("process,t,s", [(EDM_P, 1.5, 0.6), (EDM_P, 0.3, 0.1), (VP(), 0.5, 0.3)],
                         ids=["edm", "edm-small", "vp"])
def test_one_ddim_step_has_the_law_of_eta_times_the_posterior_noise(process, t, s, eta):
    # From one x_t: x_s = a_s x0_hat + sqrt(sig_s^2 - c^2) eps_hat + c z, c = eta * (posterior std), with
    # posterior std^2 = (sig_t^2 - (a_t/a_s)^2 sig_s^2) sig_s^2 / sig_t^2 (gauss-posterior). For eta = 1 the
    # mean is the posterior mean at x0_hat: sqrt(sig_s^2 - c^2) = a_ts sig_s^2 / sig_t, and with
    # eps_hat = (x_t - a_t x0_hat) / sig_t the terms regroup into a_ts sig_s^2/sig_t^2 x_t + a_s var_ts/sig_t^2 x0_hat.
    n = 20_000
    x_t = t64([[0.4, -0.9]])
    ms = MixtureScore(GAUSS, process)
    out = sampling.sample_ddim(ms, process, x_t.expand(n, 2).clone(), t64([t, s]), eta=eta, generator=gen(15))
    a_t, a_s = float(process.alpha(t64(t))), float(process.alpha(t64(s)))
    sig_t, sig_s = float(process.sigma(t64(t))), float(process.sigma(t64(s)))
    x0_hat = MU + a_t * S**2 / (a_t**2 * S**2 + sig_t**2) * (x_t[0] - a_t * MU)
    eps_hat = (x_t[0] - a_t * x0_hat) / sig_t
    a_ts = a_t / a_s
    var_ts = sig_t**2 - a_ts**2 * sig_s**2
    post_std = math.sqrt(var_ts * sig_s**2 / sig_t**2)
    c = eta * post_std
    mean = a_s * x0_hat + math.sqrt(sig_s**2 - c**2) * eps_hat
    assert (out.mean(0) - mean).abs().max() < 5 * c / math.sqrt(n)
    np.testing.assert_allclose(out.std(0).numpy(), c, rtol=5 * math.sqrt(0.5 / n))
    if eta == 1.0:
        post_mean = a_ts * sig_s**2 / sig_t**2 * x_t[0] + a_s * var_ts / sig_t**2 * x0_hat
        torch.testing.assert_close(mean, post_mean, rtol=1e-12, atol=1e-12)
        lib_mean, lib_std = process.posterior(x_t, x0_hat[None], t64(t), t64(s))
        torch.testing.assert_close(lib_mean[0], post_mean, rtol=1e-12, atol=1e-12)
        assert float(lib_std.squeeze()) == pytest.approx(post_std, rel=1e-12)


@pytest.mark.parametrize("process", [EDM_P, VP()], ids=["edm", "vp"])
def test_ddim_eta1_matches_the_ancestral_sampler_in_distribution(process):
    # Two-sample check over many draws: same one-step mean and std as sample_ancestral.
    n, (t, s) = 20_000, ((1.5, 0.6) if isinstance(process, EDM) else (0.5, 0.3))
    x_t = t64([[0.4, -0.9]]).expand(n, 2).clone()
    ms = MixtureScore(GAUSS, process)
    a = sampling.sample_ddim(ms, process, x_t, t64([t, s]), eta=1.0, generator=gen(16))
    b = sampling.sample_ancestral(ms, process, x_t, t64([t, s]), generator=gen(17))
    sd = float(b.std())
    assert (a.mean(0) - b.mean(0)).abs().max() < 5 * math.sqrt(2) * sd / math.sqrt(n)
    np.testing.assert_allclose(a.std(0).numpy(), b.std(0).numpy(), rtol=5 * math.sqrt(1.0 / n))


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    x = p_sigma_draws(40, 80.0, seed=18)
    ts = EDM_P.time_grid(6)
    ms = MixtureScore(GAUSS, EDM_P)
    a = sampling.sample_ddim(ms, EDM_P, x, ts, eta=0.0, generator=gen(1))
    assert torch.equal(sampling.sample_ddim(ms, EDM_P, x, ts, eta=0.0, generator=gen(2)), a)
    assert torch.equal(sampling.sample_ddim(ms, EDM_P, x, ts), a)
    b = sampling.sample_ddim(ms, EDM_P, x, ts, eta=1.0, generator=gen(1))
    assert torch.equal(sampling.sample_ddim(ms, EDM_P, x, ts, eta=1.0, generator=gen(1)), b)
    assert not torch.equal(sampling.sample_ddim(ms, EDM_P, x, ts, eta=1.0, generator=gen(2)), b)


# ------------------------------------------------------------------ churn

def heun_churn_by_hand(x, ts, churn, s_noise, seed):
    """Karras et al.'s Algorithm 2 on Gaussian data: noise up to t_hat = t (1 + gamma), then the closed-form step."""
    g = gen(seed)
    gamma = min(churn / (len(ts) - 1), math.sqrt(2) - 1)
    for t, s in zip(ts[:-1], ts[1:]):
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        t_hat = t * (1 + gamma)
        x = x + s_noise * math.sqrt(t_hat**2 - t**2) * z
        x = MU + (x - MU) * heun_factor(t_hat, s)
    return x


@pytest.mark.parametrize("churn,s_noise", [(0.5, 1.0), (100.0, 1.0), (0.5, 0.7)], ids=["small", "capped", "s_noise"])
def test_heun_edm_churn_steps_by_hand(churn, s_noise):
    ts = [2.0, 1.0, 0.0]
    x = p_sigma_draws(50, 2.0, seed=19)
    out = sampling.sample_heun_edm(gauss_score, EDM_P, x, t64(ts), churn=churn, s_noise=s_noise, generator=gen(20))
    torch.testing.assert_close(out, heun_churn_by_hand(x, ts, churn, s_noise, seed=20), rtol=1e-12, atol=1e-12)


def test_heun_edm_with_churn_is_random_and_without_it_deterministic():
    x = p_sigma_draws(40, 80.0, seed=21)
    ts = EDM_P.time_grid(8)
    ms = MixtureScore(GAUSS, EDM_P)
    a = sampling.sample_heun_edm(ms, EDM_P, x, ts, generator=gen(1))
    assert torch.equal(sampling.sample_heun_edm(ms, EDM_P, x, ts, generator=gen(2)), a)
    b = sampling.sample_heun_edm(ms, EDM_P, x, ts, churn=4.0, generator=gen(1))
    assert torch.equal(sampling.sample_heun_edm(ms, EDM_P, x, ts, churn=4.0, generator=gen(1)), b)
    assert not torch.equal(sampling.sample_heun_edm(ms, EDM_P, x, ts, churn=4.0, generator=gen(2)), b)


@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_heun_edm_with_the_exact_score_lands_on_the_gaussian(churn):
    # 128 steps: with churn the std's discretisation bias shrinks with N (measured +5% at 32 steps,
    # +2% at 64, +1% at 128); without churn +0.4% at 128.
    n = 10_000
    x = p_sigma_draws(n, 80.0, seed=22)
    out = sampling.sample_heun_edm(MixtureScore(GAUSS, EDM_P), EDM_P, x, EDM_P.time_grid(128), churn=churn,
                                   generator=gen(23))
    assert (out.mean(0) - MU).abs().max() < 5 * S / math.sqrt(n)
    np.testing.assert_allclose(out.std(0).numpy(), S, rtol=0.03)


# ------------------------------------------------------------------ sigma_schedule and EDM's times

KINDS = ["karras", "uniform", "cosine"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 5, 18])
def test_sigma_schedule_endpoints_order_and_final_zero(kind, n):
    sig = sigma_schedule(n, 0.002, 80.0, kind=kind, device="cpu")
    assert sig.shape == (n + 1,) and sig.dtype == torch.float64
    assert float(sig[0]) == pytest.approx(80.0, rel=1e-12)
    assert float(sig[n - 1]) == pytest.approx(0.002, rel=1e-10)
    assert float(sig[-1]) == 0.0
    assert bool((sig.diff() < 0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_sigma_schedule_with_one_step_is_sigma_max_then_zero(kind):
    sig = sigma_schedule(1, 0.002, 80.0, kind=kind, device="cpu")
    torch.testing.assert_close(sig, t64([80.0, 0.0]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_schedule_is_uniform_in_sigma_to_the_one_over_rho(rho):
    n, lo, hi = 10, 0.01, 20.0
    i = np.arange(n)
    want = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    sig = sigma_schedule(n, lo, hi, rho=rho, device="cpu").numpy()
    np.testing.assert_allclose(sig[:-1], want, rtol=1e-12)
    np.testing.assert_allclose(np.diff(sig[:-1] ** (1 / rho)), (lo ** (1 / rho) - hi ** (1 / rho)) / (n - 1), rtol=1e-9)


def test_karras_with_rho_one_is_uniform_and_larger_rho_sits_below_it():
    uni = sigma_schedule(12, 0.002, 80.0, kind="uniform", device="cpu")
    np.testing.assert_allclose(uni[:-1].numpy(), np.linspace(80.0, 0.002, 12), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sigma_schedule(12, 0.002, 80.0, kind="karras", rho=1.0, device="cpu"), uni,
                               rtol=1e-13, atol=0)
    # sigma = (a + u (b - a))^rho is convex in u for rho > 1: below its chord, the uniform grid, inside.
    k7 = sigma_schedule(12, 0.002, 80.0, rho=7.0, device="cpu")
    assert bool((k7[1:-2] < uni[1:-2]).all())


def test_cosine_schedule_is_the_noise_level_of_the_cosine_alpha_bar():
    # abar(u) = cos^2(pi/2 u) (s = 0) has noise level sqrt(1/abar - 1) = tan(pi/2 u); u runs uniformly
    # between the u's of sigma_max and sigma_min.
    n, lo, hi = 9, 0.002, 80.0
    u = np.linspace(2 / np.pi * np.arctan(hi), 2 / np.pi * np.arctan(lo), n)
    abar = np.cos(np.pi / 2 * u) ** 2
    sig = sigma_schedule(n, lo, hi, kind="cosine", device="cpu").numpy()
    np.testing.assert_allclose(sig[:-1], np.sqrt(1 / abar - 1), rtol=1e-9)
    assert sig[0] == pytest.approx(hi, rel=1e-12) and sig[-2] == pytest.approx(lo, rel=1e-10)


def test_sigma_schedule_rejects_bad_input():
    with pytest.raises(ValueError):
        sigma_schedule(0, 0.002, 80.0)
    with pytest.raises(TypeError):
        sigma_schedule(2.5, 0.002, 80.0)
    with pytest.raises(ValueError):
        sigma_schedule(5, 1.0, 1.0)
    with pytest.raises(ValueError):
        sigma_schedule(5, 2.0, 1.0)
    with pytest.raises(ValueError):
        sigma_schedule(5, 0.0, 1.0)
    with pytest.raises(ValueError):
        sigma_schedule(5, 0.002, 80.0, kind="linear")
    for rho in (0.0, -1.0):
        with pytest.raises(ValueError):
            sigma_schedule(5, 0.002, 80.0, kind="karras", rho=rho)
    with pytest.raises(ValueError):
        EDM(sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize("kind,rho", [("karras", 7.0), ("karras", 3.0), ("uniform", 7.0), ("cosine", 7.0)])
def test_edm_time_grid_is_sigma_schedule(kind, rho):
    p = EDM(sigma_min=0.01, sigma_max=40.0)
    assert torch.equal(p.time_grid(9, kind=kind, rho=rho, device="cpu"),
                       sigma_schedule(9, 0.01, 40.0, kind=kind, rho=rho, device="cpu"))
    assert torch.equal(p.time_grid(9, kind=kind, rho=rho, t_min=0.1, device="cpu"),
                       sigma_schedule(9, 0.1, 40.0, kind=kind, rho=rho, device="cpu"))
    assert p.t_min == 0.01 and p.prior_std() == 40.0
    t = t64([0.0, 0.5, 3.0])
    assert torch.equal(p.sigma(t), t) and torch.equal(p.alpha(t), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("p_mean,p_std", [(-1.2, 1.2), (0.5, 0.3)])
def test_edm_sample_time_is_log_normal(p_mean, p_std):
    n = 100_000
    kwargs = {} if (p_mean, p_std) == (-1.2, 1.2) else {"p_mean": p_mean, "p_std": p_std}
    sig = EDM_P.sample_time(n, generator=gen(24), device="cpu", **kwargs)
    assert sig.shape == (n,) and sig.dtype == torch.float64 and bool((sig > 0).all())
    logs = sig.log()
    assert float(logs.mean()) == pytest.approx(p_mean, abs=4 * p_std / math.sqrt(n))
    assert float(logs.std()) == pytest.approx(p_std, abs=4 * p_std / math.sqrt(2 * n))
    # Normal in log space: its third and fourth standardised moments are 0 and 3.
    z = (logs - p_mean) / p_std
    assert abs(float((z**3).mean())) < 4 * math.sqrt(15 / n)
    assert float((z**4).mean()) == pytest.approx(3.0, abs=4 * math.sqrt(96 / n))
    assert torch.equal(EDM_P.sample_time(n, generator=gen(24), device="cpu", **kwargs), sig)


# ------------------------------------------------------------------ preconditioning and the loss

class Recorder(torch.nn.Module):
    """A 'network' that returns zero and keeps what it was given."""

    def forward(self, x, t):
        self.x, self.t = x.clone(), t.clone()
        return torch.zeros_like(x)


class PerfectF(torch.nn.Module):
    """The F that makes c_skip x + c_out F the exact denoiser of N(mu, s^2 I) when sigma_data = s.

    D* = mu + c_skip (x - mu) = c_skip x + (1 - c_skip) mu, so F* = (1 - c_skip) mu / c_out
    = sigma mu / (s sqrt(s^2 + sigma^2)), a function of the time input c_noise = log(sigma) / 4 only.
    """

    def forward(self, x, t):
        sigma = torch.exp(4 * t)[:, None]
        return (sigma * MU / (S * (S**2 + sigma**2).sqrt())).expand_as(x)


class ZeroF(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def test_edm_precond_coefficients_are_karras_table_1():
    sd = 0.7
    pre = EDMPrecond(ZeroF(), sigma_data=sd)
    for sigma in (0.002, 0.3, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = (float(c) for c in pre.coefficients(t64(sigma)))
        assert c_skip == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-14)
        assert c_out == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-14)
        assert c_in == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-14)
        assert c_noise == pytest.approx(math.log(sigma) / 4, rel=1e-14)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_edm_precond_gives_the_network_unit_variance_inputs_and_targets(sigma):
    # Data N(0, s^2 I) with sigma_data = s: Var(x) = s^2 + sigma^2, so c_in x has variance 1; and
    # F_target = (x0 - c_skip x) / c_out has variance [(1 - c_skip)^2 s^2 + c_skip^2 sigma^2] / c_out^2 = 1.
    n = 50_000
    x0 = S * torch.randn(n, 2, generator=gen(25), dtype=torch.float64)
    x = x0 + sigma * torch.randn(n, 2, generator=gen(26), dtype=torch.float64)
    rec = Recorder()
    pre = EDMPrecond(rec, sigma_data=S)
    pre(x, sigma)
    tol = 5 * math.sqrt(2 / n)
    np.testing.assert_allclose(rec.x.var(0).numpy(), 1.0, atol=tol)
    assert rec.t.shape == (n,)
    torch.testing.assert_close(rec.t, torch.full((n,), math.log(sigma) / 4, dtype=torch.float64))
    c_skip, c_out, _, _ = pre.coefficients(t64(sigma))
    target = (x0 - c_skip * x) / c_out
    np.testing.assert_allclose(target.var(0).numpy(), 1.0, atol=tol)
    # The unpreconditioned input and the raw x0-target do not have unit variance: the check can fail.
    assert abs(float(x.var()) - 1) > 10 * tol or abs(float(x0.var()) - 1) > 10 * tol


def test_edm_precond_with_the_perfect_f_is_the_exact_denoiser():
    pre = EDMPrecond(PerfectF(), sigma_data=S)
    x = torch.randn(6, 2, generator=gen(27), dtype=torch.float64) * 3
    sig = t64([0.002, 0.1, 0.5, 1.0, 10.0, 80.0])
    torch.testing.assert_close(pre(x, sig), gauss_denoiser(x, sig), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pre(x, 0.8), gauss_denoiser(x, 0.8), rtol=1e-12, atol=1e-12)


def test_edm_loss_of_the_perfect_network_is_d_and_below_the_zero_network():
    # With the exact denoiser, x0 - D* | x ~ N(0, Var[x0 | x] I) and Var[x0 | x] = s^2 sigma^2/(s^2 + sigma^2)
    # = c_out^2: each sample's lambda-weighted loss |D* - x0|^2 / c_out^2 is chi^2 with d degrees of freedom,
    # whatever sigma, so the loss is d = 2 up to sqrt(2 d / n).
    # The zero network (D = c_skip x) adds the squared bias |(1 - c_skip) mu|^2 / c_out^2
    # = |mu|^2 sigma^2 / (s^2 (s^2 + sigma^2)), averaged over log sigma ~ N(-1.2, 1.2^2) (Gauss-Hermite).
    n, d = 20_000, 2
    x0 = GAUSS.sample(n, generator=gen(28)).double()
    perfect = float(diffusion.edm_loss(EDMPrecond(PerfectF(), S), EDM_P, x0, generator=gen(29)))
    zero = float(diffusion.edm_loss(EDMPrecond(ZeroF(), S), EDM_P, x0, generator=gen(29)))
    assert perfect == pytest.approx(d, abs=5 * math.sqrt(2 * d / n))
    z, w = np.polynomial.hermite_e.hermegauss(80)
    sig = np.exp(-1.2 + 1.2 * z)
    bias = float(MU.square().sum()) * float((w * sig**2 / (S**2 * (S**2 + sig**2))).sum() / w.sum())
    assert zero == pytest.approx(d + bias, rel=0.05)
    assert zero > perfect + 1.0


def test_edm_precond_rejects_bad_arguments():
    with pytest.raises(TypeError):
        EDMPrecond(lambda x, t: x)
    with pytest.raises(ValueError):
        EDMPrecond(ZeroF(), sigma_data=0.0)


# ------------------------------------------------------------------ guidance

MIX2 = data.GaussianMixture([[-1.5, 0.5], [1.0, -1.0]], [0.6, 0.4], [0.3, 0.7])   # class k = component k
C = 2


def exact_class_log_prob(process):
    """log p_t(y | x) = log softmax_k [log w_k + log N(x; a m_k, (a^2 s_k^2 + sig^2) I)] (Bayes at time t)."""
    ms = MixtureScore(MIX2, process)
    return lambda x, t: torch.log_softmax(ms._components(x, t)[0], dim=1)


def component_scores(process):
    return [MixtureScore(data.GaussianMixture(MIX2.means[k:k + 1], MIX2.stds[k]), process) for k in range(C)]


def exact_cond_score(process):
    """cond_score(x, t, y): the class's own component score for y in 0..C-1, the mixture's for y = C (null)."""
    scores = component_scores(process) + [MixtureScore(MIX2, process)]

    def cond(x, t, y):
        stacked = torch.stack([sc(x, t) for sc in scores])                       # (C + 1, n, d)
        return stacked[y, torch.arange(len(y))]

    return cond


def guidance_inputs(seed):
    x = torch.randn(40, 2, generator=gen(seed), dtype=torch.float64) * 2
    y = torch.randint(0, C, (40,), generator=gen(seed + 1))
    return x, y


def test_class_log_posterior_from_components_matches_the_marginal_component_log_probs():
    log_p = exact_class_log_prob(EDM_P)
    x, _ = guidance_inputs(30)
    for t in (0.05, 0.7, 3.0):
        want = torch.log_softmax(MixtureScore(MIX2, EDM_P).marginal(t).component_log_probs(x), dim=1)
        torch.testing.assert_close(log_p(x, t64(t)), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("process", [EDM_P, VP()], ids=["edm", "vp"])
def test_classifier_guidance_scale_0_is_unconditional_and_scale_1_is_the_class_score(process):
    # Bayes: log p_t(x | y) = log p_t(y | x) + log p_t(x) - log p(y), and log p(y) does not depend on x, so
    # grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x): scale 1 is the exact conditional
    # score, here the score of component y noised to time t.
    x, y = guidance_inputs(31)
    t = t64(0.4) if isinstance(process, VP) else torch.exp(torch.randn(40, generator=gen(32), dtype=torch.float64))
    ms = MixtureScore(MIX2, process)
    log_p = exact_class_log_prob(process)
    comp = component_scores(process)
    cond = torch.where((y == 0)[:, None], comp[0](x, t), comp[1](x, t))
    torch.testing.assert_close(sampling.classifier_guided_score(ms, log_p, y, 0.0)(x, t), ms(x, t), rtol=0, atol=0)
    torch.testing.assert_close(sampling.classifier_guided_score(ms, log_p, y, 1.0)(x, t), cond,
                               rtol=1e-10, atol=1e-10)
    assert (cond - ms(x, t)).abs().max() > 0.1                                     # the classes do pull apart


@pytest.mark.parametrize("w", [0.0, -1.0, 0.5, 3.0])
def test_cfg_equals_classifier_guidance_with_scale_one_plus_w(w):
    # (1 + w) s(x|y) - w s(x) = s(x) + (1 + w) [s(x|y) - s(x)] = s(x) + (1 + w) grad log p_t(y|x) by Bayes above.
    x, y = guidance_inputs(33)
    t = torch.exp(torch.randn(40, generator=gen(34), dtype=torch.float64))
    ms = MixtureScore(MIX2, EDM_P)
    cond = exact_cond_score(EDM_P)
    cfg = sampling.cfg_score(cond, y, w, null=C)(x, t)
    guided = sampling.classifier_guided_score(ms, exact_class_log_prob(EDM_P), y, 1.0 + w)(x, t)
    torch.testing.assert_close(cfg, guided, rtol=1e-10, atol=1e-10)
    if w == 0.0:
        torch.testing.assert_close(cfg, cond(x, t, y), rtol=1e-12, atol=1e-12)
    if w == -1.0:
        torch.testing.assert_close(cfg, ms(x, t), rtol=1e-12, atol=1e-12)


def test_classifier_guided_heun_samples_the_requested_class():
    # Scale 1 is the exact class score: Heun with it draws from component y, N(m_y, s_y^2 I).
    n, edm = 4000, EDM(sigma_min=0.002, sigma_max=20.0)
    y = torch.ones(n, dtype=torch.long)
    score = sampling.classifier_guided_score(MixtureScore(MIX2, edm), exact_class_log_prob(edm), y, 1.0)
    m, s = MIX2.means[1], float(MIX2.stds[1])
    # Start from the class's own p_sigma_max: from the mixture's, the mean would be off by
    # (mixture mean - m_y) sqrt((s_y^2 + sigma_min^2) / (s_y^2 + sigma_max^2)), about 3 SE here.
    x = m + math.sqrt(s**2 + 20.0**2) * torch.randn(n, 2, generator=gen(35), dtype=torch.float64)
    out = sampling.sample_heun_edm(score, edm, x, edm.time_grid(24))
    assert (out.mean(0) - m).abs().max() < 5 * s / math.sqrt(n)
    np.testing.assert_allclose(out.std(0).numpy(), s, rtol=0.05)


def test_guidance_rejects_bad_labels_and_arguments():
    ms, log_p = MixtureScore(MIX2, EDM_P), exact_class_log_prob(EDM_P)
    x, y = guidance_inputs(36)
    t = t64(1.0).expand(40)
    for bad in (torch.full((40,), C), torch.full((40,), -1), torch.zeros(39, dtype=torch.long)):
        with pytest.raises(ValueError):
            sampling.classifier_guided_score(ms, log_p, bad, 1.0)(x, t)
    with pytest.raises(TypeError):
        sampling.classifier_guided_score(ms, "not callable", y, 1.0)
    with pytest.raises(ValueError):
        sampling.classifier_guided_score(ms, log_p, y, float("nan"))
    cond = exact_cond_score(EDM_P)
    for bad in (torch.zeros(39, dtype=torch.long), torch.zeros(40, 1, dtype=torch.long)):
        with pytest.raises(ValueError):
            sampling.cfg_score(cond, bad, 1.0, null=C)(x, t)
    with pytest.raises(TypeError):
        sampling.cfg_score("not callable", y, 1.0, null=C)


# ------------------------------------------------------------------ bad sampler inputs

@pytest.mark.parametrize("eta", [-0.1, 1.1, float("nan")])
def test_ddim_rejects_eta_outside_0_1(eta):
    x = p_sigma_draws(4, 80.0, seed=37)
    with pytest.raises(ValueError):
        sampling.sample_ddim(MixtureScore(GAUSS, EDM_P), EDM_P, x, EDM_P.time_grid(4), eta=eta)


def test_heun_edm_rejects_other_processes_bad_grids_and_negative_churn():
    x = p_sigma_draws(4, 80.0, seed=38)
    ms = MixtureScore(GAUSS, EDM_P)
    for p in (VP(), diffusion.VE()):
        with pytest.raises(TypeError):
            sampling.sample_heun_edm(MixtureScore(GAUSS, p), p, x, p.time_grid(4))
    for ts in (EDM_P.time_grid(4).flip(0), t64([80.0, 10.0, 10.0, 0.0]), t64([80.0, 1.0, 5.0, 0.0])):
        with pytest.raises(ValueError):
            sampling.sample_heun_edm(ms, EDM_P, x, ts)
        with pytest.raises(ValueError):
            sampling.sample_ddim(ms, EDM_P, x, ts)
    with pytest.raises(ValueError):
        sampling.sample_heun_edm(ms, EDM_P, x, EDM_P.time_grid(4), churn=-1.0)


# ------------------------------------------------------------------ the churn window S_tmin, S_tmax

def test_heun_edm_churn_window_adds_no_noise_outside_it():
    x = p_sigma_draws(40, 80.0, seed=41)
    ts = EDM_P.time_grid(10)
    ms = MixtureScore(GAUSS, EDM_P)

    def path(**kwargs):
        return sampling.trajectory(sampling.sample_heun_edm, ms, EDM_P, x, ts, generator=gen(3), **kwargs)

    plain = path()
    # the default window holds every level: the same output as naming [0, inf] explicitly
    assert torch.equal(path(churn=5.0), path(churn=5.0, s_tmin=0.0, s_tmax=math.inf))
    # an empty window (all levels above s_tmax): no noise is added at all, the deterministic path
    assert torch.equal(path(churn=5.0, s_tmax=1e-4), plain)
    # window [0, 1]: every step from a level above 1 is the deterministic one; the first step from
    # a level inside the window differs
    windowed = path(churn=5.0, s_tmin=0.0, s_tmax=1.0)
    first_inside = int((ts[:-1] <= 1.0).nonzero()[0])
    assert first_inside > 0
    assert torch.equal(windowed[: first_inside + 1], plain[: first_inside + 1])
    assert not torch.allclose(windowed[first_inside + 1], plain[first_inside + 1])


def test_heun_edm_churn_window_by_hand_on_the_gaussian():
    ts = [2.0, 1.0, 0.5, 0.0]
    x = p_sigma_draws(30, 2.0, seed=42)
    out = sampling.sample_heun_edm(gauss_score, EDM_P, x, t64(ts), churn=0.9, s_tmin=0.8, s_tmax=1.5,
                                   generator=gen(7))
    g, gamma = gen(7), min(0.9 / 3, math.sqrt(2) - 1)
    y = x
    for t, s in zip(ts[:-1], ts[1:]):
        t_hat = t * (1 + gamma) if 0.8 <= t <= 1.5 else t
        if t_hat > t:
            y = y + math.sqrt(t_hat**2 - t**2) * torch.randn(y.shape, generator=g, dtype=torch.float64)
        y = MU + (y - MU) * heun_factor(t_hat, s)
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)


def test_heun_edm_rejects_a_bad_churn_window():
    x = p_sigma_draws(4, 80.0, seed=43)
    ms = MixtureScore(GAUSS, EDM_P)
    for bad in ({"s_tmin": 2.0, "s_tmax": 1.0}, {"s_tmin": -1.0}, {"s_tmax": float("nan")}):
        with pytest.raises(ValueError):
            sampling.sample_heun_edm(ms, EDM_P, x, EDM_P.time_grid(4), churn=1.0, **bad)
    with pytest.raises(TypeError):
        sampling.sample_heun_edm(ms, EDM_P, x, EDM_P.time_grid(4), churn=1.0, s_tmax="big")


# ------------------------------------------------------------------ an epsilon model as an EDM denoiser

@pytest.mark.parametrize("process", [VP(), diffusion.VE(sigma_min=0.01, sigma_max=50.0)], ids=["VP", "VE"])
def test_denoiser_from_eps_is_the_closed_form_gaussian_denoiser(process):
    # the exact epsilon model of N(MU, S^2 I) on the training path, wrapped, is the EDM denoiser
    # D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) of the unscaled coordinates
    den = diffusion.denoiser_from_eps(MixtureScore(GAUSS, process).eps, process)
    for sigma in (0.02, 0.5, 3.0, 40.0):
        x = p_sigma_draws(64, sigma, seed=44)
        torch.testing.assert_close(den(x, sigma), gauss_denoiser(x, sigma), rtol=1e-9, atol=1e-9)
    sig = t64([0.05, 1.0, 20.0, 2.0])                      # one level per sample
    x = p_sigma_draws(4, 1.0, seed=45)
    torch.testing.assert_close(den(x, sig), gauss_denoiser(x, sig), rtol=1e-9, atol=1e-9)


def test_denoiser_from_eps_drives_the_edm_sampler_to_the_data():
    vp = VP()
    den = diffusion.denoiser_from_eps(MixtureScore(GAUSS, vp).eps, vp)
    edm = EDM(sigma_min=0.02, sigma_max=100.0)
    x = p_sigma_draws(2000, 100.0, seed=46)
    out = sampling.sample_heun_edm(diffusion.score_from_denoiser(den, edm), edm, x, edm.time_grid(40))
    assert (out.mean(0) - MU).abs().max() < 0.05
    assert (out.std(0) - S).abs().max() < 0.03


def test_time_at_noise_level_inverts_the_noise_to_signal_ratio_and_rejects_bad_input():
    vp = VP()
    sig = t64([1e-3, 0.3, 1.0, 10.0, 100.0])
    t = diffusion.time_at_noise_level(vp, sig)
    torch.testing.assert_close(vp.sigma(t) / vp.alpha(t), sig, rtol=1e-10, atol=0.0)
    assert torch.equal(diffusion.time_at_noise_level(EDM_P, sig), sig)
    with pytest.raises(ValueError):
        diffusion.time_at_noise_level(vp, 1e4)              # beyond sigma(1) / alpha(1)
    with pytest.raises(TypeError):
        diffusion.time_at_noise_level(diffusion.DDPM.linear(), 1.0)
    with pytest.raises(TypeError):
        diffusion.denoiser_from_eps(lambda x, t: x, diffusion.DDPM.linear())
    with pytest.raises(TypeError):
        diffusion.denoiser_from_eps("not callable", vp)


# ------------------------------------------------------------------ the 2x2 of input scaling and target

class _Recorder(torch.nn.Module):
    """Returns zeros and remembers the input it was given."""

    def forward(self, x, t):
        self.seen = x
        return torch.zeros_like(x)


def test_eps_precond_input_scaling_is_edm_c_in_and_off_by_default():
    x, sigma = p_sigma_draws(8, 3.0, seed=47), 3.0
    plain, scaled = diffusion.EpsPrecond(_Recorder()), diffusion.EpsPrecond(_Recorder(), sigma_data=S)
    plain(x, sigma)
    scaled(x, sigma)
    assert torch.equal(plain.net.seen, x)
    torch.testing.assert_close(scaled.net.seen, x / math.sqrt(sigma**2 + S**2))
    with pytest.raises(ValueError):
        diffusion.EpsPrecond(_Recorder(), sigma_data=-1.0)


def test_edm_precond_without_input_scaling_feeds_the_raw_input():
    x, sigma = p_sigma_draws(8, 3.0, seed=48), 3.0
    raw = EDMPrecond(_Recorder(), sigma_data=S, scale_input=False)
    out = raw(x, sigma)
    assert torch.equal(raw.net.seen, x)
    torch.testing.assert_close(out, S**2 / (S**2 + sigma**2) * x)          # c_skip x when F = 0
    with pytest.raises(TypeError):
        EDMPrecond(_Recorder(), sigma_data=S, scale_input="no")

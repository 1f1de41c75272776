"""mlbook.sde: Euler-Maruyama simulation, the 1-D Fokker-Planck solver, OU marginals, total variation."""

import math

import pytest
import torch
from scipy.stats import norm

from mlbook import sde
from helpers import gen, t64


def normal_pdf(x, mean, var):
    return torch.exp(-(x - mean) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)


def grid(n=401, lo=-5.0, hi=5.0):
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    return g, float(g[1] - g[0])


def ou(theta, s):
    return (lambda x, t: -theta * x), (lambda t: s)


# ------------------------------------------------------------------ total variation

def test_total_variation_of_identical_densities_is_zero():
    x, dx = grid()
    p = normal_pdf(x, 0.3, 0.5)
    assert sde.total_variation(p, p.clone(), dx) == 0.0


def test_total_variation_of_disjoint_densities_is_one():
    x, dx = grid(1001)
    p = ((x > -4) & (x <= -1)).double()
    q = ((x > 1) & (x <= 3)).double()
    p, q = p / (p.sum() * dx), q / (q.sum() * dx)
    assert sde.total_variation(p, q, dx) == pytest.approx(1.0, rel=1e-12)


def test_total_variation_of_two_gaussians_is_the_closed_form():
    # TV(N(0,1), N(1,1)) = 2 Phi(1/2) - 1
    x, dx = grid(4001, -10.0, 11.0)
    got = sde.total_variation(normal_pdf(x, 0.0, 1.0), normal_pdf(x, 1.0, 1.0), dx)
    assert got == pytest.approx(2 * norm.cdf(0.5) - 1, abs=1e-6)
    assert got == sde.total_variation(normal_pdf(x, 1.0, 1.0), normal_pdf(x, 0.0, 1.0), dx)


def test_total_variation_rejects_bad_inputs():
    with pytest.raises(ValueError):
        sde.total_variation(torch.ones(5), torch.ones(6), 0.1)
    with pytest.raises(ValueError):
        sde.total_variation(torch.ones(5), torch.ones(5), 0.0)
    with pytest.raises(ValueError):
        sde.total_variation(torch.ones(5), torch.ones(5), -0.1)


# ------------------------------------------------------------------ ou_marginal

def test_ou_marginal_starts_at_the_initial_law_and_relaxes_to_the_stationary_one():
    m, v = sde.ou_marginal(1.5, 0.2, 2.0, 0.8, t64([0.0, 60.0]))
    assert m.tolist() == pytest.approx([1.5, 0.0], abs=1e-14)
    assert v.tolist() == pytest.approx([0.2, 0.8**2 / (2 * 2.0)], rel=1e-14)


def test_ou_marginal_solves_the_moment_equations():
    # dm/dt = -theta m and dv/dt = -2 theta v + s^2, by central differences.
    theta, s, h = 1.3, 0.7, 1e-6
    for t in (0.1, 0.7, 2.0):
        m_lo, v_lo = sde.ou_marginal(0.9, 0.3, theta, s, t - h)
        m_hi, v_hi = sde.ou_marginal(0.9, 0.3, theta, s, t + h)
        m, v = sde.ou_marginal(0.9, 0.3, theta, s, t)
        assert float(m_hi - m_lo) / (2 * h) == pytest.approx(-theta * float(m), rel=1e-7)
        assert float(v_hi - v_lo) / (2 * h) == pytest.approx(-2 * theta * float(v) + s * s, rel=1e-7)


def test_ou_marginal_rejects_a_non_positive_theta():
    with pytest.raises(ValueError):
        sde.ou_marginal(0.0, 1.0, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        sde.ou_marginal(0.0, 1.0, -1.0, 1.0, 0.5)


# ------------------------------------------------------------------ Fokker-Planck

@pytest.mark.parametrize("theta,s,m0,v0", [(1.0, 1.0, 1.0, 0.09), (2.0, 0.8, -1.0, 0.25)])
def test_fokker_planck_of_ou_matches_the_gaussian_marginal(theta, s, m0, v0):
    x, dx = grid()
    ts = [0.0, 0.1, 0.5, 1.0]
    drift, g = ou(theta, s)
    p = sde.fokker_planck_1d(drift, g, normal_pdf(x, m0, v0), x, ts)
    assert p.shape == (4, len(x))
    mass0 = float(p[0].sum()) * dx
    for k, t in enumerate(ts):
        m, v = sde.ou_marginal(m0, v0, theta, s, t)
        # measured: at most 6e-5 and 2.9e-4 for the two cases on 401 cells
        assert sde.total_variation(p[k], normal_pdf(x, m, v), dx) < 1e-3
        assert float(p[k].sum()) * dx == pytest.approx(mass0, abs=1e-12)            # mass is conserved
        assert float(p[k].min()) > -1e-12


def test_fokker_planck_error_is_second_order_in_the_grid_spacing():
    drift, g = ou(2.0, 0.8)
    errors = []
    for n in (201, 401):
        x, dx = grid(n)
        p = sde.fokker_planck_1d(drift, g, normal_pdf(x, -1.0, 0.25), x, [0.0, 0.5])
        m, v = sde.ou_marginal(-1.0, 0.25, 2.0, 0.8, 0.5)
        errors.append(sde.total_variation(p[1], normal_pdf(x, m, v), dx))
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.25)                     # measured 4.0


def test_fokker_planck_with_time_dependent_drift_and_diffusion():
    # dx = t dt + (1 + t) dw: a Gaussian with mean m0 + t^2/2 and variance v0 + ((1 + t)^3 - 1)/3.
    x, dx = grid(451, -9.0, 9.0)                    # the walls sit 5 std out at t = 1
    m0, v0 = -0.5, 0.2
    ts = [0.0, 0.4, 1.0]
    p = sde.fokker_planck_1d(lambda y, t: t * torch.ones_like(y), lambda t: 1 + t, normal_pdf(x, m0, v0), x, ts)
    for k, t in enumerate(ts):
        want = normal_pdf(x, m0 + t * t / 2, v0 + ((1 + t) ** 3 - 1) / 3)
        assert sde.total_variation(p[k], want, dx) < 2e-3


def test_fokker_planck_first_row_is_p0_and_dtype_is_kept():
    x, dx = grid(101)
    p0 = normal_pdf(x, 0.0, 0.5).float()
    drift, g = ou(1.0, 1.0)
    p = sde.fokker_planck_1d(drift, g, p0, x, [0.0, 0.2])
    assert p.dtype == torch.float32 and torch.equal(p[0], p0)


def test_fokker_planck_accepts_a_float32_linspace_grid():
    x = torch.linspace(-5.0, 5.0, 201)                                      # torch's default dtype
    dx = float(x[1] - x[0])
    drift, g = ou(1.0, 1.0)
    p = sde.fokker_planck_1d(drift, g, normal_pdf(x.double(), 1.0, 0.09).float(), x, [0.0, 0.5])
    m, v = sde.ou_marginal(1.0, 0.09, 1.0, 1.0, 0.5)
    assert sde.total_variation(p[1].double(), normal_pdf(x.double(), m, v), dx) < 1e-3


def test_fokker_planck_max_dt_only_refines_the_steps():
    x, dx = grid(201)
    drift, g = ou(1.0, 1.0)
    p0 = normal_pdf(x, 0.5, 0.2)
    a = sde.fokker_planck_1d(drift, g, p0, x, [0.0, 0.3])
    b = sde.fokker_planck_1d(drift, g, p0, x, [0.0, 0.3], max_dt=1e-4)
    want = normal_pdf(x, *sde.ou_marginal(0.5, 0.2, 1.0, 1.0, 0.3))
    # the default step (0.9 over the largest outflow rate, about 0.9 dx^2 / g^2 = 2e-3 here) and
    # a much smaller one differ by O(dt)
    assert 0 < sde.total_variation(a[1], b[1], dx) < 5e-4
    assert sde.total_variation(b[1], want, dx) < 1e-3


def test_fokker_planck_rejects_bad_inputs():
    x, dx = grid(101)
    p0 = normal_pdf(x, 0.0, 1.0)
    drift, g = ou(1.0, 1.0)
    uneven = torch.cat([x[:50], x[50:] + 0.01 * torch.arange(51, dtype=torch.float64)])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0, uneven, [0.0, 1.0])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0, x.flip(0), [0.0, 1.0])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0, x, [1.0, 0.0])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0, x, [0.0, 0.5, 0.3])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0[:-1], x, [0.0, 1.0])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0[:, None], x, [0.0, 1.0])
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(drift, g, p0[:2], x[:2], [0.0, 1.0])


# ------------------------------------------------------------------ Euler-Maruyama

def test_euler_maruyama_of_ou_matches_the_marginal_moments():
    theta, s, m0, v0, n = 1.0, 1.0, 1.0, 0.09, 20_000
    x0 = m0 + math.sqrt(v0) * torch.randn(n, 2, generator=gen(0), dtype=torch.float64)
    ts = torch.linspace(0, 1, 201, dtype=torch.float64)
    drift, g = ou(theta, s)
    states = sde.euler_maruyama(drift, g, x0, ts, generator=gen(1))
    assert states.shape == (201, n, 2) and torch.equal(states[0], x0)
    for k in (20, 100, 200):
        m, v = (float(u) for u in sde.ou_marginal(m0, v0, theta, s, ts[k]))
        # Euler-Maruyama's own bias on the variance is about theta h / 2 = 0.25%, well below the 5 SE allowed
        assert (states[k].mean(0) - m).abs().max() < 5 * math.sqrt(v / n)
        assert (states[k].var(0) - v).abs().max() < 5 * v * math.sqrt(2 / n)


def test_euler_maruyama_without_noise_is_the_euler_method():
    x0 = t64([[1.0], [-2.0]])
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    states = sde.euler_maruyama(lambda x, t: -0.5 * x + t, lambda t: 0.0, x0, ts)
    want = x0.clone()
    for i in range(10):
        want = want + 0.1 * (-0.5 * want + float(ts[i]))                  # the drift is evaluated at the left end
        torch.testing.assert_close(states[i + 1], want, rtol=1e-13, atol=1e-13)


def test_euler_maruyama_noise_has_variance_g_squared_h():
    n = 50_000
    ts = t64([0.0, 0.3, 0.5])
    states = sde.euler_maruyama(lambda x, t: torch.zeros_like(x), lambda t: 2.0 + t, torch.zeros(n), ts,
                                generator=gen(2))
    steps = states.diff(dim=0)
    want = [(2.0 + 0.0) ** 2 * 0.3, (2.0 + 0.3) ** 2 * 0.2]           # g at the left end of each step
    for k in range(2):
        assert float(steps[k].var()) == pytest.approx(want[k], rel=5 * math.sqrt(2 / n))
        assert abs(float(steps[k].mean())) < 5 * math.sqrt(want[k] / n)


def test_euler_maruyama_is_reproducible_from_its_generator():
    drift, g = ou(1.0, 1.0)
    x0, ts = torch.zeros(10, 2, dtype=torch.float64), torch.linspace(0, 1, 6, dtype=torch.float64)
    a = sde.euler_maruyama(drift, g, x0, ts, generator=gen(3))
    assert torch.equal(sde.euler_maruyama(drift, g, x0, ts, generator=gen(3)), a)
    assert not torch.equal(sde.euler_maruyama(drift, g, x0, ts, generator=gen(4)), a)


def test_euler_maruyama_rejects_bad_inputs():
    drift, g = ou(1.0, 1.0)
    x0 = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError):
        sde.euler_maruyama(drift, g, x0, [1.0, 0.5, 0.0])
    with pytest.raises(ValueError):
        sde.euler_maruyama(drift, g, x0, [0.0, 0.5, 0.2])
    with pytest.raises(ValueError):
        sde.euler_maruyama(drift, g, x0, [0.0])
    with pytest.raises(TypeError):
        sde.euler_maruyama(drift, g, [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(TypeError):
        sde.euler_maruyama(drift, g, torch.zeros(3, dtype=torch.long), [0.0, 1.0])


@pytest.mark.parametrize("s, tv_bound", [(0.1, 0.05), (0.05, 0.1), (0.0, 0.1)])
def test_fokker_planck_stays_a_density_when_drift_dominates(s, tv_bound):
    # OU with theta = 1 on 401 cells: at s = 0.1 the cell Peclet number |F| dx / (g^2/2) reaches
    # 25, where central fluxes make the density negative and explicit steps blow it up. The
    # Scharfetter-Gummel fluxes keep it a density; what is left is the grid's resolution (the
    # stationary std at s = 0.1 is 3 cells). Measured TV at t = 1: 0.027, 0.065, 0.085.
    x, dx = grid(401)
    drift, g = ou(1.0, s)
    ts = [0.0, 1.0, 4.0]
    p = sde.fokker_planck_1d(drift, g, normal_pdf(x, 1.0, 0.09), x, ts)
    assert float(p.min()) >= 0.0
    for k, t in enumerate(ts):
        assert float(p[k].sum()) * dx == pytest.approx(float(p[0].sum()) * dx, abs=1e-12)
    m, v = sde.ou_marginal(1.0, 0.09, 1.0, s, 1.0)
    assert sde.total_variation(p[1], normal_pdf(x, m, v), dx) < tv_bound


def test_fokker_planck_converges_when_drift_dominates():
    # s = 0.1 on [-1, 2]: the error halves with dx (first order, the upwind limit of the flux).
    drift, g = ou(1.0, 0.1)
    m, v = sde.ou_marginal(1.0, 0.09, 1.0, 0.1, 1.0)
    errors = []
    for n in (401, 801):
        x, dx = grid(n, -1.0, 2.0)
        p = sde.fokker_planck_1d(drift, g, normal_pdf(x, 1.0, 0.09), x, [0.0, 1.0])
        errors.append(sde.total_variation(p[1], normal_pdf(x, m, v), dx))
    assert errors[1] < 2.5e-3                                        # measured 1.6e-3
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.25)     # measured 2.0


def test_fokker_planck_rejects_bad_steps_and_non_finite_drift():
    x, _ = grid(101)
    p0 = normal_pdf(x, 0.0, 0.5)
    drift, g = ou(1.0, 1.0)
    with pytest.raises(ValueError, match="max_dt"):
        sde.fokker_planck_1d(drift, g, p0, x, [0.0, 0.1], max_dt=0.0)
    with pytest.raises(ValueError, match="not finite"):
        sde.fokker_planck_1d(lambda y, t: y / 0.0, g, p0, x, [0.0, 0.1])


# ------------------------------------------------------------------ the sub-VP SDE

def test_sub_vp_coefficients_satisfy_the_sde_relations_and_its_variance_is_below_vp():
    from mlbook.diffusion import VP

    sub, vp = sde.SubVP(), VP()
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(sub.alpha(t), vp.alpha(t))           # same drift, same signal scale
    torch.testing.assert_close(sub.f(t), vp.f(t))
    # g^2 = d sigma^2 / dt - 2 f sigma^2 (eq. sde-coefficients), derivative by central differences
    h = 1e-6
    dvar = (sub.sigma(t + h) ** 2 - sub.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(sub.g2(t), dvar - 2 * sub.f(t) * sub.sigma(t) ** 2, rtol=1e-6, atol=1e-9)
    assert bool((sub.sigma(t) ** 2 <= vp.sigma(t) ** 2).all())
    assert bool((sub.g2(t) < vp.g2(t)).all())
    assert float(sub.sigma(torch.tensor(1.0))) > 0.999               # still ends near pure noise


def test_sub_vp_forward_simulation_has_the_closed_form_marginal():
    sub = sde.SubVP()
    x0 = torch.full((10000, 1), 1.5, dtype=torch.float64)
    ts = torch.linspace(0.0, 0.5, 401, dtype=torch.float64)
    path = sde.euler_maruyama(lambda x, t: sub.f(torch.tensor(t)) * x,
                              lambda t: sub.g2(torch.tensor(t)).sqrt(), x0, ts, generator=torch.Generator().manual_seed(0))
    end, t_end = path[-1], torch.tensor(0.5, dtype=torch.float64)
    se = float(sub.sigma(t_end)) / math.sqrt(len(end))
    assert abs(float(end.mean()) - 1.5 * float(sub.alpha(t_end))) < 4 * se
    assert abs(float(end.std()) / float(sub.sigma(t_end)) - 1) < 0.02


def test_sub_vp_probability_flow_with_the_exact_score_lands_on_the_data():
    from mlbook import data, diffusion, metrics, sampling

    mix = data.GaussianMixture([[-1.0], [1.0]], [0.3, 0.3])
    sub = sde.SubVP()
    x = diffusion.MixtureScore(mix, sub).marginal(1.0).sample(4000, generator=torch.Generator().manual_seed(1)).double()
    out = sampling.sample_ode(diffusion.MixtureScore(mix, sub), sub, x, sub.time_grid(100))
    ref = mix.sample(4000, generator=torch.Generator().manual_seed(2)).double()
    floor = metrics.sliced_wasserstein(mix.sample(4000, generator=torch.Generator().manual_seed(3)).double(), ref)
    assert metrics.sliced_wasserstein(out, ref) < 3 * floor + 0.01
    with pytest.raises(ValueError):
        sde.SubVP(beta_min=5.0, beta_max=1.0)


# ------------------------------------------------------------------ the likelihood bound in 1-D

def _bound_setup():
    from mlbook import data, diffusion

    mix = data.GaussianMixture([[-1.0], [1.2]], [0.35, 0.5], [0.4, 0.6])
    vp = diffusion.VP()
    exact = diffusion.MixtureScore(mix, vp)
    x = torch.linspace(-5.0, 5.0, 121, dtype=torch.float64)
    return mix, vp, exact, x, float(x[1] - x[0])


def test_reverse_sde_and_flow_densities_with_the_exact_score_are_the_data_density():
    mix, vp, exact, x, dx = _bound_setup()
    p0 = mix.log_prob(x[:, None]).exp()
    assert sde.total_variation(sde.reverse_sde_density_1d(exact, vp, x), p0, dx) < 0.01
    assert sde.total_variation(sde.flow_density_1d(exact, vp, x, n_steps=100), p0, dx) < 0.01


def test_likelihood_bound_holds_for_an_imperfect_score_and_is_zero_plus_prior_for_the_exact_one():
    mix, vp, exact, x, dx = _bound_setup()
    p0 = mix.log_prob(x[:, None]).exp()
    score_term, prior_term = sde.likelihood_bound_1d(exact, exact, vp, x, n_times=50)
    assert score_term == 0.0 and 0 < prior_term < 1e-4              # alpha_1 ~ 0.0066: p_1 is nearly N(0, 1)

    def wrong(y, t):
        return exact(y, t) + 0.3 * torch.tanh(2 * y)

    kl = sde.kl_on_grid(p0, sde.reverse_sde_density_1d(wrong, vp, x), dx)
    score_term, prior_term = sde.likelihood_bound_1d(wrong, exact, vp, x, n_times=100)
    assert 0.01 < kl < score_term + prior_term


def test_kl_on_grid_matches_the_gaussian_closed_form_and_rejects_bad_input():
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    dx = float(x[1] - x[0])
    p, q = normal_pdf(x, 0.0, 1.0), normal_pdf(x, 0.5, 2.0)
    closed = 0.5 * (1.0 / 2.0 + 0.25 / 2.0 - 1 + math.log(2.0))
    assert abs(sde.kl_on_grid(p, q, dx) - closed) < 1e-6
    assert sde.kl_on_grid(p, p, dx) == 0.0
    with pytest.raises(ValueError):
        sde.kl_on_grid(p, q[:-1], dx)
    with pytest.raises(ValueError):
        sde.kl_on_grid(p, torch.zeros_like(q), dx)


def test_reverse_densities_reject_bad_input():
    mix, vp, exact, x, dx = _bound_setup()
    with pytest.raises(TypeError):
        sde.reverse_sde_density_1d("not callable", vp, x)
    with pytest.raises(ValueError):
        sde.reverse_sde_density_1d(exact, vp, x, t_end=1.0)
    with pytest.raises(ValueError):
        sde.flow_density_1d(exact, vp, x.flip(0))
    with pytest.raises(TypeError):
        sde.likelihood_bound_1d(None, exact, vp, x)

"""mlbook.sampling's exponential-integrator samplers: DPM-Solver-2 and DPM-Solver++(2M).

Driven by the exact score of a Gaussian mixture, so the only error is the solver's: measured
against a fine RK4 solution of the probability-flow ODE from the same starting points.
"""

import math

import numpy as np
import pytest
import torch

from mlbook import data, sampling
from mlbook.diffusion import DDPM, EDM, VP, MixtureScore
from helpers import gen, t64

MIX = data.GaussianMixture([[-2.0, 0.0], [1.5, 1.5], [1.0, -1.5]], [0.3, 0.5, 0.4], [0.5, 0.3, 0.2])
EDM20 = EDM(sigma_min=0.002, sigma_max=20.0)
STEPS = [10, 20, 40, 80]


def log_grid(n, hi=20.0, lo=0.01):
    """n steps from sigma = hi to lo, uniform in log sigma (= uniform in log-SNR for EDM)."""
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64))


@pytest.fixture(scope="module")
def problem():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # 200 points in 2-D: threads only add overhead
    score = MixtureScore(MIX, EDM20)
    x = score.marginal(20.0).sample(200, generator=gen(3)).double()
    exact = sampling.sample_ode(score, EDM20, x, log_grid(320), method="rk4")
    yield score, x, exact
    torch.set_num_threads(threads)


def errors(sampler, problem):
    score, x, exact = problem
    return [float((sampler(score, EDM20, x, log_grid(n), show_progress=False) - exact).norm(dim=1).mean())
            for n in STEPS]


def slope(errs):
    return float(np.polyfit(np.log(STEPS), np.log(errs), 1)[0])


def test_reference_solution_is_converged(problem):
    score, x, exact = problem
    finer = sampling.sample_ode(score, EDM20, x, log_grid(640), method="rk4")
    assert float((finer - exact).norm(dim=1).mean()) < 1e-6


@pytest.mark.parametrize("sampler", [sampling.sample_dpm_solver_2, sampling.sample_dpmpp_2m])
def test_second_order_error_falls_with_the_square_of_the_step(sampler, problem):
    errs = errors(sampler, problem)
    assert -2.5 < slope(errs) < -1.6, f"error against steps {errs} has slope {slope(errs):.2f}, not about -2"
    ddim = errors(sampling.sample_ddim, problem)
    assert -1.2 < slope(ddim) < -0.8, f"DDIM is first order: slope {slope(ddim):.2f}"
    assert errs[-1] < 0.2 * ddim[-1]


@pytest.mark.parametrize("process", [VP(), EDM20])
def test_first_step_of_dpm_solver_1_is_ddim(process):
    score = MixtureScore(MIX, process)
    t0 = 0.8 if isinstance(process, VP) else 5.0
    x = score.marginal(t0).sample(50, generator=gen(4)).double()
    ts = t64([t0, 0.5 * t0])
    t, s = ts[0], ts[1]
    a_t, sig_t, a_s, sig_s = (process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s))
    h = sampling.half_log_snr(process, s) - sampling.half_log_snr(process, t)
    eps = -sig_t * score(x, t.expand(50))
    dpm1 = (a_s / a_t) * x - sig_s * torch.expm1(h) * eps            # eq. (dpm-solver-1)
    x0 = (x - sig_t * eps) / a_t
    dpmpp1 = (sig_s / sig_t) * x - a_s * torch.expm1(-h) * x0          # eq. (dpmpp-1)
    ddim = sampling.sample_ddim(score, process, x, ts, show_progress=False)
    torch.testing.assert_close(dpm1, ddim, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dpmpp1, ddim, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sampling.sample_dpmpp_2m(score, process, x, ts, show_progress=False), ddim,
                               rtol=1e-12, atol=1e-12)


def test_midpoint_time_halves_the_log_snr_step():
    vp = VP()
    t, s = t64(0.9), t64(0.05)
    r = sampling._time_at_log_snr(vp, 0.5 * (sampling.half_log_snr(vp, t) + sampling.half_log_snr(vp, s)), t, s)
    lam = sampling.half_log_snr(vp, torch.stack([t, r, s]))
    assert float(s) < float(r) < float(t)
    assert abs(float(lam[1] - lam[0]) - float(lam[2] - lam[1])) < 1e-10
    r_edm = sampling._time_at_log_snr(EDM20, t64(-0.5 * math.log(4.0)), t64(4.0), t64(1.0))
    assert abs(float(r_edm) - 2.0) < 1e-12                             # geometric mean of the sigmas


@pytest.mark.parametrize("process, grid, per_step, last", [
    (VP(), VP().time_grid(6), {"dpm2": 2, "2m": 1}, 0), (EDM20, EDM20.time_grid(6), {"dpm2": 2, "2m": 1}, 1)])
def test_evaluations_per_step(process, grid, per_step, last):
    x = MixtureScore(MIX, process).marginal(float(grid[0])).sample(20, generator=gen(5)).double()
    for name, sampler in [("dpm2", sampling.sample_dpm_solver_2), ("2m", sampling.sample_dpmpp_2m)]:
        counted, seen = sampling.CountingScore(MixtureScore(MIX, process)), []
        out = sampler(counted, process, x, grid, show_progress=False,
                      callback=lambda i, t, state: seen.append((i, t)))
        n = len(grid) - 1
        expected = per_step[name] * n - (last if name == "dpm2" else 0)
        assert counted.calls == expected, f"{name}: {counted.calls} evaluations for {n} steps"
        assert [i for i, _ in seen] == list(range(n)) and seen[-1][1] == float(grid[-1])
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("sampler", [sampling.sample_dpm_solver_2, sampling.sample_dpmpp_2m])
def test_bad_input_raises(sampler):
    p = VP()
    ms, x = MixtureScore(MIX, p), torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="decrease"):
        sampler(ms, p, x, p.time_grid(4).flip(0))
    with pytest.raises(TypeError, match="callable"):
        sampler("not a score", p, x, p.time_grid(4))
    with pytest.raises(TypeError, match="NoiseProcess"):
        sampler(ms, "vp", x, p.time_grid(4))
    with pytest.raises(ValueError):
        sampler(ms, p, torch.zeros(4, dtype=torch.float64), p.time_grid(4))
    with pytest.raises(ValueError):
        sampler(ms, p, x, t64([1.0]))


def test_dpm_solver_2_refuses_a_discrete_ddpm_process():
    ddpm = DDPM.linear(T=100)
    with pytest.raises(TypeError, match="DDPM"):
        sampling.sample_dpm_solver_2(MixtureScore(MIX, ddpm), ddpm, torch.zeros(4, 2, dtype=torch.float64),
                                     ddpm.time_grid(10))

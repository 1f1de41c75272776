"""mlbook.ode: fixed-step solvers and their orders, divergences, and the ODE log-likelihood."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from mlbook import ode
from helpers import gen, t64

A = np.array([[-0.5, 2.0], [-1.0, -0.3]])          # trace -0.8, A01 + A10 = 1.0
A_T = torch.from_numpy(A)


def linear(x, t):
    return x @ A_T.T


def cos_field(x, t):
    """dx/dt = cos(t) x, solved by x(t) = x(t0) exp(sin t - sin t0): a field that needs the right times."""
    return torch.cos(t)[:, None] * x


def points(n=5, d=2, seed=0):
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64)


def std_normal_log_prob(x):
    return -0.5 * (x.square().sum(1) + x.shape[1] * math.log(2 * math.pi))


def fitted_order(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


# ------------------------------------------------------------------ single steps

@pytest.mark.parametrize("h", [0.1, -0.3])
def test_steps_are_the_taylor_polynomials_of_exp_on_a_linear_ode(h):
    lam = -1.7
    x = t64([[0.8], [-2.0]])
    z = h * lam
    t, s = t64(0.4), t64(0.4 + h)
    f = lambda x, t: lam * x                                             # noqa: E731
    torch.testing.assert_close(ode.euler_step(f, x, t, s), (1 + z) * x, rtol=1e-14, atol=0)
    torch.testing.assert_close(ode.heun_step(f, x, t, s), (1 + z + z * z / 2) * x, rtol=1e-14, atol=0)
    torch.testing.assert_close(ode.rk4_step(f, x, t, s), (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) * x,
                               rtol=1e-14, atol=0)


def test_steps_evaluate_the_field_at_the_right_times():
    # dx/dt = t^2: Euler is a left Riemann sum, Heun the trapezoid rule, RK4 Simpson's rule (exact for cubics).
    f = lambda x, t: (t**2)[:, None] * torch.ones_like(x)                # noqa: E731
    x, t, s = torch.zeros(3, 1, dtype=torch.float64), t64(0.5), t64(1.25)
    h = 0.75
    assert torch.allclose(ode.euler_step(f, x, t, s), torch.full((3, 1), h * 0.25, dtype=torch.float64))
    assert torch.allclose(ode.heun_step(f, x, t, s), torch.full((3, 1), h * (0.25 + 1.5625) / 2, dtype=torch.float64))
    exact = (1.25**3 - 0.5**3) / 3
    assert torch.allclose(ode.rk4_step(f, x, t, s), torch.full((3, 1), exact, dtype=torch.float64), rtol=1e-14)


def test_field_receives_one_time_per_row():
    seen = []

    def f(x, t):
        seen.append((tuple(t.shape), t.dtype))
        return -x

    ode.solve(f, points(4), t64([0.0, 0.5, 1.0]), method="rk4")
    assert seen == [((4,), torch.float64)] * 8


# ------------------------------------------------------------------ convergence orders

@pytest.mark.parametrize("method,order,steps", [
    ("euler", 1, [8, 16, 32, 64, 128]),
    ("heun", 2, [8, 16, 32, 64, 128]),
    ("rk4", 4, [4, 8, 16, 32, 64]),
])
def test_convergence_order_on_a_linear_system(method, order, steps):
    x0 = points(6)
    exact = x0 @ torch.from_numpy(expm(A * 2.0)).T
    errors = [float((ode.solve(linear, x0, torch.linspace(0, 2, k + 1, dtype=torch.float64), method=method)
                     - exact).abs().max()) for k in steps]
    assert fitted_order(steps, errors) == pytest.approx(order, abs=0.3), errors


@pytest.mark.parametrize("method,order,steps", [
    ("euler", 1, [8, 16, 32, 64, 128]),
    ("heun", 2, [8, 16, 32, 64, 128]),
    ("rk4", 4, [16, 32, 64, 128]),          # 4 and 8 steps are pre-asymptotic here (local slopes 4.5, 4.3)
])
def test_convergence_order_on_a_time_dependent_field(method, order, steps):
    x0 = points(6)
    exact = x0 * math.exp(math.sin(3.0) - math.sin(0.0))
    errors = [float((ode.solve(cos_field, x0, torch.linspace(0, 3, k + 1, dtype=torch.float64), method=method)
                     - exact).abs().max()) for k in steps]
    assert fitted_order(steps, errors) == pytest.approx(order, abs=0.3), errors


def test_empirical_order_reads_off_the_slope():
    n = [10, 20, 40, 80]
    assert ode.empirical_order(n, [3.0 * k**-2.0 for k in n]) == pytest.approx(2.0, rel=1e-12)
    assert ode.empirical_order(n, [0.5 * k**-1.0 for k in n]) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError):
        ode.empirical_order([10, 20], [1.0])
    with pytest.raises(ValueError):
        ode.empirical_order([10, 20], [1.0, 0.0])


# ------------------------------------------------------------------ solve

def test_solve_backward_in_time_matches_the_exact_flow():
    x1 = points(5)
    got = ode.solve(linear, x1, torch.linspace(1, 0, 101, dtype=torch.float64), method="rk4")
    torch.testing.assert_close(got, x1 @ torch.from_numpy(expm(-A)).T, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method,tol", [("rk4", 1e-9), ("heun", 1e-4)])
def test_forward_then_backward_returns_to_the_start(method, tol):
    x0 = points(5)
    ts = torch.linspace(0.2, 2.2, 201, dtype=torch.float64)
    x1 = ode.solve(cos_field, x0, ts, method=method)
    assert float((x1 - x0).abs().max()) > 0.1                           # it went somewhere
    back = ode.solve(cos_field, x1, ts.flip(0), method=method)
    torch.testing.assert_close(back, x0, rtol=0, atol=tol)


def test_callback_is_called_once_per_step_in_order():
    calls = []
    ts = t64([0.0, 0.1, 0.3, 0.35, 1.0])
    out = ode.solve(linear, points(3), ts, method="heun",
                    callback=lambda i, t, x: calls.append((i, t, x.clone())))
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert [c[1] for c in calls] == pytest.approx(ts[1:].tolist(), abs=0)
    assert all(isinstance(c[1], float) for c in calls)
    assert torch.equal(calls[-1][2], out)
    # the state handed over after step i is the solution up to ts[i + 1]
    torch.testing.assert_close(calls[1][2], ode.solve(linear, points(3), ts[:3], method="heun"))


def test_solve_works_in_float32():
    x0 = points(4).float()
    f32 = lambda x, t: x @ A_T.T.to(x.dtype)                            # noqa: E731
    got = ode.solve(f32, x0, torch.linspace(0, 1, 51), method="rk4")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), x0.double() @ torch.from_numpy(expm(A)).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ts", [[0.0, 0.5, 0.2], [0.0], [[0.0, 1.0]], [0.0, 0.5, 0.5, 1.0], [0.0, float("nan")]])
def test_solve_rejects_bad_time_grids(ts):
    with pytest.raises(ValueError):
        ode.solve(linear, points(2), ts)


def test_solve_rejects_unknown_method_and_bad_state():
    with pytest.raises(ValueError):
        ode.solve(linear, points(2), [0.0, 1.0], method="midpoint")
    with pytest.raises(ValueError):
        ode.solve(linear, torch.zeros(3, dtype=torch.float64), [0.0, 1.0])
    with pytest.raises(TypeError):
        ode.solve(linear, torch.zeros(3, 2, dtype=torch.long), [0.0, 1.0])


def test_check_grid_returns_float64():
    ts = ode.check_grid([1, 0.5, 0])
    assert ts.dtype == torch.float64 and ts.tolist() == [1.0, 0.5, 0.0]


# ------------------------------------------------------------------ divergences

def test_divergence_exact_of_a_linear_field_is_the_trace():
    div = ode.divergence_exact(linear, points(7), t64(0.3).expand(7))
    torch.testing.assert_close(div, torch.full((7,), float(np.trace(A)), dtype=torch.float64), rtol=1e-14, atol=1e-14)


def test_divergence_exact_of_a_nonlinear_field():
    def f(x, t):
        return torch.stack([x[:, 0] ** 2 * x[:, 1] * t,
                            torch.sin(x[:, 1]) * x[:, 0] + x[:, 1] ** 3,
                            x[:, 0] * x[:, 1]], 1)

    x, t = points(6, d=3), torch.linspace(0.1, 0.6, 6, dtype=torch.float64)
    want = 2 * x[:, 0] * x[:, 1] * t + torch.cos(x[:, 1]) * x[:, 0] + 3 * x[:, 1] ** 2 + 0.0
    torch.testing.assert_close(ode.divergence_exact(f, x, t), want, rtol=1e-12, atol=1e-12)


def test_divergence_exact_works_under_no_grad():
    with torch.no_grad():
        div = ode.divergence_exact(linear, points(3), t64(0.0).expand(3))
    torch.testing.assert_close(div, torch.full((3,), -0.8, dtype=torch.float64))


def test_hutchinson_is_z_a_z_for_each_probe_on_a_linear_field():
    n = 50
    x = points(n)
    for z in ((torch.randint(0, 2, (n, 2), generator=gen(1)) * 2 - 1).double(),
              torch.randn(n, 2, generator=gen(2), dtype=torch.float64)):
        want = torch.einsum("ni,ij,nj->n", z, A_T, z)
        torch.testing.assert_close(ode.divergence_hutchinson(linear, x, t64(0.5).expand(n), z), want,
                                   rtol=1e-13, atol=1e-13)


def test_hutchinson_averages_to_the_trace():
    n = 20_000
    z = (torch.randint(0, 2, (n, 2), generator=gen(3)) * 2 - 1).double()
    est = ode.divergence_hutchinson(linear, points(n, seed=4), t64(0.0).expand(n), z)
    # each Rademacher estimate is trace +- (A01 + A10), so the mean has standard error 1/sqrt(n)
    assert set(np.round(est.numpy() - np.trace(A), 12)) == {-1.0, 1.0}
    assert float(est.mean()) == pytest.approx(np.trace(A), abs=4 / math.sqrt(n))


def test_hutchinson_averages_to_the_exact_divergence_of_a_nonlinear_field():
    def f(x, t):
        return torch.stack([torch.tanh(x[:, 0] * x[:, 1]), x[:, 0] ** 2 - torch.sin(x[:, 1])], 1)

    n = 40_000
    x = t64([[0.3, -0.7]]).expand(n, 2)
    t = t64(0.0).expand(n)
    exact = ode.divergence_exact(f, x[:1], t[:1])
    est = ode.divergence_hutchinson(f, x, t, torch.randn(n, 2, generator=gen(5), dtype=torch.float64))
    se = float(est.std()) / math.sqrt(n)
    assert abs(float(est.mean()) - float(exact)) < 4 * se


def test_divergence_of_a_field_that_does_not_depend_on_x_is_zero():
    def shift(x, t):
        return t[:, None] * torch.ones_like(x)

    x, t = points(4), t64(0.5).expand(4)
    zero = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(ode.divergence_exact(shift, x, t), zero)
    torch.testing.assert_close(ode.divergence_hutchinson(shift, x, t, torch.ones_like(x)), zero)


def test_log_likelihood_of_a_translation_flow_is_the_shifted_prior():
    # dx/dt = 1 moves x_0 to x_1 = x_0 + 1 with unit Jacobian: log p_0(x_0) = log p_1(x_0 + 1).
    x0 = points(5)
    logp, x1 = ode.log_likelihood(lambda x, t: torch.ones_like(x), x0, [0.0, 0.5, 1.0], std_normal_log_prob)
    torch.testing.assert_close(x1, x0 + 1)
    torch.testing.assert_close(logp, std_normal_log_prob(x0 + 1))


def test_hutchinson_rejects_a_probe_of_the_wrong_shape():
    with pytest.raises(ValueError):
        ode.divergence_hutchinson(linear, points(4), t64(0.0).expand(4), torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        ode.divergence_hutchinson(linear, points(4), t64(0.0).expand(4), torch.ones(3, 2, dtype=torch.float64))


# ------------------------------------------------------------------ log-likelihood

def test_log_likelihood_of_a_linear_flow_is_exact():
    x0 = points(40)
    ts = torch.linspace(0, 1, 101, dtype=torch.float64)
    logp, x1 = ode.log_likelihood(linear, x0, ts, std_normal_log_prob)
    want_x1 = x0 @ torch.from_numpy(expm(A)).T
    torch.testing.assert_close(x1, want_x1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logp, std_normal_log_prob(want_x1) + np.trace(A), rtol=1e-9, atol=1e-9)


def test_log_likelihood_of_a_nonlinear_time_dependent_flow():
    # dx/dt = t x^2 gives x_1 = x_0 / (1 - x_0 / 2), so log p_0(x_0) = log p_1(x_1) + log |dx_1/dx_0|
    # with dx_1/dx_0 = 1 / (1 - x_0 / 2)^2.
    x0 = torch.linspace(-1.5, 1.0, 11, dtype=torch.float64)[:, None]
    logp, x1 = ode.log_likelihood(lambda x, t: t[:, None] * x**2, x0, torch.linspace(0, 1, 201, dtype=torch.float64),
                                  std_normal_log_prob)
    torch.testing.assert_close(x1, x0 / (1 - x0 / 2), rtol=1e-8, atol=1e-8)
    want = std_normal_log_prob(x0 / (1 - x0 / 2)) - 2 * torch.log(1 - x0[:, 0] / 2)
    torch.testing.assert_close(logp, want, rtol=1e-8, atol=1e-8)


def test_log_likelihood_with_hutchinson_is_close_and_unbiased():
    n = 4000
    x0 = points(n, seed=6)
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    exact, x1 = ode.log_likelihood(linear, x0, ts, std_normal_log_prob)
    est, x1_h = ode.log_likelihood(linear, x0, ts, std_normal_log_prob, divergence="hutchinson", generator=gen(7))
    torch.testing.assert_close(x1_h, x1, rtol=1e-12, atol=1e-12)
    gap = (est - exact).numpy()
    # one fixed Rademacher probe per point: the integral is z^T A z = trace(A) +- (A01 + A10) exactly
    np.testing.assert_allclose(np.abs(gap), 1.0, rtol=1e-9)
    assert abs(gap.mean()) < 4 / math.sqrt(n)
    again, _ = ode.log_likelihood(linear, x0, ts, std_normal_log_prob, divergence="hutchinson", generator=gen(7))
    assert torch.equal(again, est)


def test_log_likelihood_rejects_bad_arguments():
    x0 = points(3)
    with pytest.raises(ValueError):
        ode.log_likelihood(linear, x0, [0.0, 1.0], std_normal_log_prob, divergence="skilling")
    with pytest.raises(ValueError):
        ode.log_likelihood(linear, x0, [0.0, 1.0], std_normal_log_prob, method="dopri5")
    with pytest.raises(ValueError):
        ode.log_likelihood(linear, x0, [0.0], std_normal_log_prob)
    with pytest.raises(ValueError):
        ode.log_likelihood(linear, x0, [0.0, 0.6, 0.4], std_normal_log_prob)
    with pytest.raises(ValueError):
        ode.log_likelihood(linear, torch.zeros(3, dtype=torch.float64), [0.0, 1.0], std_normal_log_prob)

"""Tests of mlbook.optim: stochastic approximation, optimisers against torch.optim, schedules."""

import math

import pytest
import torch

from mlbook import optim


# ---------------------------------------------------------------- stochastic approximation

def test_step_sizes_follow_the_power_law():
    eta = optim.step_sizes(4, c=2.0, a=0.5)
    assert torch.allclose(eta, 2.0 / torch.arange(1, 5, dtype=torch.float64).sqrt())


def test_incremental_mean_is_robbins_monro_with_steps_one_over_t():
    """With observe(theta) = x_t - theta and eta_t = 1/t, theta_{t+1} is the mean of x_1..x_t."""
    x = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    it = iter(x)

    def observe(theta, generator=None):
        return next(it) - theta

    res = optim.robbins_monro(observe, torch.zeros(1, dtype=torch.float64), steps=50, c=1.0, a=1.0)
    assert torch.allclose(res.theta[1:, 0], x.cumsum(0) / torch.arange(1, 51), atol=1e-12)


def test_exact_mse_matches_simulation_and_rates():
    k, sigma, c, a, T = 1.0, 1.0, 1.0, 0.7, 400
    obs = optim.linear_root(k, sigma)
    res = optim.robbins_monro(obs, torch.full((4000,), 2.0, dtype=torch.float64), steps=T,
                              c=c, a=a, record=torch.tensor([T + 1]),
                              generator=torch.Generator().manual_seed(1))
    it, av = optim.exact_mse(T, c=c, a=a, k=k, sigma=sigma, start=2.0)
    emp = float((res.theta[-1] ** 2).mean())
    se = float((res.theta[-1] ** 2).std()) / math.sqrt(4000)
    assert abs(emp - float(it[-1])) < 4 * se
    # the leading term is close to the exact value at large t
    ratio = float(it[-1] / optim.asymptotic_mse(torch.tensor(T + 1.0), c=c, a=a, k=k,
                                                 sigma=sigma))
    assert 0.9 < ratio < 1.1


def test_averaging_approaches_cramer_rao_and_one_over_t_iterate_does_not():
    _, av = optim.exact_mse(20000, c=1.0, a=0.6, k=1.0, sigma=1.0, start=1.0)
    bound = optim.cramer_rao(torch.tensor(20001.0), k=1.0, sigma=1.0)
    assert 1.0 <= float(av[-1] / bound) < 1.05
    it, _ = optim.exact_mse(20000, c=3.0, a=1.0, k=1.0, sigma=1.0, start=1.0)
    assert float(it[-1] / bound) == pytest.approx(9 / 5, rel=0.01)   # c^2 / (2c - 1)


def test_log_log_slope_recovers_an_exponent():
    t = torch.logspace(1, 4, 20, dtype=torch.float64)
    assert optim.log_log_slope(t, 3 * t ** -0.7) == pytest.approx(-0.7)


def test_sa_bad_input():
    with pytest.raises(ValueError, match="2ck > 1"):
        optim.asymptotic_mse(torch.tensor(10.0), c=0.2, a=1.0, k=1.0, sigma=1.0)
    with pytest.raises(ValueError, match="1/2 < a"):
        optim.asymptotic_mse(torch.tensor(10.0), c=1.0, a=0.4, k=1.0, sigma=1.0)
    with pytest.raises(ValueError, match="record"):
        optim.robbins_monro(optim.linear_root(1, 1), torch.zeros(2, dtype=torch.float64),
                            steps=5, c=1.0, record=torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="floating"):
        optim.robbins_monro(optim.linear_root(1, 1), torch.zeros(2, dtype=torch.long),
                            steps=5, c=1.0)
    with pytest.raises(ValueError, match="positive"):
        optim.log_log_slope(torch.tensor([1.0, 2.0]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="c must be > 0"):
        optim.step_sizes(3, c=0.0)


# ---------------------------------------------------------------- optimisers against torch

def _train(make, steps=60, schedule=None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1)).double()
    X = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randn(64, 1, dtype=torch.float64)
    opt = make(list(net.parameters()))
    for s in range(steps):
        if schedule is not None:
            if hasattr(opt, "param_groups"):
                opt.param_groups[0]["lr"] = schedule(s)
            else:
                opt.lr = schedule(s)
        opt.zero_grad()
        ((net(X) - y) ** 2).mean().backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


PAIRS = {
    "heavy ball": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
                   lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "nesterov": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "adam l2": (lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
                lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    "adamw": (lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1, decoupled=True),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_optimisers_equal_torch(name):
    ours, theirs = PAIRS[name]
    a, b = _train(ours), _train(theirs)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(a, _train(lambda p: torch.optim.SGD(p, lr=0.05)), atol=1e-3)


def test_l2_and_decoupled_decay_differ_in_adam():
    a = _train(PAIRS["adam l2"][0])
    b = _train(PAIRS["adamw"][0])
    assert (a - b).abs().max() > 1e-3


def test_warmup_cosine_equals_torch_schedulers():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    W, T = 10, 60
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / W, total_iters=W),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T - W, eta_min=0.01)],
        milestones=[W])
    for s in range(T):
        want = opt.param_groups[0]["lr"]
        assert optim.warmup_cosine(s, total=T, warmup=W, peak=0.3, final=0.01) == \
            pytest.approx(want, rel=1e-12)
        opt.step()
        sched.step()


def test_schedule_and_optimiser_bad_input():
    with pytest.raises(ValueError, match="shorter"):
        optim.warmup_cosine(0, total=10, warmup=10, peak=1.0)
    with pytest.raises(ValueError, match="peak"):
        optim.warmup_cosine(0, total=10, warmup=2, peak=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([torch.zeros(2, requires_grad=True)], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="require gradients"):
        optim.Adam([torch.zeros(2)])
    with pytest.raises(ValueError, match="below 1"):
        optim.equilibrium_rms(lr=0.1, decay=1.0, update_rms=1.0)


def test_equilibrium_of_decay_against_orthogonal_updates():
    """A random walk on directions orthogonal to theta, shrunk each step, settles at the norm
    of the equilibrium formula."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(400, generator=g, dtype=torch.float64)
    lr, decay, norms = 0.01, 0.001, []
    for step in range(6000):
        u = torch.randn(400, generator=g, dtype=torch.float64)
        u -= (u @ theta) / (theta @ theta) * theta                 # orthogonal to theta
        u *= math.sqrt(400) / u.norm()                             # rms exactly 1
        theta = (1 - decay) * theta - lr * u
        if step >= 4000:
            norms.append(float(theta.pow(2).mean().sqrt()))
    predicted = optim.equilibrium_rms(lr=lr, decay=decay, update_rms=1.0)
    assert sum(norms) / len(norms) == pytest.approx(predicted, rel=0.02)


def test_trajectory_descends_the_valley():
    path = optim.trajectory(lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8), [2.0, 1.0], 200)
    assert path.shape == (201, 2)
    assert float(optim.valley(path[-1])) < 1e-6 * float(optim.valley(path[0]))


# ---------------------------------------------------------------- the exercise checker

def _adam(theta, g, m, v, t, lr, b1, b2, eps):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return theta - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps), m, v


def _no_correction(theta, g, m, v, t, lr, b1, b2, eps):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return theta - lr * m / (v.sqrt() + eps), m, v


def _betas_swapped(theta, g, m, v, t, lr, b1, b2, eps):
    return _adam(theta, g, m, v, t, lr, b1, b1, eps)


def test_check_adam_step_passes_right_and_fails_wrong(capsys):
    assert optim.check_adam_step(_adam)
    assert not optim.check_adam_step(_no_correction)
    assert not optim.check_adam_step(_betas_swapped)
    assert "not yet" in capsys.readouterr().out
    with pytest.raises(TypeError):
        optim.check_adam_step(3)


def test_scales_equal_torch_param_groups():
    ours = _train(lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1, decoupled=True,
                                       scales=[2.0, 1.0, 0.5, 1.0]))
    theirs = _train(lambda p: torch.optim.AdamW(
        [{"params": [q], "lr": 0.01 * s} for q, s in zip(p, [2.0, 1.0, 0.5, 1.0])],
        weight_decay=0.1))
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_adam_is_invariant_to_rescaling_a_parameter_with_the_scale_rule():
    """W = s V trained with lr / s (Adam, eps = 0) follows W trained with lr."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, generator=g, dtype=torch.float64)
    w0 = torch.randn(3, generator=g, dtype=torch.float64)

    def run(s, scale):
        v = (w0 / s).clone().requires_grad_(True)
        opt = optim.Adam([v], lr=0.05, eps=0.0, scales=[scale])
        for _ in range(50):
            opt.zero_grad()
            ((A @ (s * v) - y) ** 2).mean().backward()
            opt.step()
        return (s * v).detach()

    assert torch.allclose(run(10.0, 0.1), run(1.0, 1.0), rtol=1e-9)
    assert not torch.allclose(run(10.0, 1.0), run(1.0, 1.0), rtol=1e-3)


def test_scales_and_direction_bad_input():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="one number per parameter"):
        optim.Adam([p], scales=[1.0, 2.0])
    with pytest.raises(ValueError, match="scales must be > 0"):
        optim.SGD([p], lr=0.1, scales=[0.0])
    with pytest.raises(ValueError, match="no step"):
        optim.Adam([p]).direction(0)

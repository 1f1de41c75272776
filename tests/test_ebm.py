"""mlbook.ebm (energy networks, InfoNCE, maximum-likelihood gradients, implicit inference) and sde.langevin."""

import math

import pytest
import torch
import torch.nn.functional as F

from mlbook import ebm, sde
from mlbook._checks import NotFittedError
from helpers import gen, t64


class Quadratic(torch.nn.Module):
    """E(x, y) = a (y - b x)^2 + c y with learnable a, b, c: small enough to check gradients by hand."""

    def __init__(self, a=1.0, b=0.5, c=0.2):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Parameter(t64(v)) for v in (a, b, c))

    def forward(self, x, y):
        xs = x if y.ndim == 2 else x[:, None, :]
        return (self.a * (y - self.b * xs) ** 2 + self.c * y).sum(-1)


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return ebm.EnergyMLP(1, 1, hidden=8, layers=2).double()


# ------------------------------------------------------------------ sde.langevin

def test_langevin_with_zero_gradient_is_a_random_walk():
    x = torch.zeros(200_000, dtype=torch.float64)
    out = sde.langevin(lambda x: torch.zeros_like(x), x, 0.3, 4, generator=gen(0))
    # four steps of sqrt(h) z: variance 4 h, standard error of the variance 4h sqrt(2/n)
    assert abs(float(out.var()) - 1.2) < 4 * 1.2 * math.sqrt(2 / len(x))


def test_langevin_one_step_is_the_half_score_convention():
    x = t64([[1.0, -2.0]])
    g1, g2 = gen(5), gen(5)
    z = torch.randn(x.shape, generator=g2, dtype=torch.float64)
    out = sde.langevin(lambda v: -v / 4.0, x, 0.2, 1, generator=g1)
    torch.testing.assert_close(out, x + 0.5 * 0.2 * (-x / 4.0) + math.sqrt(0.2) * z)


@pytest.mark.parametrize("sigma, h", [(1.0, 0.2), (1.0, 1.0), (0.5, 0.3)])
def test_langevin_stationary_variance_on_a_gaussian(sigma, h):
    # x <- a x + sqrt(h) z with a = 1 - h / (2 sigma^2): stationary variance sigma^2 / (1 - h / (4 sigma^2))
    n = 50_000
    x = torch.zeros(n, dtype=torch.float64)
    out = sde.langevin(lambda v: -v / sigma**2, x, h, 150, generator=gen(1))     # a^300 < 1e-13
    v = sigma**2 / (1 - h / (4 * sigma**2))
    assert abs(float(out.var()) - v) < 4 * v * math.sqrt(2 / (n - 1))


def test_langevin_callback_sees_every_step_and_zero_steps_return_x():
    seen = []
    x = torch.zeros(3, 2)
    sde.langevin(lambda v: -v, x, 0.1, 5, generator=gen(0), callback=lambda i, s: seen.append((i, s.shape)))
    assert seen == [(i, torch.Size([3, 2])) for i in range(5)]
    assert torch.equal(sde.langevin(lambda v: -v, x, 0.1, 0), x)


def test_langevin_is_reproducible_with_a_generator():
    x = torch.zeros(10, 2)
    a = sde.langevin(lambda v: -v, x, 0.1, 20, generator=gen(3))
    b = sde.langevin(lambda v: -v, x, 0.1, 20, generator=gen(3))
    assert torch.equal(a, b)


def test_langevin_rejects_bad_input():
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="grad_log_density must be callable"):
        sde.langevin(None, x, 0.1, 3)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        sde.langevin(lambda v: -v, x, 0.0, 3)
    with pytest.raises(ValueError, match="n_steps must be >= 0"):
        sde.langevin(lambda v: -v, x, 0.1, -1)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sde.langevin(lambda v: -v, torch.zeros(4, 2, dtype=torch.long), 0.1, 3)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        sde.langevin(lambda v: v[:, 0], x, 0.1, 3)


# ------------------------------------------------------------------ the energy network

def test_energy_mlp_shapes():
    model = ebm.EnergyMLP(x_dim=2, y_dim=3, hidden=16, layers=2)
    x = torch.randn(5, 2)
    assert model(x, torch.randn(5, 3)).shape == (5,)
    assert model(x, torch.randn(5, 7, 3)).shape == (5, 7)
    # a batch of candidates gives the same energies as evaluating them one at a time
    y = torch.randn(5, 4, 3)
    one_by_one = torch.stack([model(x, y[:, j]) for j in range(4)], dim=1)
    torch.testing.assert_close(model(x, y), one_by_one)


def test_energy_mlp_rejects_bad_shapes():
    model = ebm.EnergyMLP(1, 1)
    with pytest.raises(ValueError, match="same number of rows"):
        model(torch.zeros(3, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="y must have last dimension 1"):
        model(torch.zeros(3, 1), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        model(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        ebm.EnergyMLP(hidden=0)


# ------------------------------------------------------------------ InfoNCE and the likelihood gradient

def test_info_nce_matches_a_hand_computed_cross_entropy():
    model = Quadratic(a=1.0, b=0.0, c=0.0)                  # E = y^2
    x = t64([[0.0]])
    y = t64([[0.0]])                                        # energy 0
    counter = t64([[[1.0], [2.0]]])                         # energies 1 and 4
    expected = -math.log(1.0 / (1.0 + math.exp(-1.0) + math.exp(-4.0)))
    assert ebm.info_nce_loss(model, x, y, counter).item() == pytest.approx(expected, rel=1e-12)


def test_info_nce_with_the_whole_grid_is_the_exact_nll():
    # counter-examples = every other grid point: the softmax is over the whole (finite) answer space
    model = small_mlp()
    grid = torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None]                    # (G, 1)
    x = t64([[0.3], [-0.5], [0.9]])
    idx = [1, 4, 6]
    y = grid[idx]
    counter = torch.stack([torch.cat([grid[:i], grid[i + 1:]]) for i in idx])        # (3, G - 1, 1)
    torch.testing.assert_close(ebm.info_nce_loss(model, x, y, counter), ebm.grid_nll(model, x, y, grid))


def _grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("make", [lambda: Quadratic(0.8, 0.4, -0.3), lambda: small_mlp(1)])
def test_positive_minus_negative_phase_is_the_nll_gradient(make):
    # The normaliser's gradient is an expectation under the model: with the exact weights softmax(-E)
    # over a tiny grid, the surrogate's gradient must equal the finite-difference gradient of the NLL.
    model = make()
    params = list(model.parameters())
    grid = torch.linspace(-1.5, 1.5, 9, dtype=torch.float64)[:, None]
    x = t64([[0.2], [-0.7], [1.0], [0.0]])
    y = t64([[0.5], [-1.0], [1.2], [0.1]])
    g = grid[None].expand(len(x), -1, -1)
    with torch.no_grad():
        log_w = -model(x, g)
    surrogate = _grad(ebm.ml_surrogate_loss(model, x, y, g, log_weights=log_w), params)
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    eps, fd = 1e-6, torch.zeros_like(flat)
    for i in range(len(flat)):
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[i] += sign * eps
            torch.nn.utils.vector_to_parameters(shifted, params)
            with torch.no_grad():
                fd[i] += sign * float(ebm.grid_nll(model, x, y, grid)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    torch.testing.assert_close(surrogate, fd, rtol=1e-5, atol=1e-7)


def test_sampled_negative_phase_is_unbiased():
    # Negatives drawn from the exact p(y | x) on the grid: averaged surrogate gradients -> NLL gradient.
    model = Quadratic(0.8, 0.4, -0.3)
    params = list(model.parameters())
    grid = torch.linspace(-1.5, 1.5, 9, dtype=torch.float64)[:, None]
    x, y = t64([[0.2]]), t64([[0.5]])
    exact = _grad(ebm.grid_nll(model, x, y, grid), params)
    with torch.no_grad():
        probs = torch.softmax(-model(x, grid[None]), dim=1)[0]
    draws = grid[torch.multinomial(probs, 40_000, replacement=True, generator=gen(2))]   # (M, 1)
    sampled = _grad(ebm.ml_surrogate_loss(model, x, y, draws[None]), params)
    assert torch.allclose(sampled, exact, atol=0.03), (sampled, exact)


def test_cd_loss_gradient_is_data_minus_negative():
    model = Quadratic(1.0, 0.5, 0.2)
    x, y = t64([[0.4], [-0.2]]), t64([[0.1], [0.3]])
    loss = ebm.cd_loss(model, x, y, n_steps=3, step_size=0.01, generator=gen(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    neg = sde.langevin(ebm.energy_score(model, x), y, 0.01, 3, generator=gen(0))
    expected = _grad((model(x, y) - model(x, neg)).mean(), list(model.parameters()))
    torch.testing.assert_close(_grad(loss, list(model.parameters())), expected)


def test_loss_functions_reject_mismatched_shapes():
    model = Quadratic()
    x, y = t64([[0.0], [1.0]]), t64([[0.0], [1.0]])
    with pytest.raises(ValueError, match="counter must have shape"):
        ebm.info_nce_loss(model, x, y, torch.zeros(3, 4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="counter must have 3 dimensions"):
        ebm.info_nce_loss(model, x, y, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="log_weights must have the negatives' shape"):
        ebm.ml_surrogate_loss(model, x, y, torch.zeros(2, 4, 1, dtype=torch.float64), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ebm.energy_score(model, x, temperature=0.0)


# ------------------------------------------------------------------ implicit inference

def step_energy(x, y):
    """Minimum at y = sign(x) * 0.5 + 0.25 x, quadratic around it: the argmin jumps at x = 0."""
    target = 0.5 * torch.sign(x) + 0.25 * x                                          # (n, 1)
    t = target if y.ndim == 2 else target[:, None, :]
    return ((y - t) ** 2).sum(-1) * 50.0


BOUNDS = torch.tensor([[-1.0], [1.0]])


def test_dfo_argmin_finds_a_jumping_minimum():
    x = torch.tensor([[-0.6], [-0.01], [0.01], [0.8]])
    y = ebm.dfo_argmin(step_energy, x, BOUNDS, generator=gen(0))
    assert y.shape == (4, 1)
    torch.testing.assert_close(y, 0.5 * torch.sign(x) + 0.25 * x, atol=0.01, rtol=0)


def test_langevin_argmin_finds_a_jumping_minimum():
    x = torch.tensor([[-0.6], [0.01], [0.8]])
    y = ebm.langevin_argmin(step_energy, x, BOUNDS, n_samples=16, n_steps=200, step_size=1e-3,
                            temperature=0.1, generator=gen(0))
    torch.testing.assert_close(y, 0.5 * torch.sign(x) + 0.25 * x, atol=0.02, rtol=0)


def test_inference_rejects_bad_bounds_and_counts():
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="lower value"):
        ebm.dfo_argmin(step_energy, x, torch.tensor([[1.0], [-1.0]]))
    with pytest.raises(ValueError, match=r"bounds must have shape \(2, dy\)"):
        ebm.dfo_argmin(step_energy, x, torch.tensor([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        ebm.dfo_argmin(step_energy, x, BOUNDS, n_samples=0)
    with pytest.raises(TypeError, match="energy must be callable"):
        ebm.langevin_argmin("E", x, BOUNDS)
    with pytest.raises(FloatingPointError, match="lower step_size"):   # curvature 1e4 needs h < 4e-4
        ebm.langevin_argmin(step_energy, x, BOUNDS, step_size=1e-3, temperature=0.01)


def test_uniform_in_stays_in_the_box():
    u = ebm.uniform_in(torch.tensor([[-2.0, 0.0], [-1.0, 5.0]]), 1000, 3, generator=gen(0))
    assert u.shape == (1000, 3, 2)
    assert float(u[..., 0].min()) >= -2 and float(u[..., 0].max()) <= -1
    assert float(u[..., 1].min()) >= 0 and float(u[..., 1].max()) <= 5


# ------------------------------------------------------------------ the estimators

def test_implicit_regressor_learns_a_step():
    x = torch.linspace(-1, 1, 40)[:, None]
    y = 0.5 * torch.sign(x[:, 0])
    reg = ebm.ImplicitRegressor(hidden=32, layers=2, n_counter=16, steps=300, lr=3e-3).fit(x, y)
    pred = reg.predict(torch.tensor([[-0.7], [-0.3], [0.3], [0.7]]))
    assert pred.shape == (4,)
    torch.testing.assert_close(pred, torch.tensor([-0.5, -0.5, 0.5, 0.5]), atol=0.15, rtol=0)
    assert reg.energy(torch.zeros(2, 1), torch.zeros(2, 5)).shape == (2, 5)


def test_explicit_regressor_fits_a_line():
    x = torch.linspace(-1, 1, 30)[:, None]
    reg = ebm.ExplicitRegressor(hidden=16, layers=2, steps=400, lr=1e-2).fit(x, 0.5 * x[:, 0] + 0.1)
    pred = reg.predict(torch.tensor([[-0.5], [0.5]]))
    torch.testing.assert_close(pred, torch.tensor([-0.15, 0.35]), atol=0.05, rtol=0)


@pytest.mark.parametrize("cls", [ebm.ImplicitRegressor, ebm.ExplicitRegressor])
def test_regressors_fail_loudly(cls):
    with pytest.raises(NotFittedError):
        cls().predict(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="same number of rows"):
        cls(steps=1).fit(torch.zeros(5, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="contains NaN"):
        cls(steps=1).fit(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2))
    reg = cls(steps=1).fit(torch.randn(6, 2), torch.randn(6))
    with pytest.raises(ValueError, match="fitted with 2"):
        reg.predict(torch.zeros(3, 1))


def test_implicit_regressor_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_counter must be >= 1"):
        ebm.ImplicitRegressor(n_counter=0).fit(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="inference must be one of"):
        ebm.ImplicitRegressor(inference="newton").fit(torch.zeros(4, 1), torch.zeros(4))


def test_energy_score_of_an_unconditional_energy():
    score = ebm.energy_score(lambda y: (y**2).sum(-1) / 2, None, temperature=2.0)
    y = t64([[1.0, -3.0]])
    torch.testing.assert_close(score(y), -y / 2.0)


# ------------------------------------------------------------------ densities on the plane (CD chapter)

class IsoGaussian(torch.nn.Module):
    """E(x) = |x|^2 / 2: exp(-E) integrates to 2 pi over the plane."""

    def forward(self, x):
        return 0.5 * (x ** 2).sum(-1)


def test_box_grid_shape_and_area():
    grid, area = ebm.box_grid(2.0, 5)
    assert grid.shape == (25, 2)
    assert area == pytest.approx(1.0)
    assert float(grid.min()) == -2.0 and float(grid.max()) == 2.0


def test_quadrature_matches_gaussian_normaliser_and_nll():
    energy = IsoGaussian()
    assert float(ebm.quadrature_log_z(energy, 6.0, 201)) == pytest.approx(math.log(2 * math.pi), abs=1e-4)
    data = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    exact = float((0.5 * (data ** 2).sum(1)).mean()) + math.log(2 * math.pi)    # -log N(x; 0, I)
    assert ebm.quadrature_nll(energy, data, 6.0, 201) == pytest.approx(exact, abs=1e-4)
    density = ebm.grid_density(energy, 6.0, 101)
    assert density.shape == (101, 101)
    assert float(density.sum()) * (12.0 / 100) ** 2 == pytest.approx(1.0)


def test_far_mass_counts_gaussian_tail():
    # mass at distance > r from the single point 0 is exp(-r^2 / 2) for a standard Gaussian
    mass = ebm.far_mass(IsoGaussian(), torch.zeros(1, 2), 6.0, 1.5, n=301)
    assert mass == pytest.approx(math.exp(-1.125), abs=5e-3)


def test_quadrature_bad_input():
    with pytest.raises(ValueError, match="inside the box"):
        ebm.quadrature_nll(IsoGaussian(), torch.tensor([[7.0, 0.0]]), 6.0, 11)
    with pytest.raises(TypeError, match="callable"):
        ebm.quadrature_log_z("not an energy", 1.0, 11)
    with pytest.raises(ValueError):
        ebm.box_grid(1.0, 1)
    with pytest.raises(ValueError):
        ebm.far_mass(IsoGaussian(), torch.zeros(1, 2), 6.0, -1.0)


def test_density_energy_shapes():
    torch.manual_seed(0)
    energy = ebm.DensityEnergy(2, hidden=8, layers=2)
    assert energy(torch.zeros(5, 2)).shape == (5,)
    with pytest.raises(ValueError):
        energy(torch.zeros(5, 3))


@pytest.mark.parametrize("persistent, k", [(False, 1), (False, 3), (True, 2)])
def test_fit_cd_moves_gaussian_towards_data(persistent, k):
    # data N(m, 0.5^2 I) far from the start: CD and persistent CD must pull the density's mean there
    g = gen(0)
    data = torch.randn(256, 2, generator=g) * 0.5 + torch.tensor([1.5, -1.0])
    torch.manual_seed(0)
    energy = ebm.DensityEnergy(2, hidden=16, layers=1)
    before = ebm.quadrature_nll(energy, data, 5.0, 81)
    losses = ebm.fit_cd(energy, data, persistent=persistent, k=k, step_size=0.05, steps=150,
                        lr=1e-2, batch_size=64, box=5.0, generator=g)
    assert len(losses) == 150
    assert ebm.quadrature_nll(energy, data, 5.0, 81) < before - 0.5


def test_fit_cd_bad_input():
    with pytest.raises(TypeError, match="Module"):
        ebm.fit_cd(lambda x: x.sum(-1), torch.zeros(4, 2), steps=1)
    with pytest.raises(ValueError):
        ebm.fit_cd(ebm.DensityEnergy(), torch.zeros(4, 2), k=0, steps=1)


# ------------------------------------------------------------------------------ soft Q-learning

def test_soft_value_iteration_solves_the_soft_bellman_equation():
    mdp = ebm.chain_mdp(6, 2)
    Q, V = ebm.soft_value_iteration(mdp, 0.9, 0.1)
    v = torch.where(mdp.terminal, 0.0, 0.1 * torch.logsumexp(Q / 0.1, -1))
    assert torch.allclose(V, v, atol=1e-12)
    assert torch.allclose(Q, mdp.R + 0.9 * mdp.P @ V, atol=1e-12)


def test_soft_values_tend_to_hard_values_as_the_temperature_falls():
    mdp = ebm.chain_mdp(6, 2)
    Q, _ = ebm.soft_value_iteration(mdp, 0.9, 1e-4)
    # the far end is 3 steps from cell 2: 0.9^2 * 1 through the right move
    assert float(Q[2, 1]) == pytest.approx(0.81, abs=1e-3)
    assert float(Q[1, 0]) == pytest.approx(0.2, abs=1e-12)


def test_off_policy_soft_q_learning_reaches_the_exact_values():
    mdp = ebm.chain_mdp(5, 1)
    Q, _ = ebm.soft_value_iteration(mdp, 0.8, 0.1)
    run = ebm.soft_q_learning(mdp, 0.8, 0.1, steps=800, lr=0.5, behaviour="uniform",
                              generator=torch.Generator().manual_seed(0))
    assert float((run["Q"][0] - Q).abs()[1:-1].max()) < 1e-6
    assert int(run["episodes"][0]) == int(run["ends"][0].sum()) > 0


def test_policy_return_of_a_deterministic_policy():
    mdp = ebm.chain_mdp(5, 1)
    right = torch.zeros(5, 2, dtype=torch.float64)
    right[:, 1] = 1.0
    assert float(ebm.policy_return(mdp, right, 0.9)) == pytest.approx(0.9 ** 2)
    left = right.flip(-1)
    assert float(ebm.policy_return(mdp, left, 0.9)) == pytest.approx(0.2)


def test_soft_q_learning_rejects_bad_input():
    mdp = ebm.chain_mdp()
    with pytest.raises(ValueError, match="gamma"):
        ebm.soft_value_iteration(mdp, 1.0, 0.1)
    with pytest.raises(ValueError, match="behaviour"):
        ebm.soft_q_learning(mdp, 0.9, 0.1, steps=10, behaviour="greedy")
    with pytest.raises(ValueError, match="interior"):
        ebm.chain_mdp(5, 4)
    P = mdp.P.clone()
    P[1, 0] *= 2
    with pytest.raises(ValueError, match="probability distribution"):
        ebm.TabularMDP(P, mdp.R, mdp.terminal, 1)
    with pytest.raises(ValueError, match="non-terminal"):
        ebm.TabularMDP(mdp.P, mdp.R, mdp.terminal, 0)


# ------------------------------------------------------------------- noise-contrastive estimation

def test_nce_loss_by_hand():
    lp_d, lp_n = t64([-1.0, -2.0]), t64([-3.0, -0.5, -4.0])
    lq_d, lq_n = t64([-2.5, -2.0]), t64([-1.0, -1.5, -2.0])
    nu = 3.0
    g_d, g_n = lp_d - lq_d - math.log(nu), lp_n - lq_n - math.log(nu)
    expected = -torch.log(torch.sigmoid(g_d)).mean() - nu * torch.log(1 - torch.sigmoid(g_n)).mean()
    assert float(ebm.nce_loss(lp_d, lp_n, lq_d, lq_n, nu)) == pytest.approx(float(expected))


def test_nce_population_loss_is_stationary_at_the_data_density():
    # a finite space: data p, noise q, model log-probabilities l; the expectation is a sum
    p, q, nu = t64([0.5, 0.3, 0.2]), t64([0.2, 0.3, 0.5]), 4.0

    def population(log_model):
        g = log_model - q.log() - math.log(nu)
        return (-(p * F.logsigmoid(g)).sum() - nu * (q * F.logsigmoid(-g)).sum())

    at_truth = p.log().clone().requires_grad_(True)
    grad, = torch.autograd.grad(population(at_truth), at_truth)
    assert float(grad.abs().max()) < 1e-12
    shifted = (p.log() + 0.1).requires_grad_(True)            # unnormalised: c is off by 0.1
    grad, = torch.autograd.grad(population(shifted), shifted)
    assert float(grad.sum()) > 1e-3                           # the loss pushes log Z back


def test_gaussian_log_prob_matches_torch():
    x = t64([[0.3, -1.2], [2.0, 0.5]])
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                 4.0 * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(ebm.gaussian_log_prob(x, 2.0), ref.log_prob(x))


def test_fit_nce_learns_a_gaussian_and_its_normaliser():
    class Quadratic(torch.nn.Module):                 # E(x) = a |x|^2: the family holds the truth
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.2))

        def forward(self, x):
            return self.a * x.pow(2).sum(-1)

    g = gen(0)
    x = 0.7 * torch.randn(4000, 2, generator=g)
    model = ebm.SelfNormalised(Quadratic())
    ebm.fit_nce(model, x, nu=5, noise_std=1.5, steps=400, lr=2e-2, generator=g)
    assert float(model.energy.a.detach()) == pytest.approx(1 / (2 * 0.49), rel=0.05)
    assert float(model.log_z.detach()) == pytest.approx(math.log(2 * math.pi * 0.49), abs=0.05)


def test_nce_rejects_bad_input():
    with pytest.raises(TypeError, match="SelfNormalised"):
        ebm.fit_nce(ebm.DensityEnergy(), torch.zeros(4, 2), steps=1)
    with pytest.raises(ValueError):
        ebm.nce_loss(t64([0.0]), t64([0.0]), t64([0.0]), t64([0.0]), 0.0)
    with pytest.raises(TypeError):
        ebm.SelfNormalised(lambda x: x)


# ---------------------------------------------------------------------------- margin losses

def test_hinge_loss_picks_the_most_offending_wrong_answer():
    model = lambda x, y: (y[..., 0] - x[..., 0, None] if y.ndim == 3 else y[:, 0] - x[:, 0]) ** 2
    x, y = t64([[0.0]]).float(), t64([[0.0]]).float()
    counter = torch.tensor([[[0.01], [0.5], [2.0]]])          # 0.01 is within exclude: "right"
    # energies: right 0, most offending wrong 0.25 -> max(0, 1 + 0 - 0.25)
    assert float(ebm.hinge_loss(model, x, y, counter, margin=1.0, exclude=0.05)) == pytest.approx(0.75)
    assert float(ebm.hinge_loss(model, x, y, counter, margin=0.2, exclude=0.05)) == 0.0


def test_hinge_loss_is_blind_to_a_constant_shift_and_the_energy_loss_is_not():
    g = gen(0)
    net = ebm.EnergyMLP(1, 1, hidden=8, layers=1)
    shifted = lambda x, y: net(x, y) - 10.0
    x, y = torch.randn(16, 1, generator=g), torch.randn(16, 1, generator=g)
    counter = torch.randn(16, 5, 1, generator=g)
    assert float(ebm.hinge_loss(shifted, x, y, counter)) == pytest.approx(float(ebm.hinge_loss(net, x, y, counter)))
    assert float(ebm.energy_loss(shifted, x, y)) == pytest.approx(float(ebm.energy_loss(net, x, y)) - 10.0)


def test_margin_losses_reject_bad_input():
    net = ebm.EnergyMLP(1, 1, hidden=8, layers=1)
    x, y = torch.zeros(4, 1), torch.zeros(4, 1)
    with pytest.raises(ValueError, match="counter must have shape"):
        ebm.hinge_loss(net, x, y, torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match="margin"):
        ebm.hinge_loss(net, x, y, torch.zeros(4, 2, 1), margin=0.0)
    with pytest.raises(ValueError, match="loss"):
        ebm.ImplicitRegressor(loss="square", steps=1).fit(torch.zeros(4, 1), torch.zeros(4))

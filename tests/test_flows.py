"""mlbook.flows: coupling layers (exact inverse and log-determinant), the composed flow, CNF
likelihoods through mlbook.ode, the flow-matching loss, reflow and the straightness measure."""

import math

import pytest
import torch

from mlbook import data, flows, nets, ode
from helpers import gen


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Give every parameter random values (freshly built couplings are the identity)."""
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _layers(dim: int):
    masks = flows.alternating_masks(dim, 2)
    return {
        "additive": flows.AdditiveCoupling(masks[0], hidden=16),
        "affine": flows.AffineCoupling(masks[1], hidden=16),
        "permutation": flows.Permutation(torch.randperm(dim, generator=gen(3)).tolist()),
        "scaling": flows.Scaling(dim),
    }


@pytest.mark.parametrize("kind", ["additive", "affine", "permutation", "scaling"])
@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_layer_inverts_and_its_logdet_matches_the_autograd_jacobian(kind, dim, seed):
    layer = _randomise(_layers(dim)[kind].double(), seed)
    x = 2 * torch.randn(6, dim, generator=gen(10 + seed), dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)
    brute = flows.logdet_autograd(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet, brute, atol=1e-10)


def test_additive_coupling_has_unit_jacobian_and_leaves_the_mask_alone():
    layer = _randomise(flows.AdditiveCoupling([1, 0, 1], hidden=8).double())
    x = torch.randn(5, 3, generator=gen(), dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.equal(logdet, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(y[:, [0, 2]], x[:, [0, 2]])
    assert not torch.allclose(y[:, 1], x[:, 1])


def test_affine_logdet_is_the_sum_of_log_scales():
    layer = _randomise(flows.AffineCoupling([0, 1], hidden=8).double())
    x = torch.randn(5, 2, generator=gen(), dtype=torch.float64)
    y, logdet = layer(x)
    # mask [0, 1]: only coordinate 0 is scaled, so log|det| is its log-scale s_0 and s_1 is masked to zero
    s, _ = layer._params(x * layer.mask.double())
    assert torch.allclose(logdet, s[:, 0]) and torch.equal(s[:, 1], torch.zeros(5, dtype=torch.float64))


def test_new_couplings_start_as_the_identity():
    x = torch.randn(4, 2, generator=gen())
    for layer in (flows.AdditiveCoupling([1, 0]), flows.AffineCoupling([1, 0])):
        y, logdet = layer(x)
        assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(4))


@pytest.mark.parametrize("build", [flows.nice, flows.realnvp])
def test_flow_round_trip_logdet_and_normalised_density(build):
    flow = _randomise(build(2, n_couplings=4, hidden=16).double(), 5, std=0.25)
    x = torch.randn(8, 2, generator=gen(1), dtype=torch.float64)
    z, logdet = flow(x)
    assert (flow.inverse(z) - x).abs().max() < 1e-5
    assert torch.allclose(logdet, flows.logdet_autograd(lambda v: flow(v)[0], x), atol=1e-9)
    # the density integrates to one: a Riemann sum over a wide grid
    grid1 = torch.linspace(-12, 12, 481, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(grid1, grid1, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (grid1[1] - grid1[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_intermediates_run_through_every_layer_from_latent_to_data():
    flow = _randomise(flows.realnvp(2, n_couplings=3, hidden=8))
    z = torch.randn(10, 2, generator=gen())
    states = flow.intermediates(z)
    assert len(states) == 4 and torch.equal(states[0], z)
    assert torch.allclose(flow(states[-1])[0], z, atol=1e-5)


def test_sample_is_seeded_and_has_the_flow_dimension():
    flow = _randomise(flows.realnvp(3, n_couplings=2, hidden=8))
    a, b = flow.sample(7, generator=gen(4)), flow.sample(7, generator=gen(4))
    assert a.shape == (7, 3) and torch.equal(a, b)


def test_training_a_flow_lowers_the_nll_of_a_gaussian():
    from mlbook.train import train
    target = data.GaussianMixture([[1.0, -2.0]], 0.5)
    flow = flows.realnvp(2, n_couplings=2, hidden=16)
    g = gen()
    losses = train(flow, flows.nll_loss, target.sample, steps=120, lr=1e-2, generator=g, show_progress=False)
    x = target.sample(2000, generator=g)
    with torch.no_grad():
        gap = float(-flow.log_prob(x).mean() + target.log_prob(x).mean())
    assert losses[-1] < losses[0] and 0 <= gap + 0.05 and gap < 0.1


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("cls", [flows.AdditiveCoupling, flows.AffineCoupling])
def test_mask_errors(cls):
    with pytest.raises(ValueError, match="only 0 and 1"):
        cls([1, 2])
    with pytest.raises(ValueError, match="keep some coordinates"):
        cls([1, 1])
    with pytest.raises(ValueError, match="keep some coordinates"):
        cls([0, 0, 0])
    with pytest.raises(ValueError, match="1-D"):
        cls([[1, 0]])


@pytest.mark.parametrize("cls", [flows.AdditiveCoupling, flows.AffineCoupling])
def test_input_of_the_wrong_dimension_is_rejected(cls):
    layer = cls([1, 0, 1])
    with pytest.raises(ValueError, match="last dimension 3"):
        layer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="last dimension 3"):
        layer.inverse(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="2 dimensions"):
        layer(torch.zeros(3))


def test_flow_rejects_layers_of_different_dimensions_and_empty_stacks():
    with pytest.raises(ValueError, match="same dimension"):
        flows.Flow([flows.AffineCoupling([1, 0]), flows.AffineCoupling([1, 0, 1])])
    with pytest.raises(ValueError, match="at least one layer"):
        flows.Flow([])
    with pytest.raises(ValueError, match="last dimension 2"):
        flows.realnvp(2, 2).log_prob(torch.zeros(3, 3))


def test_permutation_and_mask_helper_errors():
    with pytest.raises(ValueError, match="permutation"):
        flows.Permutation([0, 0, 1])
    with pytest.raises(ValueError, match="dim must be >= 2"):
        flows.alternating_masks(1, 2)
    masks = flows.alternating_masks(3, 3)
    assert [m.tolist() for m in masks] == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


# ------------------------------------------------------------------ continuous flows

def _field(seed=0):
    torch.manual_seed(seed)
    return _randomise(nets.TimeMLP(2, hidden=16, layers=2).double(), seed)


def test_cnf_trace_matches_the_jacobian_trace():
    f = _field()
    x = torch.randn(5, 2, generator=gen(), dtype=torch.float64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: f(v[None], t[:1])[0], row) for row in x])
    assert torch.allclose(ode.divergence_exact(f, x, t), jac.diagonal(dim1=1, dim2=2).sum(1), atol=1e-10)


def test_cnf_log_prob_of_a_linear_flow_is_exact():
    # dx/dt = x maps N(0, s^2) at t=0 to N(0, (e s)^2) at t=1; with a N(0, I) prior s = 1/e.
    def v(x, t):
        return x
    x = torch.randn(6, 2, generator=gen(), dtype=torch.float64)
    s = math.exp(-1.0)
    exact = -0.5 * (x / s).square().sum(1) - 2 * math.log(s) - math.log(2 * math.pi)
    assert torch.allclose(flows.cnf_log_prob(v, x, n_steps=40), exact, atol=1e-6)


def test_hutchinson_cnf_log_prob_is_unbiased():
    f = _field(1)
    x = torch.randn(4, 2, generator=gen(2), dtype=torch.float64)
    exact = flows.cnf_log_prob(f, x, n_steps=10)
    # 300 independent probes per point: repeat the points, one Rademacher probe per row
    est = flows.cnf_log_prob(f, x.repeat(300, 1), n_steps=10, divergence="hutchinson", generator=gen(3))
    est = est.reshape(300, 4)
    assert est.std(0).min() > 0
    assert torch.allclose(est.mean(0), exact, atol=4 * float(est.std(0).max()) / math.sqrt(300) + 1e-6)


# ------------------------------------------------------------------ flow matching and reflow

def test_flow_matching_loss_is_zero_for_the_exact_velocity_of_a_point_pair():
    x0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    x1 = torch.tensor([[0.0, 0.0], [3.0, -1.0]], dtype=torch.float64)

    def v(x, t):                                   # both paths are straight; their velocity is x1 - x0
        return (x1 - x0)
    assert float(flows.flow_matching_loss(v, x0, x1, generator=gen())) == 0.0
    with pytest.raises(ValueError, match="shape of x0"):
        flows.flow_matching_loss(v, x0, x1[:1])


def test_flow_matching_loss_minimiser_for_a_gaussian_is_the_marginal_velocity():
    # x0 ~ N(0, s^2 I), x1 ~ N(0, I): the marginal velocity is linear, v(x, t) = c(t) x with
    # c(t) = (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2); the loss is smaller there than for any perturbation.
    s2 = 0.25

    def marginal(x, t, bump=0.0):
        c = (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t ** 2)
        return (c + bump)[:, None] * x
    g = gen()
    x0 = math.sqrt(s2) * torch.randn(200000, 2, generator=g, dtype=torch.float64)
    best = float(flows.flow_matching_loss(marginal, x0, generator=gen(1)))
    for bump in (-0.1, 0.1):
        worse = float(flows.flow_matching_loss(lambda x, t: marginal(x, t, bump), x0, generator=gen(1)))
        assert worse > best


def test_straightness_is_zero_for_straight_paths_and_positive_otherwise():
    noise = torch.randn(50, 2, generator=gen(), dtype=torch.float64)

    def constant(x, t):
        return torch.ones_like(x)
    assert flows.straightness(constant, noise, n_steps=20) < 1e-20
    assert flows.one_step_error(constant, noise, n_steps=20) < 1e-20

    def rotation(x, t):                            # circular arcs: never straight
        return torch.stack([-x[:, 1], x[:, 0]], 1)
    assert flows.straightness(rotation, noise, n_steps=20) > 0.1
    assert flows.one_step_error(rotation, noise, n_steps=20) > 0.1


def test_reflow_pairs_solve_the_ode_from_the_noise():
    noise = torch.randn(5, 2, generator=gen(), dtype=torch.float64)

    def v(x, t):                                   # dx/dt = x: x(0) = x(1) / e
        return x
    x0, x1 = flows.reflow_pairs(v, noise, n_steps=50)
    assert x1 is noise and torch.allclose(x0, noise * math.exp(-1.0), atol=1e-8)


def test_sample_ode_path_has_every_state():
    noise = torch.randn(3, 2, generator=gen())
    x, path = flows.sample_ode(lambda x, t: -x, noise, n_steps=4, return_path=True)
    assert path.shape == (5, 3, 2) and torch.equal(path[0], noise) and torch.equal(path[-1], x)
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        flows.sample_ode(lambda x, t: -x, noise, n_steps=0)

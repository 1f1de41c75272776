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


# ---------------------------------------------------------------- autoregressive flows, planar, VI

def _random_ar(kind: str, dim: int, reverse: bool, seed: int):
    layer = {"MAF": flows.MAF, "IAF": flows.IAF}[kind](dim, (12, 12), reverse=reverse)
    return _randomise(layer.double(), seed, std=0.4)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dim", [2, 4])
def test_maf_jacobian_is_triangular_in_its_order_and_its_logdet_matches_autograd(dim, reverse):
    layer = _random_ar("MAF", dim, reverse, seed=dim)
    x = torch.randn(5, dim, generator=gen(1), dtype=torch.float64)
    z, logdet = layer(x)
    order = layer.conditioner.order                                  # position of each coordinate
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], row)   # (D, D)
        later = order[None, :] > order[:, None]                      # input j after output i
        assert jac[later].abs().max() == 0
        assert (jac.diagonal().abs() > 0).all()
        assert not torch.allclose(jac, torch.diag(jac.diagonal()))   # not trivially diagonal
    assert torch.allclose(logdet, flows.logdet_autograd(lambda v: layer(v)[0], x), atol=1e-10)


@pytest.mark.parametrize("kind", ["MAF", "IAF"])
@pytest.mark.parametrize("dim", [1, 3, 5])
def test_autoregressive_layers_invert_and_their_pushes_match_autograd(kind, dim):
    layer = _random_ar(kind, dim, reverse=dim == 3, seed=7 + dim)
    x = 1.5 * torch.randn(6, dim, generator=gen(2), dtype=torch.float64)
    z, logdet = layer(x)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10)
    assert torch.allclose(layer(layer.inverse(x))[0], x, atol=1e-10)
    back, push_logdet = layer.push(z)
    assert torch.allclose(back, x, atol=1e-10) and torch.allclose(push_logdet, -logdet, atol=1e-10)
    assert torch.allclose(logdet, flows.logdet_autograd(lambda v: layer(v)[0], x), atol=1e-8)


@pytest.mark.parametrize("dim", [2, 8])
def test_maf_density_is_one_pass_and_sampling_d_passes_iaf_the_reverse(dim):
    maf, iaf = _random_ar("MAF", dim, False, 0), _random_ar("IAF", dim, False, 0)
    x = torch.randn(4, dim, generator=gen(0), dtype=torch.float64)
    costs = {}
    for name, layer in [("MAF", maf), ("IAF", iaf)]:
        for direction, fn in [("density", layer.forward), ("sample", layer.inverse)]:
            layer.conditioner.calls = 0
            fn(x)
            costs[name, direction] = layer.conditioner.calls
    assert costs == {("MAF", "density"): 1, ("MAF", "sample"): dim,
                     ("IAF", "density"): dim, ("IAF", "sample"): 1}


def test_maf_stack_reverses_the_order_and_is_a_normalised_density():
    flow = flows.maf(2, n_layers=3, hidden=(16,)).double()
    orders = [layer.conditioner.order.tolist() for layer in flow.layers]
    assert orders == [[0, 1], [1, 0], [0, 1]]
    _randomise(flow, 4, std=0.3)
    grid = torch.linspace(-9, 9, 301, dtype=torch.float64)
    pts = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1) < 2e-3


@pytest.mark.parametrize("dim", [2, 3])
def test_planar_logdet_matches_autograd_and_it_inverts(dim):
    layer = flows.Planar(dim, init_scale=1.5, generator=gen(dim)).double()
    z = 2 * torch.randn(8, dim, generator=gen(5), dtype=torch.float64)
    y, logdet = layer.push(z)
    assert torch.allclose(logdet, flows.logdet_autograd(lambda v: layer.push(v)[0], z), atol=1e-10)
    back, fwd_logdet = layer(y)
    assert torch.allclose(back, z, atol=1e-9) and torch.allclose(fwd_logdet, -logdet, atol=1e-9)


def test_planar_reparameterisation_keeps_w_dot_u_hat_above_minus_one():
    layer = flows.Planar(3).double()
    g = gen(11)
    seen = []
    for scale in (0.1, 1.0, 10.0):
        for _ in range(20):
            with torch.no_grad():
                layer.w.copy_(scale * torch.randn(3, generator=g, dtype=torch.float64))
                layer.u.copy_(-layer.w * (1 + 5 * torch.rand((), generator=g, dtype=torch.float64)))
            with torch.no_grad():
                wu = layer.w @ layer.u                               # raw w.u, below -1
                seen.append(float(wu))
                assert float(layer.w @ layer.u_hat()) > -1 - 1e-12     # up to rounding
                # exactly the paper's m(w.u) = -1 + softplus(w.u)
                expected = -1 + torch.nn.functional.softplus(wu)
                assert abs(float(layer.w @ layer.u_hat() - expected)) < 1e-9 * max(1, scale**2)
    assert min(seen) < -1
    z = torch.randn(50, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        layer.u.copy_(-4 * layer.w / layer.w.square().sum())
    assert torch.isfinite(layer.push(z)[1]).all()


def test_sample_and_log_prob_agrees_with_the_density_of_the_samples():
    g = gen(3)
    flow = flows.Flow([_randomise(flows.IAF(2, (8,)), 1, 0.3), flows.Planar(2, init_scale=1.0, generator=g),
                       _randomise(flows.MAF(2, (8,), reverse=True), 2, 0.3)]).double()
    x, log_q = flows.sample_and_log_prob(flow, 64, generator=g)
    assert torch.allclose(flow.log_prob(x), log_q, atol=1e-8)


def test_reverse_kl_fits_a_gaussian_and_the_elbo_is_below_log_z():
    target = data.GaussianMixture([[1.0, -0.5]], 0.6)
    log_z = math.log(3.0)                                            # p~ = 3 p, so log Z = log 3
    flow = flows.iaf(2, n_layers=1, hidden=(8,))
    fit = flows.fit_reverse_kl(flow, lambda x: target.log_prob(x) + log_z, steps=120,
                               batch_size=64, lr=5e-2, generator=gen(0), device="cpu")
    assert fit.elbo <= log_z + 3 * fit.elbo_se
    assert log_z - fit.elbo < 0.02 and abs(fit.log_z_is - log_z) < 0.02
    x = flow.sample(4000, generator=gen(1))
    assert torch.allclose(x.mean(0), target.means[0].float(), atol=0.05)


def test_autoregressive_flows_bad_input():
    with pytest.raises(ValueError, match="hidden layer"):
        flows.MADEConditioner(3, ())
    with pytest.raises(ValueError, match="permutation"):
        flows.MADEConditioner(3, (8,), order=[0, 0, 1])
    with pytest.raises(TypeError, match="integer"):
        flows.MAF(2.5)
    layer = flows.MAF(3)
    with pytest.raises(ValueError):
        layer(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        flows.IAF(3).inverse(torch.zeros(4))
    with pytest.raises(ValueError):
        flows.Planar(2).push(torch.zeros(3, 3))
    flow = flows.maf(2, 2)
    with pytest.raises(ValueError, match="exactly one"):
        flows.sample_and_log_prob(flow)
    with pytest.raises(TypeError, match="Flow"):
        flows.sample_and_log_prob(flows.MAF(2), 3)
    with pytest.raises(TypeError, match="callable"):
        flows.fit_reverse_kl(flow, 1.0, steps=1)
    with pytest.raises(ValueError, match="shape"):
        flows.fit_reverse_kl(flow, lambda x: x, steps=1, device="cpu")


def test_check_maf_inverse_passes_the_d_pass_inverse_and_fails_a_one_pass_one():
    def right(layer, z):
        x = torch.zeros_like(z)
        for _ in range(layer.dim):
            mu, alpha = layer.conditioner(x)
            x = z * alpha.exp() + mu
        return x

    def one_pass(layer, z):
        mu, alpha = layer.conditioner(z)
        return z * alpha.exp() + mu

    def too_many(layer, z):
        for _ in range(layer.dim):
            right(layer, z)
        return right(layer, z)

    assert flows.check_maf_inverse(right)
    assert not flows.check_maf_inverse(one_pass)
    assert not flows.check_maf_inverse(too_many)
    assert not flows.check_maf_inverse(lambda layer, z: z)


# ---------------------------------------------------------------- flows on images

def test_squeeze_moves_each_2x2_block_to_four_channels_and_unsqueeze_undoes_it():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = flows.squeeze(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]              # the top-left block
    assert y[0, :, 1, 0].tolist() == [8.0, 9.0, 12.0, 13.0]
    x = torch.randn(3, 2, 6, 4, generator=gen(0))
    assert torch.equal(flows.unsqueeze(flows.squeeze(x)), x)
    y = torch.randn(3, 8, 3, 2, generator=gen(1))
    assert torch.equal(flows.squeeze(flows.unsqueeze(y)), y)


def test_image_masks_split_the_image_in_halves():
    board = flows.checkerboard_mask((2, 4, 4), 0).reshape(2, 4, 4)
    assert board[0, 0, 0] == 1 and board[0, 0, 1] == 0 and board[0, 1, 0] == 0 and board[1, 1, 1] == 1
    assert torch.equal(flows.checkerboard_mask((2, 4, 4), 1), 1 - flows.checkerboard_mask((2, 4, 4), 0))
    chan = flows.channel_mask((4, 2, 2), 0).reshape(4, 2, 2)
    assert chan[:2].eq(1).all() and chan[2:].eq(0).all()
    assert torch.equal(flows.channel_mask((4, 2, 2), 1), 1 - flows.channel_mask((4, 2, 2), 0))


def test_multiscale_flow_inverts_and_its_logdet_equals_autograds():
    flow = _randomise(flows.MultiScaleFlow((1, 8, 8), n_scales=2, n_couplings=2, n_final=2,
                                           hidden=8), std=0.3).double()
    assert flow.latent_sizes == [32, 16, 16]
    v = 0.05 + 0.9 * torch.rand(4, 64, generator=gen(1), dtype=torch.float64)
    with torch.no_grad():
        z, logdet = flow(v)
        assert (flow.inverse(z) - v).abs().max() < 1e-10
        w = torch.randn(4, 64, generator=gen(2), dtype=torch.float64)
        assert (flow(flow.inverse(w))[0] - w).abs().max() < 1e-10
    brute = flows.logdet_autograd(lambda u: flow(u)[0], v)
    assert torch.allclose(logdet, brute, atol=1e-9)
    assert torch.allclose(flow.log_prob(v), flows.standard_normal_log_prob(z) + logdet)
    # the factored-out block after scale 1 does not pass through the later couplings
    v2 = v.clone()
    v2[:, 0] = 0.5
    z2 = flow(v2)[0]
    assert not torch.allclose(z2[:, :32], z[:, :32]) and not torch.allclose(z2[:, 32:], z[:, 32:])
    samples = flow.sample(5, temperature=0.5, generator=gen(3))
    edge = 0.05 / 0.9                                  # the logit's support, alpha / (1 - 2 alpha)
    assert samples.shape == (5, 64) and bool(((samples > -edge) & (samples < 1 + edge)).all())


def test_logit_transform_logdet_and_inverse():
    layer = flows.LogitTransform(3, alpha=0.05).double()
    v = torch.rand(5, 3, generator=gen(4), dtype=torch.float64)
    y, logdet = layer(v)
    assert torch.allclose(layer.inverse(y), v, atol=1e-12)
    assert torch.allclose(logdet, flows.logdet_autograd(lambda u: layer(u)[0], v), atol=1e-10)


def test_dequantized_nll_bounds_the_discrete_nll_and_is_tight_for_a_piecewise_constant_density():
    levels = 5
    probs = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000             # midpoint rule on [0, 1)
    beta = torch.distributions.Beta(torch.tensor(2.0, dtype=torch.float64),
                                    torch.tensor(3.0, dtype=torch.float64))
    edges = torch.linspace(0, 1, levels + 1, dtype=torch.float64)
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)[1:-1]
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                     torch.cumulative_trapezoid(beta.log_prob(grid).exp(), grid)])
    mass = torch.diff(torch.stack([torch.tensor(0.0, dtype=torch.float64)]
                                  + [cdf[(grid <= e).sum() - 1] for e in edges[1:-1]]
                                  + [torch.tensor(1.0, dtype=torch.float64)]))
    exact = lambda v: (levels * probs[(v * levels).long().clamp(max=levels - 1)]).log()  # noqa: E731
    for k in range(levels):
        v = (k + u) / levels
        # the density that fits the discrete distribution exactly: the bound is an equality
        assert math.isclose(flows.bits_per_dim(exact(v), 1, levels=levels),
                            flows.bits_per_dim(probs[k].log()[None], 1, levels=None), rel_tol=1e-9)
        # a smooth density: Jensen's gap is positive in every cell
        deq = flows.bits_per_dim(beta.log_prob(v), 1, levels=levels)
        assert deq > flows.bits_per_dim(mass[k].log()[None], 1, levels=None) + 1e-4
    x = torch.multinomial(probs, 1000, replacement=True, generator=gen(5))[:, None]
    v = flows.dequantize(x, levels, generator=gen(6))
    assert bool(((v * levels).floor() == x).all())                          # v lies in x's cell
    assert flows.bits_per_dim(beta.log_prob(v[:, 0]), 1, levels=levels) > \
        flows.bits_per_dim(mass[x[:, 0]].log(), 1, levels=None)


def test_bits_per_dim_of_a_uniform_density_is_log2_of_the_levels():
    assert math.isclose(flows.bits_per_dim(torch.zeros(7), 64, levels=17), math.log2(17))
    lp = torch.full((3,), -64 * math.log(2.0), dtype=torch.float64)
    assert math.isclose(flows.bits_per_dim(lp, 64, levels=None), 1.0)


def test_independent_categorical_and_full_gaussian_baselines():
    x = torch.tensor([[0, 2], [0, 1], [1, 2]])
    model = flows.IndependentCategorical(3, pseudocount=1.0).fit(x)
    assert torch.allclose(model.log_probs_.exp()[0], torch.tensor([3, 2, 1], dtype=torch.float64) / 6)
    states = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    assert math.isclose(float(model.log_prob(states).exp().sum()), 1.0, rel_tol=1e-12)
    v = torch.randn(200, 3, generator=gen(7), dtype=torch.float64)
    gauss = flows.fit_full_gaussian(v)
    centred = v - v.mean(0)
    assert torch.allclose(gauss.covariance_matrix, centred.T @ centred / 200)


def test_check_squeeze_passes_a_right_answer_and_fails_a_wrong_one():
    assert flows.check_squeeze(flows.squeeze)

    def rows_not_blocks(x):
        n, c, h, w = x.shape
        return x.reshape(n, 4 * c, h // 2, w // 2)
    assert not flows.check_squeeze(rows_not_blocks)


def test_flows_on_images_reject_bad_input():
    with pytest.raises(ValueError, match="even height and width"):
        flows.squeeze(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="ndim|dimension|4"):
        flows.squeeze(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="multiple of 4 channels"):
        flows.unsqueeze(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="not divisible"):
        flows.MultiScaleFlow((1, 6, 6), n_scales=2)
    with pytest.raises(ValueError, match="even number of channels"):
        flows.channel_mask((3, 2, 2))
    with pytest.raises(ValueError, match="integer pixel values"):
        flows.dequantize(torch.tensor([[0.5, 1.0]]), 17)
    with pytest.raises(ValueError, match="0..16"):
        flows.dequantize(torch.tensor([[0.0, 17.0]]), 17)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flows.LogitTransform(2)(torch.tensor([[0.5, 1.06]]))
    with pytest.raises(ValueError, match="alpha"):
        flows.LogitTransform(2, alpha=0.5)
    with pytest.raises(RuntimeError, match="fit"):
        flows.IndependentCategorical(17).log_prob(torch.zeros(1, 64))
    with pytest.raises(ValueError, match="more than"):
        flows.fit_full_gaussian(torch.randn(3, 5))


# ---------------------------------------------------------------- probability paths and couplings

def test_ot_pairing_is_the_brute_force_optimum_on_5_points():
    import itertools
    g = gen(11)
    for _ in range(3):
        x0, x1 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
        perm = flows.ot_pairing(x0, x1)
        assert sorted(perm.tolist()) == list(range(5))
        costs = {p: float((x0 - x1[list(p)]).square().sum()) for p in itertools.permutations(range(5))}
        assert float((x0 - x1[perm]).square().sum()) == pytest.approx(min(costs.values()), abs=1e-6)


def test_ot_pair_batch_pairs_within_groups_and_keeps_the_noise():
    g = gen(12)
    x0, x1 = torch.randn(12, 2, generator=g), torch.randn(12, 2, generator=g)
    assert torch.equal(flows.ot_pair_batch(x0, x1, 1), x1)
    paired = flows.ot_pair_batch(x0, x1, 4)
    for k in range(3):                                     # each group: a permutation of its own rows
        group = slice(4 * k, 4 * k + 4)
        assert sorted(paired[group].sum(1).tolist()) == pytest.approx(sorted(x1[group].sum(1).tolist()))
    whole = flows.ot_pair_batch(x0, x1, 12)
    assert (x0 - whole).square().sum() <= (x0 - paired).square().sum() + 1e-6
    assert (x0 - paired).square().sum() <= (x0 - x1).square().sum() + 1e-6
    loss = flows.ot_flow_matching_loss(lambda x, t: torch.zeros_like(x), x0, ot_batch=4, generator=g)
    assert loss.ndim == 0 and float(loss) > 0


def test_conversions_invert_each_other_and_match_the_straight_path():
    g = gen(13)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        coeffs = dict(zip(("alpha", "sigma", "d_alpha", "d_sigma"), flows.straight_path(t)))
        for src in flows.PREDICTIONS:
            for tgt in flows.PREDICTIONS:
                p = torch.randn(50, 2, generator=g, dtype=torch.float64)
                q = flows.convert_prediction(p, x, source=src, target=tgt, **coeffs)
                back = flows.convert_prediction(q, x, source=tgt, target=src, **coeffs)
                assert torch.allclose(back, p, atol=1e-9), (t, src, tgt)
        den = torch.randn(50, 2, generator=g, dtype=torch.float64)
        v = flows.convert_prediction(den, x, source="denoiser", target="velocity", **coeffs)
        assert torch.allclose(v, (x - den) / t)            # straight path: v = (x - D) / t


def test_mixture_denoiser_matches_tweedie_and_the_velocity_solves_to_the_data():
    from mlbook import diffusion, metrics
    mix = data.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.5, [0.3, 0.7])
    vp = diffusion.VP()
    x = torch.randn(200, 2, generator=gen(14), dtype=torch.float64) * 2
    t = torch.tensor(0.3, dtype=torch.float64)
    a, s = vp.alpha(t), vp.sigma(t)
    score = diffusion.MixtureScore(mix, vp)(x, t.expand(200))
    den = flows.mixture_denoiser(mix, x, a, s)
    assert torch.allclose(den, flows.convert_prediction(score, x, source="score", target="denoiser",
                                                        alpha=a, sigma=s), atol=1e-10)
    assert torch.allclose(flows.mixture_denoiser(mix, x, 0.0, 1.0),
                          (mix.weights[:, None] * mix.means).sum(0).expand(200, 2))
    z = torch.randn(2000, 2, generator=gen(15), dtype=torch.float64)
    out = flows.sample_ode(flows.mixture_velocity(mix), z, n_steps=60, method="rk4")
    assert metrics.mode_check(out, mix).passed


def test_few_step_error_and_ot_checker():
    v = lambda x, t: -x                                    # a curved flow: x(t) = x(1) e^{1 - t}
    z = torch.randn(100, 2, generator=gen(16))
    assert flows.few_step_error(v, z, 1, n_steps=50) > flows.few_step_error(v, z, 4, n_steps=50)
    assert flows.few_step_error(lambda x, t: x.new_ones(x.shape), z, 1) == pytest.approx(0, abs=1e-10)
    assert flows.check_ot_pairing(lambda x0, x1: flows.ot_pairing(x0, x1))
    assert not flows.check_ot_pairing(lambda x0, x1: torch.arange(len(x0)))


def test_paths_bad_input():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="source"):
        flows.convert_prediction(x, x, source="logits", target="score", alpha=0.5, sigma=0.5)
    with pytest.raises(ValueError, match="derivatives"):
        flows.convert_prediction(x, x, source="velocity", target="score", alpha=0.5, sigma=0.5)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        flows.convert_prediction(x, x, source="noise", target="score", alpha=1.0, sigma=0.0)
    with pytest.raises(ValueError, match="shape"):
        flows.convert_prediction(torch.zeros(3, 3), x, source="noise", target="score", alpha=1.0, sigma=1.0)
    with pytest.raises(ValueError, match="same shape"):
        flows.ot_pairing(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="multiple"):
        flows.ot_pair_batch(torch.zeros(6, 2), torch.zeros(6, 2), 4)
    with pytest.raises(TypeError, match="GaussianMixture"):
        flows.mixture_denoiser("mixture", x, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flows.mixture_velocity(data.GaussianMixture([[0.0, 0.0]]))(x, torch.full((3,), 1.5))

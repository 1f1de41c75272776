"""Tests of mlbook.score: the score-matching objectives against closed forms."""

import itertools
import math

import pytest
import torch

from mlbook import score
from mlbook.data import GaussianMixture


def linear(A, b):
    return lambda x: x @ A.T + b


@pytest.fixture
def lin():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    return A, b, x


def test_ism_on_a_linear_score_is_the_closed_form(lin):
    A, b, x = lin
    s = x @ A.T + b
    want = (0.5 * s.square().sum(1) + torch.trace(A)).mean()
    assert torch.allclose(score.ism_loss(linear(A, b), x), want)


def test_sliced_over_all_rademacher_signs_equals_the_exact_objective(lin):
    # E_u over the 2^d sign vectors, enumerated: equal, not just close
    A, b, x = lin
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=torch.float64)
    u = signs[:, None, :].expand(8, len(x), 3).contiguous()
    sliced = score.sliced_loss(linear(A, b), x, u=u)
    assert torch.allclose(sliced, score.ism_loss(linear(A, b), x), atol=1e-12)
    vr = score.sliced_loss(linear(A, b), x, u=u, variance_reduced=True)
    assert torch.allclose(vr, score.ism_loss(linear(A, b), x), atol=1e-12)


def test_sliced_with_gaussian_projections_is_unbiased(lin):
    A, b, x = lin
    g = torch.Generator().manual_seed(1)
    exact = float(score.ism_loss(linear(A, b), x).detach())
    per = score.sliced_loss(linear(A, b), x, n_projections=4000, generator=g,
                            per_sample=True).detach()
    values = torch.stack([score.sliced_loss(linear(A, b), x, generator=g).detach()
                          for _ in range(400)])
    se = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - exact) < 4 * se
    assert abs(float(per.mean()) - exact) < 0.05 * abs(exact) + 0.05
    # the variance-reduced form has a smaller spread over draws of u
    vr = torch.stack([score.sliced_loss(linear(A, b), x, generator=g, variance_reduced=True)
                      .detach() for _ in range(400)])
    assert abs(float(vr.mean()) - exact) < 4 * float(vr.std()) / math.sqrt(len(vr))
    assert float(vr.std()) < float(values.std())


def test_sliced_matches_ism_in_expectation_on_a_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 2)).double()
    x = torch.randn(20, 2, dtype=torch.float64)
    # in d = 2 the four sign vectors give the exact expectation for any network
    signs = torch.tensor([[1.0, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float64)
    u = signs[:, None, :].expand(4, 20, 2).contiguous()
    assert torch.allclose(score.sliced_loss(net, x, u=u), score.ism_loss(net, x), atol=1e-12)


def test_ism_minus_its_value_at_the_truth_is_half_the_squared_error():
    # integration by parts: J_ISM(s) - J_ISM(s*) = 1/2 E||s - s*||^2, on N(m, diag(l^2))
    g = torch.Generator().manual_seed(2)
    m = torch.tensor([0.5, -1.0], dtype=torch.float64)
    ell = torch.tensor([0.7, 1.5], dtype=torch.float64)
    x = m + ell * torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    true = lambda y: -(y - m) / ell**2                          # noqa: E731
    A = torch.tensor([[-1.2, 0.3], [0.1, -0.6]], dtype=torch.float64)
    b = torch.tensor([0.2, -0.4], dtype=torch.float64)
    model = linear(A, b)
    gap = (score.ism_loss(model, x, per_sample=True)
           - score.ism_loss(true, x, per_sample=True)).detach()
    half_err = 0.5 * (model(x) - true(x)).square().sum(1)
    se = float((gap - half_err).std()) / math.sqrt(len(x))
    assert abs(float(gap.mean()) - float(half_err.mean())) < 4 * se
    # and not trivially: a wrong sign on the trace would be far off
    assert float(half_err.mean()) > 0.3
    assert abs(float(score.score_error(model, true, x)) - 2 * float(half_err.mean())) < 1e-9


def test_dsm_floor_matches_the_closed_form_for_one_gaussian():
    ell, sigma, d = 0.6, 0.3, 2
    one = GaussianMixture([[1.0, -1.0]], stds=ell)
    mean, se = score.dsm_floor(one, sigma, 200_000, generator=torch.Generator().manual_seed(4))
    want = d * ell**2 / (2 * sigma**2 * (ell**2 + sigma**2))
    assert abs(mean - want) < 4 * se


def test_dsm_is_minimised_by_the_blurred_score_not_the_data_score():
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], stds=0.4)
    sigma = 0.5
    x = mix.sample(100_000, generator=torch.Generator().manual_seed(5)).double()
    losses = {}
    for name, s in [("blurred", score.exact_score(mix, sigma)), ("data", score.exact_score(mix))]:
        losses[name] = float(score.dsm_loss(s, x, sigma,
                                            generator=torch.Generator().manual_seed(6)))
    assert losses["blurred"] < losses["data"] - 0.1


def test_exact_score_is_the_gradient_of_the_log_density():
    mix = GaussianMixture([[-1.0, 0.5], [1.0, 0.0], [0.0, 1.0]], stds=[0.3, 0.5, 0.4],
                          weights=[0.2, 0.5, 0.3])
    x = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for sigma in (0.0, 0.3):
        y = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score.blur(mix, sigma).log_prob(y).sum(), y)
        assert torch.allclose(score.exact_score(mix, sigma)(x), grad, atol=1e-10)


def test_projections_have_identity_second_moment():
    g = torch.Generator().manual_seed(8)
    for kind in ("gaussian", "rademacher"):
        u = score.projections(1, 200_000, 3, kind=kind, generator=g, dtype=torch.float64)[0]
        assert torch.allclose(u.T @ u / len(u), torch.eye(3, dtype=torch.float64), atol=0.02)
    r = score.projections(2, 5, 3, kind="rademacher", generator=g)
    assert set(r.unique().tolist()) <= {-1.0, 1.0}


def test_losses_train_a_network():
    # a few steps of each objective lower the error against the exact score
    torch.manual_seed(0)
    mix = GaussianMixture([[0.0, 0.0]], stds=1.0)
    x = mix.sample(512, generator=torch.Generator().manual_seed(9))
    true = score.exact_score(mix)
    for loss in (lambda net: score.ism_loss(net, x), lambda net: score.sliced_loss(net, x),
                 lambda net: score.dsm_loss(net, x, 0.1)):
        net = torch.nn.Linear(2, 2)
        before = score.score_error(net, true, x)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        for _ in range(100):
            opt.zero_grad()
            loss(net).backward()
            opt.step()
        assert score.score_error(net, true, x) < 0.5 * before


def test_checker_passes_the_library_and_fails_wrong_answers(capsys):
    def right(s, x, u):
        return score.sliced_loss(s, x, u=u[None])

    def detached(s, x, u):          # forgets create_graph: no gradient through the trace
        x = x.detach().requires_grad_(True)
        out = s(x)
        us = (u * out).sum(1)
        (g,) = torch.autograd.grad(us.sum(), x)
        return ((u * g).sum(1) + 0.5 * us.square()).mean()

    def no_half(s, x, u):
        x = x.detach().requires_grad_(True)
        out = s(x)
        us = (u * out).sum(1)
        (g,) = torch.autograd.grad(us.sum(), x, create_graph=True)
        return ((u * g).sum(1) + us.square()).mean()

    def stub(s, x, u):
        raise NotImplementedError

    assert score.check_sliced_loss(right)
    assert not score.check_sliced_loss(detached)
    assert not score.check_sliced_loss(no_half)
    assert not score.check_sliced_loss(stub)
    assert "not yet" in capsys.readouterr().out


def test_bad_input_raises_clear_errors(lin):
    A, b, x = lin
    with pytest.raises(TypeError, match="score must be callable"):
        score.ism_loss(3, x)
    with pytest.raises(ValueError, match="shape of x"):
        score.ism_loss(lambda y: y[:, :2], x)
    with pytest.raises(ValueError, match="2 dimensions"):
        score.sliced_loss(linear(A, b), x[0])
    with pytest.raises(ValueError, match="u must have shape"):
        score.sliced_loss(linear(A, b), x, u=torch.ones(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="kind must be one of"):
        score.sliced_loss(linear(A, b), x, kind="uniform")
    with pytest.raises(ValueError, match="n_projections must be >= 1"):
        score.sliced_loss(linear(A, b), x, n_projections=0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        score.dsm_loss(linear(A, b), x, 0.0)
    with pytest.raises(ValueError, match="x must be finite"):
        score.dsm_loss(linear(A, b), torch.full((2, 3), float("nan")), 0.1)
    with pytest.raises(TypeError, match="floating-point"):
        score.ism_loss(linear(A, b), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="GaussianMixture"):
        score.blur("ring", 0.1)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        score.exact_score(GaussianMixture([[0.0, 0.0]]), -1.0)


def test_draw_field_shortens_long_arrows_and_draws_the_error():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mix = GaussianMixture([[0.0, 0.0]], stds=0.2)
    fig, ax = plt.subplots()
    q = score.draw_field(ax, score.exact_score(mix), extent=(-2, 2, -2, 2), n=5,
                         max_length=3.0)
    lengths = (torch.as_tensor(q.U) ** 2 + torch.as_tensor(q.V) ** 2).sqrt()
    assert float(lengths.max()) <= 3.0 + 1e-9 and float(lengths.max()) > 2.9
    net = torch.nn.Linear(2, 2)
    score.draw_field(ax, net, reference=score.exact_score(mix), log_prob=mix.log_prob,
                     resolution=10)
    image = ax.get_images()[-1].get_array()
    assert image.shape == (10, 10) and float(image.min()) >= 0
    plt.close(fig)

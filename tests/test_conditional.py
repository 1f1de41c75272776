"""Class-conditional pieces: labelled mixtures, the exact noisy classifier, a conditional TimeMLP, label dropout."""

import math

import pytest
import torch

from mlbook import data, diffusion, nets
from helpers import gen, t64

MIX = data.GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0.3, 0.4, 0.5], [0.5, 0.3, 0.2])
CLASSES = [[0], [1, 2]]


def test_subset_keeps_the_components_and_renormalises_the_weights():
    sub = MIX.subset([1, 2])
    assert torch.allclose(sub.means, MIX.means[1:])
    assert torch.allclose(sub.weights, t64([0.6, 0.4]))
    with pytest.raises(ValueError, match="components"):
        MIX.subset([3])
    with pytest.raises(ValueError, match="components"):
        MIX.subset([])


@pytest.mark.parametrize("t", [0.0, 0.3, 0.9])
def test_class_posterior_is_bayes_on_the_class_densities(t):
    vp = diffusion.VP()
    exact = diffusion.MixtureScore(MIX, vp)
    x = torch.randn(50, 2, generator=gen(1), dtype=torch.float64) * 2
    log_post = exact.class_log_probs(x, t64(t), CLASSES)
    # p_t(y | x) = w_y p_t(x | y) / p_t(x), with w_y the class's total weight.
    by_class = torch.stack([math.log(float(MIX.weights[c].sum()))
                            + diffusion.MixtureScore(MIX.subset(c), vp).log_prob(x, t64(t)) for c in CLASSES], 1)
    expected = by_class - exact.log_prob(x, t64(t))[:, None]
    assert torch.allclose(log_post, expected, atol=1e-10)
    assert torch.allclose(log_post.exp().sum(1), torch.ones(50, dtype=torch.float64))


def test_conditional_time_mlp_uses_the_label_and_a_null_label():
    torch.manual_seed(0)
    net = nets.TimeMLP(dim=2, hidden=16, layers=2, n_classes=3)
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    a = net(x, t, torch.tensor([0, 0, 0, 0]))
    b = net(x, t, torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(a, b)
    # No label means the null label (index n_classes).
    assert torch.allclose(net(x, t), net(x, t, torch.full((4,), 3)))
    with pytest.raises(ValueError, match="label"):
        net(x, t, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="n_classes"):
        nets.TimeMLP(dim=2, hidden=8)(x, t, torch.zeros(4, dtype=torch.long))


def test_label_dropout_replaces_the_expected_share_of_labels():
    seen = []

    def model(x, t, y):
        seen.append(y.clone())
        return torch.zeros_like(x)

    x0 = torch.randn(20_000, 2, generator=gen(2))
    labels = torch.zeros(20_000, dtype=torch.long)
    diffusion.eps_loss(model, diffusion.VP(), x0, labels=labels, p_uncond=0.2, null=5, generator=gen(3))
    share = float((seen[0] == 5).double().mean())
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20_000)
    assert set(seen[0].tolist()) == {0, 5}
    with pytest.raises(ValueError, match="dropout"):
        diffusion.eps_loss(model, diffusion.VP(), x0, labels=labels, p_uncond=0.2, generator=gen(3))


def test_eps_precond_feeds_the_network_log_sigma_over_four():
    calls = []

    class Net(torch.nn.Module):
        def forward(self, x, t):
            calls.append(t.clone())
            return x

    model = diffusion.EpsPrecond(Net())
    x = torch.randn(3, 2)
    assert torch.equal(model(x, torch.tensor([1.0, math.e ** 4, 0.5])), x)
    assert torch.allclose(calls[0], torch.tensor([0.0, 1.0, math.log(0.5) / 4]))
    with pytest.raises(TypeError, match="net"):
        diffusion.EpsPrecond(lambda x, t: x)

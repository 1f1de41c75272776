import math

import pytest
import torch

from mlbook import autoregressive as ar


def _random_made(C=3, D=5, hidden=(12, 12), order=None, direct=False, seed=0):
    torch.manual_seed(seed)
    model = ar.MADE(D, hidden, C, order=order, direct=direct)
    with torch.no_grad():                      # large weights: far from uniform
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("order", [None, [3, 0, 4, 1, 2]])
@pytest.mark.parametrize("direct", [False, True])
def test_made_output_d_depends_only_on_earlier_inputs(order, direct):
    D, C = 5, 3
    model = _random_made(C, D, order=order, direct=direct)
    position = torch.arange(D) if order is None else torch.tensor(order)
    x = torch.randint(C, (1, D), generator=torch.Generator().manual_seed(0))
    model.requires_grad_(False)
    base = model(x)
    for j in range(D):                         # change input j to every other value
        for v in range(C):
            y = x.clone()
            y[0, j] = v
            changed = (model(y) - base).abs().amax(-1)[0] > 1e-6        # (D,)
            for d in range(D):
                if position[j] >= position[d]:
                    assert not changed[d], (j, d)
    # and the dependence is real: the last output in the order sees every earlier input
    last = int((position == D - 1).nonzero())
    jac = []
    for j in range(D):
        y = x.clone()
        y[0, j] = (x[0, j] + 1) % C
        jac.append(float((model(y) - base)[0, last].abs().max()))
    assert sum(v > 1e-6 for v in jac) == D - 1


@pytest.mark.parametrize("C,D,hidden,direct", [(2, 8, (16,), False), (3, 5, (12, 12), True),
                                               (4, 3, (), False), (2, 1, (4,), False)])
def test_made_probabilities_sum_to_one(C, D, hidden, direct):
    model = _random_made(C, D, hidden, direct=direct)
    assert abs(ar.total_log_probability(model.log_prob, D, C)) < 1e-5


def test_fvsbn_and_nade_sum_to_one():
    torch.manual_seed(0)
    f = ar.FVSBN(9)
    nade = ar.NADE(9, 7)
    with torch.no_grad():
        f.weight.normal_(0, 2.0)
        f.bias.normal_(0, 1.0)
        nade.b.normal_(0, 1.0)
    for model in (f, nade):
        assert abs(ar.total_log_probability(model.log_prob, 9)) < 1e-5


def test_nade_matches_the_direct_formula():
    torch.manual_seed(1)
    nade = ar.NADE(6, 4)
    x = (torch.rand(3, 6) < 0.5).float()
    logits = nade(x)
    with torch.no_grad():
        for i in range(3):
            for d in range(6):
                h = torch.sigmoid(nade.c + nade.W[:, :d] @ x[i, :d])     # (H,)
                want = h @ nade.V[d] + nade.b[d]
                assert abs(float(logits[i, d] - want)) < 1e-5


def test_sampling_matches_probabilities():
    # empirical frequencies of 20000 samples against the exact pmf on 2^3 or 3^2 states
    g = torch.Generator().manual_seed(0)
    for model, D, C in [(_random_made(2, 3, (6,)), 3, 2), (_random_made(3, 2, (5,)), 2, 3),
                        (_random_made(2, 3, (6,), order=[2, 0, 1]), 3, 2)]:
        states = ar.all_states(D, C)
        with torch.no_grad():
            p = model.log_prob(states).exp()
        x = model.sample(20000, generator=g)
        codes = (x * (C ** torch.arange(D - 1, -1, -1))).sum(1)
        freq = torch.bincount(codes, minlength=C**D).float() / 20000
        assert float((freq - p).abs().max()) < 4 * math.sqrt(0.25 / 20000) + 1e-3
    torch.manual_seed(0)
    for model in (ar.FVSBN(3), ar.NADE(3, 4)):
        with torch.no_grad():
            for prm in model.parameters():
                prm.normal_(0, 1.5)
        states = ar.all_states(3).float()
        p = model.log_prob(states).exp()
        x = model.sample(20000, generator=g)
        codes = (x * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()
        freq = torch.bincount(codes, minlength=8).float() / 20000
        assert float((freq - p.detach()).abs().max()) < 4 * math.sqrt(0.25 / 20000) + 1e-3


def test_sample_steps_fill_one_position_per_step():
    model = _random_made(2, 4, (8,), order=[1, 3, 0, 2])
    x, steps = model.sample(5, generator=torch.Generator().manual_seed(0), return_steps=True)
    assert steps.shape == (5, 5, 4)
    assert bool((steps[0] == -1).all()) and torch.equal(steps[-1], x)
    drawn = (steps >= 0).sum((1, 2)) // 5
    assert drawn.tolist() == [0, 1, 2, 3, 4]
    assert bool((steps[1][:, 2] >= 0).all())                   # position 0 is input 2


def test_fvsbn_fit_matches_logistic_regressions():
    from sklearn.linear_model import LogisticRegression
    g = torch.Generator().manual_seed(0)
    z = torch.rand(400, 1, generator=g)
    X = (torch.rand(400, 6, generator=g) < 0.2 + 0.6 * z).float()     # correlated bits
    l2 = 0.01
    model = ar.FVSBN(6).fit(X, l2=l2)
    nll = -float(model.log_prob(X).detach().mean())
    total = -math.log(float(X[:, 0].mean())) * float(X[:, 0].mean()) \
        - math.log(1 - float(X[:, 0].mean())) * (1 - float(X[:, 0].mean()))
    for d in range(1, 6):
        # sklearn: C * sum(log loss) + ||w||^2 / 2  <=>  mean log loss + l2/2 ||w||^2
        lr = LogisticRegression(C=1 / (l2 * len(X)), tol=1e-10, max_iter=1000)
        lr.fit(X[:, :d].numpy(), X[:, d].numpy())
        p = torch.as_tensor(lr.predict_proba(X[:, :d].numpy())[:, 1])
        y = X[:, d].double()
        total += -float((y * p.log() + (1 - y) * (1 - p).log()).mean())
    assert abs(nll - total) < 1e-4


def test_pseudo_likelihood():
    # an independent model: each conditional is the marginal, so PL equals the likelihood
    p = torch.tensor([0.2, 0.7, 0.5, 0.9])

    def log_prob(x):
        x = x.float()
        return (x * p.log() + (1 - x) * (1 - p).log()).sum(1)

    X = (torch.rand(10, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    assert torch.allclose(ar.pseudo_log_likelihood(log_prob, X), log_prob(X).double(), atol=1e-6)


def test_rbm_conditionals_match_brute_force():
    from sklearn.neural_network import BernoulliRBM
    X = (torch.rand(50, 5, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    rbm = BernoulliRBM(n_components=3, n_iter=5, random_state=0).fit(X.numpy())
    W = torch.as_tensor(rbm.components_)
    c, b = torch.as_tensor(rbm.intercept_hidden_), torch.as_tensor(rbm.intercept_visible_)
    states = ar.all_states(5).double()
    # unnormalised log p(v) = -F(v); conditionals from the exact joint
    log_joint = states @ b + torch.nn.functional.softplus(states @ W.T + c).sum(1)
    log_joint = log_joint - torch.logsumexp(log_joint, 0)
    cond = ar.rbm_log_conditionals(rbm, X)
    for i in range(3):
        for d in range(5):
            other = X[i].clone()
            other[d] = 1 - other[d]
            idx = int((states == X[i]).all(1).nonzero())
            jdx = int((states == other).all(1).nonzero())
            want = log_joint[idx] - torch.logaddexp(log_joint[idx], log_joint[jdx])
            assert abs(float(cond[i, d] - want)) < 1e-10
    # sklearn's score_samples is D times one random conditional: its mean matches on average
    est = torch.as_tensor(rbm.score_samples(X.numpy().repeat(200, 0)))
    assert abs(float(est.mean()) - float(cond.sum(1).mean())) < 4 * float(est.std()) / math.sqrt(
        len(est))


def test_checker_passes_right_and_fails_wrong():
    assert ar.check_made_masks(lambda n, h: ar.made_masks(n, h))

    def non_strict(n, hidden):
        masks = ar.made_masks(n, hidden)
        degrees = ar.made_degrees(n, hidden)
        masks[-1] = (degrees[0][:, None] >= degrees[-1][None, :]).float()
        return masks

    def transposed(n, hidden):
        return [m.T for m in ar.made_masks(n, hidden)]

    def disconnected(n, hidden):
        masks = ar.made_masks(n, hidden)
        masks[0] = torch.zeros_like(masks[0])
        return masks

    for wrong in (non_strict, transposed, disconnected):
        assert not ar.check_made_masks(wrong)


def test_helpers():
    X = torch.tensor([[0.0, 7.0, 8.0, 16.0]])
    assert ar.binarise(X).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert ar.bits_per_image(torch.tensor([-math.log(2.0) * 3])) == pytest.approx(3.0)
    assert ar.all_states(3, 2).shape == (8, 3)


def test_bad_input():
    model = ar.MADE(4, (8,), 3)
    with pytest.raises(ValueError, match="0..2"):
        model.log_prob(torch.tensor([[0, 1, 3, 0]]))
    with pytest.raises(ValueError, match="last dimension 4"):
        model.log_prob(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="non-integer"):
        model.log_prob(torch.full((1, 4), 0.5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.log_prob([[0, 1, 2, 0]])
    with pytest.raises(ValueError, match="n_categories"):
        ar.MADE(4, (8,), 1)
    with pytest.raises(ValueError, match="permutation"):
        ar.MADE(3, (4,), order=[0, 0, 1])
    with pytest.raises(ValueError, match="hidden_sizes"):
        ar.MADE(3, (0,))
    with pytest.raises(ValueError, match="n"):
        model.sample(0)
    with pytest.raises(ValueError, match="0..1"):
        ar.FVSBN(3).log_prob(torch.tensor([[0.0, 2.0, 1.0]]))
    with pytest.raises(ValueError, match="too many"):
        ar.all_states(30)
    with pytest.raises(TypeError, match="floating"):
        ar.binarise(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="l2"):
        ar.FVSBN(3).fit(torch.zeros(4, 3), l2=-1.0)


def test_fit_gaussian_forward_matches_moments_and_reverse_finds_modes():
    from mlbook.data import GaussianMixture
    p = GaussianMixture([[-2.0], [2.0]], [0.6, 0.6], [0.6, 0.4])

    def log_p(x):
        return p.log_prob(x[:, None])

    mu, sigma, kl = ar.fit_gaussian(log_p, "forward")
    mean = 0.6 * -2 + 0.4 * 2
    var = 0.36 + 0.6 * 4 + 0.4 * 4 - mean**2
    assert abs(mu - mean) < 1e-4 and abs(sigma - math.sqrt(var)) < 1e-4 and kl > 0
    left = ar.fit_gaussian(log_p, "reverse", init=(-1.0, 1.0))
    right = ar.fit_gaussian(log_p, "reverse", init=(1.0, 1.0))
    assert abs(left[0] + 2) < 0.05 and abs(right[0] - 2) < 0.05      # one mode each
    assert abs(left[1] - 0.6) < 0.05                                  # its width
    assert abs(left[2] - math.log(1 / 0.6)) < 0.01                    # KL ~ -log weight
    with pytest.raises(ValueError, match="direction"):
        ar.fit_gaussian(log_p, "sideways")

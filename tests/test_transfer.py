"""mlbook.transfer: shifted digits, importance weights, fine-tuning, gradient reversal, DANN, attributes."""

import math

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mlbook import transfer as T
from helpers import gen


@pytest.fixture(scope="module")
def digits():
    X, y = T.digits(device="cpu")
    return X, y


# ------------------------------------------------------------------ data transformations

def test_digits_are_scaled_to_the_unit_interval(digits):
    X, y = digits
    assert X.shape == (1797, 64) and y.shape == (1797,)
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0


def test_rotation_by_zero_is_the_identity_and_quarter_turns_compose(digits):
    X = digits[0][:20]
    assert torch.allclose(T.rotate(X, 0.0), X, atol=1e-6)
    # a quarter turn maps the pixel grid onto itself: two of them are one half turn
    half = T.rotate(T.rotate(X, 90.0), 90.0)
    assert torch.allclose(half, T.rotate(X, 180.0), atol=1e-5)
    assert torch.allclose(half, X.reshape(-1, 8, 8).flip(1, 2).reshape(-1, 64), atol=1e-5)
    per_row = T.rotate(X[:2], torch.tensor([0.0, 180.0]))
    assert torch.allclose(per_row[0], X[0], atol=1e-6)
    assert torch.allclose(per_row[1], half[1], atol=1e-5)


def test_transformations_reject_bad_input(digits):
    X = digits[0][:4]
    with pytest.raises(ValueError, match="last dimension 64"):
        T.rotate(X[:, :10], 30.0)
    with pytest.raises(ValueError, match="one per row"):
        T.rotate(X, torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        T.thicken(X, 1.5)
    with pytest.raises(ValueError, match=">= 0"):
        T.add_noise(X, -1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        T.mix_domains(X, 2.0, T.thicken)


def test_thickening_only_adds_ink_and_zero_amount_changes_nothing(digits):
    X = digits[0][:50]
    assert torch.equal(T.thicken(X, 0.0), X)
    thick = T.thicken(X, 1.0)
    assert bool((thick >= X).all()) and float(thick.sum()) > 1.2 * float(X.sum())
    half = T.thicken(X, 0.5)
    assert torch.allclose(half, (X + thick) / 2, atol=1e-6)


def test_mix_domains_transforms_the_requested_share(digits):
    X = digits[0]
    mixed, z = T.mix_domains(X, 0.3, T.thicken, generator=gen(0))
    assert abs(float(z.float().mean()) - 0.3) < 0.05
    assert torch.equal(mixed[z == 0], X[z == 0])
    assert torch.allclose(mixed[z == 1], T.thicken(X[z == 1]))


# ------------------------------------------------------------------ importance weights

def test_importance_weights_formula_and_bad_probabilities():
    p = torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)
    w = T.importance_weights(p, 300, 100)
    assert torch.allclose(w, 3 * p / (1 - p))
    with pytest.raises(ValueError, match="infinite ratio"):
        T.importance_weights(torch.tensor([0.5, 1.0]), 10, 10)
    with pytest.raises(ValueError, match=">= 1"):
        T.importance_weights(p, 0, 10)


def test_effective_sample_size_limits():
    assert T.effective_sample_size(torch.ones(50)) == pytest.approx(50.0)
    one = torch.zeros(50)
    one[3] = 7.0
    assert T.effective_sample_size(one) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        T.effective_sample_size(torch.tensor([1.0, -1.0]))


def test_weighted_mean_is_unbiased_for_a_gaussian_shift():
    # p_S = N(0, 1), p_T = N(1, 1): the weighted mean of x under p_S estimates E_T[x] = 1
    x = torch.randn(200_000, generator=gen(1), dtype=torch.float64)
    w = (x - 0.5).exp()
    est = T.weighted_mean(x, w)
    se = float((w * x).std()) / math.sqrt(len(x))
    assert abs(est - 1.0) < 4 * se
    assert T.weighted_mean(x, w, self_normalised=True) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="same length"):
        T.weighted_mean(x[:3], w[:4])


def test_domain_classifier_matches_sklearn_and_recovers_a_known_ratio():
    g = gen(2)
    xs = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    xt = torch.randn(1000, 1, generator=g, dtype=torch.float64) + 1.0
    ours = T.DomainClassifier(C=1.0).fit(xs, xt)
    sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(
        torch.cat([xs, xt]).numpy(), [0] * 2000 + [1] * 1000)
    assert float(ours.coef_[0]) == pytest.approx(float(sk.coef_[0, 0]), rel=1e-3)
    grid = torch.linspace(-1, 2, 7, dtype=torch.float64)[:, None]
    # exact ratio exp(x - 1/2); a sample of 3000 pins it down to a few per cent here
    assert torch.allclose(ours.weights(grid), (grid[:, 0] - 0.5).exp(), rtol=0.15)
    assert 0.6 < ours.score(xs, xt) < 0.8


def test_domain_classifier_rejects_misuse():
    with pytest.raises(T._checks.NotFittedError):
        T.DomainClassifier().weights(torch.zeros(2, 3))
    clf = T.DomainClassifier().fit(torch.zeros(5, 3), torch.ones(5, 3))
    with pytest.raises(ValueError, match="3"):
        clf.predict_proba(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="> 0"):
        T.DomainClassifier(C=0.0)


def test_proxy_a_distance_is_near_zero_for_one_domain_and_two_for_separable_ones():
    g = gen(3)
    a = torch.randn(400, 2, generator=g, dtype=torch.float64)
    b = torch.randn(400, 2, generator=g, dtype=torch.float64)
    same, _ = T.proxy_a_distance(a, b, generator=gen(4))
    apart, err = T.proxy_a_distance(a, b + 10.0, generator=gen(4))
    assert abs(same) < 0.3 and apart == pytest.approx(2.0) and err == 0.0
    with pytest.raises(ValueError, match="at least 4"):
        T.proxy_a_distance(a[:3], b)


def test_checker_passes_the_right_weights_and_fails_wrong_ones():
    def right(p, n_s, n_t):
        return p / (1 - p) * n_s / n_t

    def no_correction(p, n_s, n_t):
        return p / (1 - p)

    def inverted(p, n_s, n_t):
        return (1 - p) / p * n_s / n_t

    assert T.check_importance_weights(right)
    assert not T.check_importance_weights(no_correction)
    assert not T.check_importance_weights(inverted)


# ------------------------------------------------------------------ classifiers and fine-tuning

def test_fit_classifier_validates_weights(digits):
    X, y = digits
    net = T.nets.mlp(64, 8, 10)
    with pytest.raises(ValueError, match="non-negative"):
        T.fit_classifier(net, X[:10], y[:10], weights=-torch.ones(10), steps=1)
    with pytest.raises(ValueError, match="same number of rows"):
        T.fit_classifier(net, X[:10], y[:9], steps=1)


def test_l2sp_penalty_value():
    net = T.nets.mlp(2, 3, 2)
    ref = {k: v.detach().clone() for k, v in net.named_parameters() if k.startswith("0.")}
    assert T.l2sp_penalty(net, ref, alpha=1.0).item() == pytest.approx(0.0)
    with torch.no_grad():
        net[0].weight.add_(1.0)                   # 6 entries moved by 1
    head = sum(float(p.detach().square().sum()) for k, p in net.named_parameters()
               if k.startswith("2."))
    value = T.l2sp_penalty(net, ref, alpha=2.0, beta=4.0).item()
    assert value == pytest.approx(0.5 * 2.0 * 6 + 0.5 * 4.0 * head, rel=1e-5)


@pytest.fixture(scope="module")
def pretrained(digits):
    X, y = digits
    torch.manual_seed(0)
    net = T.nets.mlp(64, 32, 10)
    T.fit_classifier(net, X[:500], y[:500], steps=100, generator=gen(5))
    return net


def test_finetune_modes_touch_the_right_parameters(digits, pretrained):
    X, y = digits
    Xa, ya = X[500:540], y[500:540]
    last = T.finetune(pretrained, Xa, ya, "last", steps=20, generator=gen(6))
    assert torch.equal(last[0].weight, pretrained[0].weight)          # trunk frozen
    assert all(p.requires_grad for p in last.parameters())            # and released after
    full = T.finetune(pretrained, Xa, ya, "all", steps=20, generator=gen(6))
    assert not torch.equal(full[0].weight, pretrained[0].weight)
    tight = T.finetune(pretrained, Xa, ya, "l2sp", alpha=1e4, steps=20, generator=gen(6))
    moved = lambda net: float((net[0].weight - pretrained[0].weight).detach().abs().max())
    assert moved(tight) < 0.2 * moved(full)
    scratch = T.finetune(pretrained, Xa, ya, "scratch", steps=1, generator=gen(6))
    assert float((scratch[0].weight - pretrained[0].weight).detach().abs().max()) > 0.05
    assert T.accuracy(full, X[1000:1300], y[1000:1300]) > 0.3     # chance is 0.1
    with pytest.raises(ValueError, match="mode"):
        T.finetune(pretrained, Xa, ya, "middle")
    with pytest.raises(TypeError, match="nn.Sequential"):
        T.finetune(torch.nn.Linear(64, 10), Xa, ya)


def test_multitask_net_has_one_head_per_task(digits):
    X, y = digits
    net = T.MultiTaskNet(T.nets.mlp(64, 16), 16, [10, 2])
    assert net(X[:5], 0).shape == (5, 10) and net(X[:5], 1).shape == (5, 2)
    losses = T.fit_multitask(net, [(X[:100], y[:100]), (X[:100], y[:100] % 2)], steps=30,
                             generator=gen(7))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="heads"):
        T.fit_multitask(net, [(X[:10], y[:10])], steps=1)


# ------------------------------------------------------------------ gradient reversal and DANN

def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = torch.randn(4, 3, generator=gen(8), requires_grad=True)
    out = T.grad_reverse(x, 0.7)
    assert torch.equal(out, x)
    (out * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.7 * torch.arange(3.0).expand(4, 3))
    with pytest.raises(ValueError, match=">= 0"):
        T.grad_reverse(x, -1.0)


def test_dann_schedule_and_shapes():
    assert T.dann_lambda(0.0) == 0.0
    assert 0.99 < T.dann_lambda(1.0) < 1.0
    assert T.dann_lambda(0.1) < T.dann_lambda(0.5)
    with pytest.raises(ValueError, match="progress"):
        T.dann_lambda(1.5)
    model = T.DANN(width=16, domain_width=8)
    logits, domain = model(torch.zeros(5, 64), 1.0)
    assert logits.shape == (5, 10) and domain.shape == (5,)


def test_reversal_makes_the_features_ascend_the_domain_loss():
    torch.manual_seed(0)
    model = T.DANN(width=8, domain_width=4)
    x = torch.randn(6, 64, generator=gen(9))
    t = torch.tensor([0.0, 0, 0, 1, 1, 1])
    grads = {}
    for lam in (0.0, 1.0):
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x, lam)[1], t).backward()
        grads[lam] = (model.features[0].weight.grad.clone(), model.domain[0].weight.grad.clone())
    assert torch.allclose(grads[0.0][0], torch.zeros_like(grads[0.0][0]))   # lam = 0: no signal
    # with the reversal the domain head's gradient is unchanged; the features get the opposite
    # of the gradient they would get without it
    model.zero_grad()
    h = model.embed(x)
    torch.nn.functional.binary_cross_entropy_with_logits(model.domain(h).squeeze(1), t).backward()
    assert torch.allclose(grads[1.0][0], -model.features[0].weight.grad, atol=1e-6)
    assert torch.allclose(grads[1.0][1], model.domain[0].weight.grad, atol=1e-6)


def test_fit_dann_runs_and_validates(digits):
    X, y = digits
    model = T.DANN(width=16, domain_width=8)
    losses = T.fit_dann(model, X[:200], y[:200], T.rotate(X[200:300], 30.0), steps=20,
                        batch_size=32, generator=gen(10))
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    with pytest.raises(ValueError, match="one non-negative weight per source row"):
        T.fit_dann(model, X[:10], y[:10], X[10:20], source_weights=torch.ones(3), steps=1)


# ------------------------------------------------------------------ zero-shot by attributes

def test_attribute_signatures_are_distinct():
    A = T.ATTRIBUTES
    assert A.shape == (10, len(T.ATTRIBUTE_NAMES))
    assert len({tuple(row.tolist()) for row in A}) == 10


def test_attribute_score_is_the_log_probability_of_the_signature():
    probs = torch.tensor([[0.9, 0.2]])
    sig = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    score = T.attribute_log_likelihood(probs, sig)
    assert torch.allclose(score, torch.tensor([[math.log(0.9 * 0.8), math.log(0.1 * 0.2)]]))
    prior = torch.tensor([0.5, 0.25])
    corrected = T.attribute_log_likelihood(probs, sig, prior=prior)
    assert torch.allclose(corrected, score - torch.log(torch.tensor([0.5 * 0.75, 0.5 * 0.25])))
    assert T.zero_shot_predict(probs, sig, [0, 1]).tolist() == [0]
    assert T.zero_shot_predict(probs, sig, [1]).tolist() == [1]
    with pytest.raises(ValueError, match="index"):
        T.zero_shot_predict(probs, sig, [5])
    with pytest.raises(ValueError, match="last dimension"):
        T.attribute_log_likelihood(probs, torch.ones(2, 3))


def test_fit_attributes_learns_the_seen_signatures(digits):
    X, y = digits
    seen = y < 7
    net = T.fit_attributes(X[seen][:600], y[seen][:600], T.ATTRIBUTES, steps=150, generator=gen(11))
    with torch.no_grad():
        probs = torch.sigmoid(net(X[seen][600:900]))
    target = T.ATTRIBUTES[y[seen][600:900]]
    assert float(((probs > 0.5).float() == target).float().mean()) > 0.9
    with pytest.raises(ValueError, match="index"):
        T.fit_attributes(X[:5], torch.full((5,), 12), T.ATTRIBUTES, steps=1)

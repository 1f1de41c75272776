"""mlbook.train: the one training loop and its progress bar."""

import copy
import math

import pytest
import torch

from mlbook import data, train as tr
from helpers import gen


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("MLBOOK_PROGRESS", "0")
    monkeypatch.delenv("MLBOOK_DEVICE", raising=False)


def mse(model, batch):
    x, y = batch
    return (model(x) - y).square().mean()


def line_data(n=256):
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    return x, 3 * x - 1


def linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(1, 1)


# ------------------------------------------------------------------ fitting

def test_fits_a_linear_regression():
    model = linear()
    history = tr.train(model, mse, line_data(), steps=400, lr=0.05, batch_size=64, generator=gen(),
                       device="cpu")
    assert model.weight.item() == pytest.approx(3.0, abs=0.02)
    assert model.bias.item() == pytest.approx(-1.0, abs=0.02)
    assert history[-1] < 1e-3 < history[0]


def test_fits_from_a_callable_data_source():
    # The minimiser of E|x - c|^2 is the mean of the sampled distribution.
    target = torch.tensor([1.0, -2.0])
    dist = data.GaussianMixture(target[None], 0.5)

    class Centre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Parameter(torch.zeros(2))

    model = Centre()
    history = tr.train(model, lambda m, batch: (batch - m.c).square().sum(1).mean(), dist.sample,
                       steps=300, lr=0.05, batch_size=512, generator=gen(), device="cpu")
    assert len(history) == 300
    assert torch.allclose(model.c.detach(), target, atol=0.05)


def test_callable_source_receives_batch_size_and_generator():
    seen = []
    g = gen()

    def source(n, generator=None):
        seen.append((n, generator))
        return torch.randn(n, 1, generator=generator), torch.zeros(n, 1)

    tr.train(linear(), mse, source, steps=3, batch_size=17, generator=g, device="cpu")
    assert seen == [(17, g)] * 3


def test_returns_one_float_loss_per_step():
    history = tr.train(linear(), mse, line_data(), steps=37, lr=0.01, generator=gen(), device="cpu")
    assert len(history) == 37
    assert all(isinstance(v, float) for v in history)


def test_first_loss_is_the_loss_of_the_initial_model():
    model = linear()
    x, y = line_data(50)
    expected = float(((x @ model.weight.detach().T + model.bias.detach()) - y).square().mean())
    history = tr.train(model, mse, (x, y), steps=2, batch_size=1000, generator=gen(), device="cpu")
    assert history[0] == pytest.approx(expected, rel=1e-6)        # the full batch, before any step


def test_single_tensor_data_is_passed_as_a_tensor():
    seen = []

    def loss(model, batch):
        seen.append(batch)
        return model(batch).square().mean()

    x = torch.randn(10, 1, generator=gen())
    tr.train(linear(), loss, x, steps=3, batch_size=4, generator=gen(), device="cpu")
    assert all(isinstance(b, torch.Tensor) and b.shape == (4, 1) for b in seen)


def test_minibatches_cover_each_epoch_without_repeats():
    seen = []

    def loss(model, batch):
        seen.append(batch[1].clone())
        return model(batch[0]).sum() * 0

    x = torch.zeros(12, 1)
    ids = torch.arange(12)
    tr.train(linear(), loss, (x, ids), steps=6, batch_size=4, generator=gen(), device="cpu")
    for epoch in (seen[:3], seen[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(12))


def test_deterministic_with_a_seeded_generator():
    base = linear()
    m1, m2, m3 = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    h1 = tr.train(m1, mse, line_data(), steps=20, lr=0.01, batch_size=32, generator=gen(7), device="cpu")
    h2 = tr.train(m2, mse, line_data(), steps=20, lr=0.01, batch_size=32, generator=gen(7), device="cpu")
    h3 = tr.train(m3, mse, line_data(), steps=20, lr=0.01, batch_size=32, generator=gen(8), device="cpu")
    assert h1 == h2
    assert torch.equal(m1.weight, m2.weight) and torch.equal(m1.bias, m2.bias)
    assert h1 != h3


def test_model_is_left_in_eval_mode():
    model = linear()
    tr.train(model, mse, line_data(), steps=1, device="cpu")
    assert not model.training


def test_lr_decay_cosine_anneals_to_zero():
    lrs = []
    model = linear()
    orig_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return orig_step(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        tr.train(model, mse, line_data(), steps=4, lr=0.1, lr_decay=True, device="cpu")
    expected = [0.05 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected)


def _grad_norms_at_step(**kwargs):
    norms = []
    orig_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([gr.norm() for gr in grads]))))
        return orig_step(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        tr.train(linear(), lambda m, b: 1e3 * mse(m, b), line_data(), steps=3, device="cpu", **kwargs)
    return norms


def test_grad_clip_bounds_the_gradient_norm_seen_by_the_optimiser():
    assert min(_grad_norms_at_step()) > 10                       # unclipped: large
    assert max(_grad_norms_at_step(grad_clip=0.5)) == pytest.approx(0.5, rel=1e-5)


def test_nan_loss_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match="NaN"):
        tr.train(linear(), lambda m, b: mse(m, b) * float("nan"), line_data(), steps=2, device="cpu")


# ------------------------------------------------------------------ progress

def test_progress_is_off_when_the_env_says_zero():
    bar = tr.progress(range(3))
    assert bar.disable
    assert list(bar) == [0, 1, 2]


def test_progress_explicit_flag_wins(monkeypatch):
    bar = tr.progress(range(3), enabled=True)
    try:
        assert not bar.disable
    finally:
        bar.close()
    monkeypatch.setenv("MLBOOK_PROGRESS", "1")
    assert tr.progress(range(3), enabled=False).disable


def test_training_prints_no_progress_bar(capsys):
    tr.train(linear(), mse, line_data(), steps=5, device="cpu")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"steps": 2.0}, TypeError, "steps must be an integer"),
    ({"steps": 5, "lr": 0.0}, ValueError, "lr must be > 0"),
    ({"steps": 5, "lr": -1e-3}, ValueError, "lr must be > 0"),
    ({"steps": 5, "batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"steps": 5, "weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
    ({"steps": 5, "grad_clip": 0.0}, ValueError, "grad_clip must be > 0"),
    ({"steps": 5, "device": "gpu0"}, ValueError, "not a device name"),
])
def test_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        tr.train(linear(), mse, line_data(), **kwargs)


def test_rejects_a_model_that_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        tr.train(lambda x: x, mse, line_data(), steps=1)


def test_rejects_a_loss_that_is_not_callable():
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        tr.train(linear(), "mse", line_data(), steps=1)


def test_rejects_a_loss_that_is_not_a_scalar():
    with pytest.raises(ValueError, match=r"scalar tensor, got shape \(64, 1\)"):
        tr.train(linear(), lambda m, b: (m(b[0]) - b[1]).square(), line_data(), steps=1, batch_size=64)


def test_rejects_tensors_of_different_lengths():
    x, y = line_data()
    with pytest.raises(ValueError, match=r"same number of rows, got \[256, 255\]"):
        tr.train(linear(), mse, (x, y[:-1]), steps=1)


@pytest.mark.parametrize("bad", [[torch.zeros(3, 1)], (), (torch.zeros(3, 1), [1, 2, 3])])
def test_rejects_data_that_is_not_tensors(bad):
    with pytest.raises(TypeError, match="data must be a tensor"):
        tr.train(linear(), mse, bad, steps=1)

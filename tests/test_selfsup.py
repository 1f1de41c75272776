"""Tests of mlbook.selfsup: views, losses, collapse measures, models, probes and the checker."""

import math

import pytest
import torch
import torch.nn.functional as F

from mlbook import selfsup


def images(n=12, seed=0):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- views

def test_shift_moves_a_single_pixel_by_at_most_max_shift():
    x = torch.zeros(200, 64)
    x[:, 3 * 8 + 4] = 1.0                                        # pixel (3, 4)
    out = selfsup.shift(x, 2, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.sum(1), torch.ones(200))           # stays inside the frame
    pos = out.argmax(1)
    rows, cols = pos // 8, pos % 8
    assert (rows - 3).abs().max() <= 2 and (cols - 4).abs().max() <= 2
    assert len(set(pos.tolist())) == 25                          # every offset occurs


def test_shift_zero_is_the_identity_and_bad_input_fails():
    x = images()
    assert torch.equal(selfsup.shift(x, 0), x)
    with pytest.raises(ValueError, match="last dimension 64"):
        selfsup.shift(torch.zeros(3, 63))
    with pytest.raises(ValueError, match="max_shift"):
        selfsup.shift(x, -1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        selfsup.shift(x.numpy())
    with pytest.raises(TypeError, match="generator"):
        selfsup.shift(x, 1, generator=3)


def test_mask_patches_hides_exactly_the_requested_squares():
    x = torch.ones(50, 64)
    out, mask = selfsup.mask_patches(x, 0.25, generator=torch.Generator().manual_seed(0),
                                     return_mask=True)
    assert torch.equal(mask.sum(1), torch.full((50,), 16))        # 4 squares of 4 pixels
    assert torch.equal(out == 0, mask)
    assert torch.equal(selfsup.mask_patches(x, 0.0), x)
    with pytest.raises(ValueError, match="fraction"):
        selfsup.mask_patches(x, 1.5)
    with pytest.raises(ValueError, match="patch must divide"):
        selfsup.mask_patches(x, 0.5, patch=3)


def test_noise_has_the_requested_spread_and_augment_keeps_shape():
    x = torch.zeros(2000, 64)
    noisy = selfsup.add_noise(x, 0.3, generator=torch.Generator().manual_seed(0))
    assert abs(float(noisy.std()) - 0.3) < 0.01
    assert selfsup.augment(images(), generator=torch.Generator().manual_seed(0)).shape == (12, 64)
    with pytest.raises(ValueError, match="std"):
        selfsup.add_noise(x, -0.1)


def test_digits_are_scaled_to_the_unit_interval():
    X, y = selfsup.digits("cpu")
    assert X.shape == (1797, 64) and float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert y.shape == (1797,)


# ---------------------------------------------------------------- losses and measures

def test_info_nce_known_values():
    same = torch.ones(7, 3)
    assert math.isclose(float(selfsup.info_nce_loss(same, same, 0.3)), math.log(7), rel_tol=1e-6)
    eye = torch.eye(5, dtype=torch.float64)
    closed = math.log(1 + 4 * math.exp(-1 / 0.2))
    assert math.isclose(float(selfsup.info_nce_loss(2 * eye, eye, 0.2)), closed, rel_tol=1e-9)


def test_info_nce_is_the_mean_of_two_cross_entropies():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.5
    one_sided = [-(logits.log_softmax(1).diagonal()).mean(), -(logits.log_softmax(0).diagonal()).mean()]
    assert torch.allclose(selfsup.info_nce_loss(z1, z2, 0.5), sum(one_sided) / 2, atol=1e-6)


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        selfsup.info_nce_loss(torch.ones(4, 3), torch.ones(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        selfsup.info_nce_loss(torch.ones(4, 3), torch.ones(4, 3), 0.0)
    with pytest.raises(TypeError, match="floating"):
        selfsup.info_nce_loss(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))


def test_gaussian_bound_stays_below_the_information_and_log_n():
    g = torch.Generator().manual_seed(0)
    info = 2.0
    rho = math.sqrt(1 - math.exp(-2 * info / 4))
    small = selfsup.gaussian_critic_bound(8, 4, rho, repeats=200, generator=g)
    large = selfsup.gaussian_critic_bound(512, 4, rho, repeats=4, generator=g)
    assert small < math.log(8) and small < large < info + 0.05
    assert large > info - 0.4
    assert abs(selfsup.gaussian_critic_bound(64, 4, 0.0, repeats=20, generator=g)) < 0.05
    with pytest.raises(ValueError, match="rho"):
        selfsup.gaussian_critic_bound(8, 4, 1.0)
    assert selfsup.mi_lower_bound(1.0, 256) == pytest.approx(math.log(256) - 1.0)


def test_alignment_uniformity_and_spread():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 16, generator=g)
    const = torch.ones(10, 16)
    assert float(selfsup.alignment(z, 3 * z)) < 1e-10
    assert float(selfsup.alignment(z[:, :1], -z[:, :1])) == pytest.approx(4.0)
    assert float(selfsup.uniformity(const)) == pytest.approx(0.0, abs=1e-6)
    assert float(selfsup.uniformity(z[:500])) < -3.0
    assert selfsup.embedding_std(z) == pytest.approx(0.25, abs=0.01)   # 1 / sqrt(16)
    assert selfsup.embedding_std(const) == 0.0
    assert selfsup.effective_rank(z) > 15.0
    line = torch.randn(100, 1, generator=g) * torch.arange(1.0, 17.0)
    assert selfsup.effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    assert selfsup.effective_rank(const) == 0.0


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("model", [selfsup.Contrastive(8, hidden=32), selfsup.SimSiam(8, hidden=32),
                                   selfsup.MaskedAutoencoder(8, hidden=32),
                                   selfsup.Autoencoder(8, hidden=32),
                                   selfsup.Autoencoder(8, linear=True)])
def test_models_give_a_scalar_loss_and_features(model):
    x = images(16)
    loss = model.loss(x, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.encode(x).shape == (16, 8)
    with pytest.raises(ValueError, match="last dimension 64"):
        model.encode(torch.zeros(2, 10))


def test_stop_gradient_blocks_the_target_branch_only():
    torch.manual_seed(0)
    with_sg = selfsup.SimSiam(4, hidden=16)
    without = selfsup.SimSiam(4, hidden=16, stop_gradient=False)
    without.load_state_dict(with_sg.state_dict())
    x = images(8)
    a = with_sg.loss(x, torch.Generator().manual_seed(1))
    b = without.loss(x, torch.Generator().manual_seed(1))
    assert torch.allclose(a, b)                                  # same value, different gradient
    a.backward()
    b.backward()
    ga = with_sg.encoder[0].weight.grad
    gb = without.encoder[0].weight.grad
    assert not torch.allclose(ga, gb)
    assert isinstance(selfsup.SimSiam(4, predictor=False).predictor, torch.nn.Identity)
    with pytest.raises(TypeError, match="True or False"):
        selfsup.SimSiam(4, stop_gradient=1)


def test_fit_lowers_the_reconstruction_error_and_monitor_records():
    x = images(64)
    model = selfsup.Autoencoder(4, hidden=32)
    monitor, records = selfsup.collapse_monitor(x, every=10)
    losses = selfsup.fit(model, x, steps=60, lr=1e-2, batch_size=32, device="cpu",
                         generator=torch.Generator().manual_seed(0), callback=monitor)
    assert losses[-1] < losses[0]
    assert [r[0] for r in records] == [10, 20, 30, 40, 50, 60]
    with pytest.raises(TypeError, match="loss"):
        selfsup.fit(torch.nn.Linear(64, 2), x, steps=1)
    with pytest.raises(ValueError, match="every"):
        selfsup.collapse_monitor(x, every=0)


def test_masked_autoencoder_counts_only_hidden_pixels():
    model = selfsup.MaskedAutoencoder(4, hidden=16)
    x = images(10)
    with torch.no_grad():                                          # a decoder that outputs 0
        for p in model.decoder.parameters():
            p.zero_()
    # its error is the mean square of the hidden pixels
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        loss = model.loss(x, g)
    _, mask = selfsup.mask_patches(x, 0.5, generator=torch.Generator().manual_seed(2),
                                   return_mask=True)
    assert float(loss) == pytest.approx(float(x[mask].square().mean()), rel=1e-5)
    with pytest.raises(ValueError, match="fraction"):
        selfsup.MaskedAutoencoder(4, fraction=1.0)


# ---------------------------------------------------------------- evaluation

def test_few_labels_picks_per_class():
    y = torch.arange(10).repeat(30)
    idx = selfsup.few_labels(y, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(y[idx]), torch.full((10,), 3))
    assert len(selfsup.few_labels(y, None)) == 300
    with pytest.raises(ValueError, match="fewer than per_class"):
        selfsup.few_labels(y, 31)


def test_probe_on_separable_features_and_bad_input():
    y = torch.arange(3).repeat(20)
    feats = F.one_hot(y, 3).double() + 0.01 * torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    for method in ["linear", "knn"]:
        assert selfsup.probe(feats, y, feats, y, method=method) == 1.0
    with pytest.raises(ValueError, match="method"):
        selfsup.probe(feats, y, feats, y, method="svm")
    with pytest.raises(ValueError, match="features"):
        selfsup.probe(feats, y, feats[:, :2], y)
    with pytest.raises(ValueError, match="one label per row"):
        selfsup.probe(feats, y[:10], feats, y)


# ---------------------------------------------------------------- the exercise

def test_checker_passes_the_library_and_fails_wrong_answers(capsys):
    assert selfsup.check_info_nce(selfsup.info_nce_loss)

    def one_sided(z1, z2, t):
        logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / t
        return F.cross_entropy(logits, torch.arange(len(z1)))

    def unnormalised(z1, z2, t):
        logits = z1 @ z2.T / t
        target = torch.arange(len(z1))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def missing(z1, z2, t):
        raise NotImplementedError

    assert not selfsup.check_info_nce(one_sided)
    assert "average the two directions" in capsys.readouterr().out
    assert not selfsup.check_info_nce(unnormalised)
    assert "normalise" in capsys.readouterr().out
    assert not selfsup.check_info_nce(missing)
    assert "not written yet" in capsys.readouterr().out


def test_supervised_baseline_fits_a_separable_set():
    y = torch.arange(3).repeat(10)
    x = torch.zeros(30, 64)
    x[torch.arange(30), 10 * y] = 1.0                               # one bright pixel per class
    net = selfsup.fit_supervised(x, y, dim=4, hidden=16, steps=100, lr=1e-2, device="cpu",
                                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x).argmax(1), y)
    with pytest.raises(ValueError, match="dimensions"):
        selfsup.fit_supervised(x, y[:, None])

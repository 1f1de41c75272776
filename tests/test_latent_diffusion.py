"""Tests for mlbook.latent_diffusion (page latent_diffusion)."""

import pytest
import torch
from sklearn.neural_network import MLPClassifier

from mlbook import diffusion, latent, nets, sampling
from mlbook import latent_diffusion as ld


def test_latent_scale_gives_unit_variance():
    z = 3.0 * torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) + 1.0
    c = ld.latent_scale(z)
    assert abs(float((c * z).flatten().std()) - 1.0) < 1e-5


@pytest.mark.parametrize("bad, err", [(torch.ones(5, 3), ValueError),
                                      (torch.zeros(1, 3), ValueError),
                                      (torch.ones(4, dtype=torch.long), ValueError),
                                      ([[1.0, 2.0]], TypeError)])
def test_latent_scale_bad_input(bad, err):
    with pytest.raises(err):
        ld.latent_scale(bad)


def test_latent_space_roundtrip_and_sampler():
    space = ld.LatentSpace(lambda x: 2 * x[:, :3], lambda z: torch.cat([z, z], 1) / 2, 3)
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
    space.fit(x)
    z = space.encode(x)
    assert abs(float(z.flatten().std()) - 1.0) < 1e-5
    assert torch.allclose(space.decode(z)[:, :3], x[:, :3], atol=1e-5)
    # the exact score of N(0, I) latents: the sampler must return unit-variance latents
    edm = diffusion.EDM(sigma_data=1.0)
    out = space.sample(sampling.sample_heun_edm, lambda v, t: -v / (1 + t[:, None] ** 2),
                       edm, edm.time_grid(30), 4000, generator=torch.Generator().manual_seed(2))
    assert out.shape == (4000, 6)
    assert abs(float((2 * out[:, :3]).std()) - 1.0 / space.scale) < 0.05 / space.scale


def test_latent_space_bad_input():
    with pytest.raises(TypeError):
        ld.LatentSpace("encoder", lambda z: z, 2)
    with pytest.raises(ValueError):
        ld.LatentSpace(lambda x: x, lambda z: z, 0)
    space = ld.LatentSpace(lambda x: x, lambda z: z, 3)
    with pytest.raises(ValueError, match="encoder must return"):
        space.encode(torch.ones(4, 5))
    with pytest.raises(ValueError):
        space.decode(torch.ones(4, 2))


def _model():
    torch.manual_seed(0)
    return ld.ConditionalEDMPrecond(nets.TimeMLP(3, 16, 2, n_classes=4), sigma_data=1.0)


def test_conditional_model_and_loss():
    model, edm = _model(), diffusion.EDM(sigma_data=1.0)
    x, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out = model(x, torch.full((8,), 0.5), y)
    assert out.shape == (8, 3)
    # the label changes the output; the null label 4 is accepted
    assert not torch.allclose(out, model(x, torch.full((8,), 0.5), (y + 1) % 4))
    model(x, 0.5, torch.full((8,), 4))
    loss = ld.conditional_edm_loss(model, edm, x, y, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    # at tiny sigma the denoiser returns its input: c_skip -> 1, c_out -> 0
    assert torch.allclose(model(x, 1e-6, y), x, atol=1e-5)
    score = ld.conditional_score(model)
    guided = sampling.cfg_score(score, y, 2.0, 4)
    t = torch.full((8,), 0.7)
    want = 3 * score(x, t, y) - 2 * score(x, t, torch.full_like(y, 4))
    assert torch.allclose(guided(x, t), want, atol=1e-5)


def test_conditional_bad_input():
    with pytest.raises(ValueError, match="conditional"):
        ld.ConditionalEDMPrecond(nets.TimeMLP(3, 8, 1))
    model, edm = _model(), diffusion.EDM()
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="one integer label"):
        ld.conditional_edm_loss(model, edm, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        ld.conditional_edm_loss(model, edm, x, torch.zeros(4))
    with pytest.raises(ValueError):
        ld.conditional_edm_loss(model, edm, x, torch.zeros(4, dtype=torch.long), p_uncond=1.5)
    with pytest.raises(TypeError):
        ld.conditional_edm_loss(model, diffusion.VP(), x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError):
        ld.conditional_score(nets.TimeMLP(3, 8, 1))


def test_frechet_distance():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    b = 2 * torch.randn(20000, 3, generator=gen, dtype=torch.float64) + 1
    # N(0, I) against N(1, 4 I) in 3 dims: 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert abs(ld.frechet_distance(a, b) - 6.0) < 0.15
    assert ld.frechet_distance(a, a) < 1e-8
    assert abs(ld.frechet_distance(a, b) - ld.frechet_distance(b, a)) < 1e-8
    with pytest.raises(ValueError):
        ld.frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError):
        ld.frechet_distance(a, torch.full((5, 3), float("nan"), dtype=torch.float64))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_classifier_features():
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(200, 5, generator=gen, dtype=torch.float64).numpy()
    y = (X[:, 0] > 0).astype(int)
    clf = MLPClassifier((7,), max_iter=300, random_state=0).fit(X, y)
    h = ld.classifier_features(clf, X)
    assert h.shape == (200, 7) and bool((h >= 0).all())
    logits = h @ torch.as_tensor(clf.coefs_[1]) + torch.as_tensor(clf.intercepts_[1])
    assert ((logits[:, 0] > 0).numpy().astype(int) == clf.predict(X)).all()
    with pytest.raises(TypeError):
        ld.classifier_features(object(), X)
    with pytest.raises(ValueError):
        ld.classifier_features(clf, X[:, :3])


def test_cross_attention():
    q = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    v = torch.tensor([[1.0], [2.0], [3.0]])
    out, w = ld.cross_attention(q, k, v)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert w[0].argmax() == 0 and w[1].argmax() == 1
    assert torch.allclose(out, w @ v)
    with pytest.raises(ValueError):
        ld.cross_attention(q, k, v[:2])
    with pytest.raises(ValueError):
        ld.cross_attention(q, k[:, :1], v)


def test_check_latent_scale():
    def right(z):
        return 1.0 / float(z.flatten().std())

    def per_coordinate(z):
        return 1.0 / z.std(0)

    def from_zero(z):
        return 1.0 / float(z.square().mean().sqrt())

    def the_std(z):
        return float(z.flatten().std())

    assert ld.check_latent_scale(right)
    assert ld.check_latent_scale(ld.latent_scale)
    for wrong in (per_coordinate, from_zero, the_std):
        assert not ld.check_latent_scale(wrong)


def test_vq_latent_space():
    torch.manual_seed(0)
    vq = latent.VQVAE(8, slots=2, code_dim=3, n_codes=5, hidden=16).eval()
    space = ld.vq_latent_space(vq)
    x = torch.rand(30, 8, generator=torch.Generator().manual_seed(0))
    space.fit(x)
    z = space.encode(x)
    assert z.shape == (30, 6)
    with torch.no_grad():
        want = vq.decode(vq.encode(x))
    assert torch.allclose(space.decode(z), want, atol=1e-6)   # decoding quantises
    with pytest.raises(TypeError):
        ld.vq_latent_space(nets.TimeMLP(2, 4, 1))

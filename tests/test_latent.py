"""mlbook.latent: the VAE, gradient estimators, Gumbel tricks and the vector quantiser."""

import math

import pytest
import torch

from mlbook import latent as L


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the VAE

def test_gaussian_kl_matches_torch_distributions():
    mean = torch.randn(5, 3, generator=gen(), dtype=torch.float64)
    log_var = torch.randn(5, 3, generator=gen(1), dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    want = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(L.gaussian_kl_to_standard(mean, log_var), want)


def test_gaussian_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        L.gaussian_kl_to_standard(torch.zeros(2, 3), torch.zeros(2, 4))


def test_vae_elbo_is_recon_minus_kl_and_below_the_importance_bound():
    torch.manual_seed(0)
    vae = L.VAE(6, 2, 16).double()
    x = (torch.rand(40, 6, generator=gen(), dtype=torch.float64) > 0.5).double()
    elbo, recon, kl = vae.elbo(x, generator=gen(1), return_terms=True)
    torch.testing.assert_close(elbo, recon - kl)
    assert elbo.shape == (40,) and bool((kl >= 0).all())
    with torch.no_grad():
        mean_elbo = torch.stack([vae.elbo(x, generator=gen(s)) for s in range(200)]).mean(0)
    bound = vae.log_likelihood_bound(x, 500, generator=gen(2))
    assert bool((bound >= mean_elbo - 1e-3).all())     # Jensen: the IW bound is tighter


def test_vae_importance_bound_is_exact_log_likelihood_on_a_tiny_model():
    # Brute force over all 2^3 binary x: p(x) = E_{z ~ N(0,1)} p(x | z) sums to one, and the
    # 2000-sample bound is within a few hundredths of log p(x) on every x.
    torch.manual_seed(0)
    vae = L.VAE(3, 1, 8).double()
    xs = torch.tensor([[(k >> i) & 1 for i in range(3)] for k in range(8)], dtype=torch.float64)
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        logits = vae.decode(z)                                            # (T, 3)
        log_px_z = torch.stack([vae.log_likelihood(x.expand(len(z), 3), logits) for x in xs])
        dens = log_px_z.exp() * torch.exp(-0.5 * z[:, 0] ** 2) / math.sqrt(2 * math.pi)
        px = torch.trapezoid(dens, z[:, 0], dim=1)
    assert abs(float(px.sum()) - 1) < 1e-6
    bound = vae.log_likelihood_bound(xs, 2000, generator=gen())
    assert float((px.log() - bound).max()) < 0.05 and float((bound - px.log()).max()) < 0.02


def test_vae_shapes_and_bad_input():
    vae = L.VAE(64, 4, 16)
    mean, log_var = vae.encode(torch.zeros(3, 64))
    assert mean.shape == log_var.shape == (3, 4)
    assert vae.decode(torch.zeros(3, 4)).shape == (3, 64)
    assert vae.sample(5, generator=gen()).shape == (5, 64)
    with pytest.raises(ValueError, match="last dimension 64"):
        vae.encode(torch.zeros(3, 63))
    with pytest.raises(ValueError, match="last dimension 4"):
        vae.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="likelihood"):
        L.VAE(likelihood="poisson")
    gauss = L.VAE(4, 2, 8, likelihood="gaussian", noise_std=0.5)
    x = torch.zeros(2, 4)
    out = torch.ones(2, 4)
    want = torch.distributions.Normal(out, 0.5).log_prob(x).sum(-1)
    torch.testing.assert_close(gauss.log_likelihood(x, out), want)


# ------------------------------------------------------------------ gradient estimators

def test_estimators_are_unbiased_with_the_derived_variances():
    mu, sigma, n = 0.7, 1.3, 200_000
    f = torch.square                                                       # grad: (2 mu, 2 sigma)
    exact = torch.tensor([2 * mu, 2 * sigma], dtype=torch.float64)
    var = L.gaussian_square_variances(mu, sigma)
    for kind, est in [("pathwise", L.pathwise_gradient(f, mu, sigma, n, generator=gen(1))),
                      ("score", L.score_function_gradient(f, mu, sigma, n, generator=gen(2))),
                      ("score + baseline", L.score_function_gradient(
                          f, mu, sigma, n, baseline=mu**2 + sigma**2, generator=gen(3)))]:
        se = est.std(0) / math.sqrt(n)
        assert bool(((est.mean(0) - exact).abs() < 4 * se).all()), kind
        assert abs(float(est[:, 0].var()) / var[kind] - 1) < 0.05, kind


def test_leave_one_out_baseline_is_unbiased_and_bad_baselines_fail():
    est = L.score_function_gradient(torch.square, 1.0, 1.0, 100_000, baseline="leave_one_out",
                                    generator=gen())
    assert abs(float(est[:, 0].mean()) - 2.0) < 4 * float(est[:, 0].std()) / math.sqrt(1e5)
    with pytest.raises(ValueError, match="baseline"):
        L.score_function_gradient(torch.square, 1.0, 1.0, 10, baseline="mean")
    with pytest.raises(ValueError, match="sigma"):
        L.pathwise_gradient(torch.square, 0.0, 0.0, 10)


# ------------------------------------------------------------------ discrete choices

def test_gumbel_max_frequencies_match_softmax():
    logits = torch.tensor([1.5, 0.5, 0.0, -1.0], dtype=torch.float64)
    idx = L.gumbel_max(logits.expand(100_000, -1), generator=gen())
    w = L.cohens_w(torch.bincount(idx, minlength=4), torch.softmax(logits, 0))
    assert w < 0.015                                     # sqrt(3 / 1e5) = 0.0055 expected


def test_argmax_probabilities_gumbel_is_softmax_and_normal_matches_monte_carlo():
    s = torch.tensor([1.0, 0.3, -0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(L.argmax_probabilities(s), torch.softmax(s, 0))
    p = L.argmax_probabilities(s, "normal")
    draws = (s + torch.randn(100_000, 4, generator=gen(), dtype=torch.float64)).argmax(1)
    assert L.cohens_w(torch.bincount(draws, minlength=4), p) < 0.015
    assert torch.equal(p.argsort(), s.argsort())         # same order as the scores
    with pytest.raises(ValueError, match="noise"):
        L.argmax_probabilities(s, "cauchy")


def test_gumbel_softmax_tends_to_one_hot_and_rejects_bad_temperature():
    logits = torch.zeros(1000, 5)
    y = L.gumbel_softmax(logits, 0.01, generator=gen())
    torch.testing.assert_close(y.sum(-1), torch.ones(1000))
    assert float(y.max(-1).values.mean()) > 0.99           # nearly one-hot, nearly always
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            L.gumbel_softmax(logits, bad)
    with pytest.raises(ValueError, match="temperature"):
        L.smooth_max(torch.zeros(3), 0.0)


def test_gumbel_softmax_matches_torch_relaxed_one_hot():
    logits = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    n, tau = 100_000, 0.5
    ours = L.gumbel_softmax(logits.expand(n, -1), tau, generator=gen())
    torch.manual_seed(0)
    theirs = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau), logits=logits)
    theirs = theirs.sample((n,))
    se = (ours.var(0) / n + theirs.var(0) / n).sqrt()
    assert bool(((ours.mean(0) - theirs.mean(0)).abs() < 4 * se).all())


def test_straight_through_value_is_hard_and_gradient_is_soft():
    logits = torch.tensor([[0.2, 1.0, -0.3]], requires_grad=True)
    soft = torch.softmax(logits, -1)
    y = L.straight_through(soft)
    assert torch.equal(y.detach(), torch.tensor([[0.0, 1.0, 0.0]]))
    c = torch.tensor([1.0, 2.0, 3.0])
    g_st = torch.autograd.grad((y * c).sum(), logits)[0]
    g_soft = torch.autograd.grad((torch.softmax(logits, -1) * c).sum(), logits)[0]
    torch.testing.assert_close(g_st, g_soft)


def test_categorical_estimators_reinforce_unbiased_straight_through_biased():
    logits = torch.tensor([0.5, -0.3, 0.1, -1.0], dtype=torch.float64)
    c = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    f = lambda y: torch.exp(y @ c)                                         # noqa: E731
    exact = L.exact_categorical_gradient(f, logits)
    n = 100_000
    for name, unbiased in [("reinforce", True), ("straight_through", False)]:
        est = L.categorical_gradient(f, logits, n, name, generator=gen())
        z = ((est.mean(0) - exact).abs() / (est.std(0) / math.sqrt(n))).max()
        assert (float(z) < 4) == unbiased, name
    with pytest.raises(ValueError, match="estimator"):
        L.categorical_gradient(f, logits, 10, "pathwise")
    with pytest.raises(ValueError, match="temperature"):
        L.categorical_gradient(f, logits, 10, "gumbel_softmax", temperature=0)


def test_logsumexp_bounds_and_smooth_max_gap():
    x = torch.randn(50, 7, generator=gen(), dtype=torch.float64)
    lo, hi = L.logsumexp_bounds(x)
    lse = torch.logsumexp(x, -1)
    assert bool((lo <= lse).all() and (lse <= hi + 1e-12).all())
    for tau in (2.0, 0.5, 0.1):
        gap = L.smooth_max(x, tau) - x.max(-1).values
        assert bool((gap >= 0).all() and (gap <= tau * math.log(7) + 1e-12).all())
    torch.testing.assert_close(L.logsumexp_bounds(torch.zeros(1, 4))[1], torch.full((1,), math.log(4)))


def test_cohens_w_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        L.cohens_w(torch.ones(3), torch.ones(4) / 4)
    with pytest.raises(ValueError, match="> 0"):
        L.cohens_w(torch.ones(2), torch.tensor([1.0, 0.0]))


def test_check_gumbel_max_passes_a_right_sampler_and_fails_wrong_ones():
    def right(logits, generator):
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype)
        return (logits - torch.log(-torch.log(u))).argmax(-1)

    def no_noise(logits, generator):
        return logits.argmax(-1)

    def gaussian_noise(logits, generator):
        return (logits + torch.randn(logits.shape, generator=generator,
                                     dtype=logits.dtype)).argmax(-1)

    def stub(logits, generator):
        raise NotImplementedError

    assert L.check_gumbel_max(right)
    for wrong in (no_noise, gaussian_noise, stub):
        assert not L.check_gumbel_max(wrong)


# ------------------------------------------------------------------ vector quantisation

def test_quantizer_picks_nearest_code_and_passes_gradients_straight_through():
    vq = L.VectorQuantizer(3, 2, ema=False)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    z_e = torch.tensor([[0.1, 0.2], [0.9, 1.4], [-1.5, 0.1]], requires_grad=True)
    z, codes, loss = vq(z_e)
    assert codes.tolist() == [0, 1, 2]
    torch.testing.assert_close(z.detach(), vq.codebook.detach()[codes])
    grad = torch.autograd.grad((z * torch.tensor([1.0, 2.0])).sum(), z_e)[0]
    torch.testing.assert_close(grad, torch.tensor([[1.0, 2.0]]).expand(3, -1))
    dist = (z_e - vq.codebook[codes]).square().sum(-1).mean()
    torch.testing.assert_close(loss, (1 + vq.beta) * dist)       # codebook + commitment


def test_ema_update_with_zero_decay_is_one_lloyd_step():
    x = torch.randn(200, 3, generator=gen(), dtype=torch.float64)
    vq = L.VectorQuantizer(4, 3, decay=0.0, generator=gen(1)).double()
    vq.init_from(x)
    start = vq.codebook.clone()
    codes = vq.quantize(x)
    vq.train()
    vq(x)
    want = torch.stack([x[codes == k].mean(0) for k in range(4)])
    torch.testing.assert_close(vq.codebook, want)
    assert not torch.equal(start, vq.codebook)


def test_dead_codes_are_restarted_at_encoder_outputs():
    x = torch.randn(64, 2, generator=gen(), dtype=torch.float64)
    vq = L.VectorQuantizer(8, 2, decay=0.5, dead_threshold=0.5, generator=gen(1)).double()
    with torch.no_grad():
        vq.codebook.fill_(100.0)
        vq.codebook[0] = 0.0
        vq.sums.copy_(vq.codebook)
    vq.train()
    for _ in range(3):
        vq(x)
    assert vq.restarts >= 7
    assert len(torch.unique(vq.quantize(x))) > 1


def test_quantizer_bad_input():
    with pytest.raises(ValueError, match="at least one code"):
        L.VectorQuantizer(0, 4)
    vq = L.VectorQuantizer(5, 4)
    with pytest.raises(ValueError, match="last dimension 4"):
        vq(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="0..4"):
        vq.lookup(torch.tensor([5]))
    with pytest.raises(TypeError, match="integer"):
        vq.lookup(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="decay"):
        L.VectorQuantizer(5, 4, decay=1.0)
    with pytest.raises(ValueError, match="empty"):
        L.perplexity(torch.tensor([], dtype=torch.long), 4)


def test_perplexity_counts_effective_codes():
    assert L.perplexity(torch.arange(8), 8) == pytest.approx(8.0)
    assert L.perplexity(torch.zeros(10, dtype=torch.long), 8) == pytest.approx(1.0)


def test_vqvae_shapes_bits_and_round_trip():
    model = L.VQVAE(64, slots=3, code_dim=2, n_codes=16, hidden=8, generator=gen())
    x = torch.rand(5, 64, generator=gen())
    model.eval()                                  # in training mode forward moves the codes
    codes = model.encode(x)
    assert codes.shape == (5, 3) and model.bits == 12.0
    recon, codes2, loss = model(x)
    torch.testing.assert_close(recon, model.decode(codes))
    assert torch.equal(codes, codes2) and loss.ndim == 0


def test_scalar_quantizer_is_lloyd_max():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 2.0)]).double()
    centres = L.scalar_quantizer(values, 2)
    torch.testing.assert_close(centres, torch.tensor([-1.0, 2.0], dtype=torch.float64))
    assert L.quantize_scalar(torch.tensor([0.4, 0.6], dtype=torch.float64),
                             centres).tolist() == [0, 1]

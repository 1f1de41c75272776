r"""Latent diffusion: a diffusion model trained on the scaled latents of an autoencoder
(page ``latent_diffusion``).

- The scale factor that gives the latents unit variance (:func:`latent_scale`, the page's
  equation ``ldm-scale``) and its checker for the reader (:func:`check_latent_scale`).
- :class:`LatentSpace`: encoder, decoder and scale in one object, so that the book's samplers
  (``mlbook.sampling``) run unchanged on latents and the result is decoded once at the end.
- A class-conditional EDM denoiser (:class:`ConditionalEDMPrecond`, equation ``edm-precond``
  with a label), its loss with label dropout (:func:`conditional_edm_loss`, the page's
  equation ``ldm-loss``) and its score (:func:`conditional_score`), which
  :func:`mlbook.sampling.cfg_score` turns into the guided score.
- Evaluation: the hidden features of a fitted scikit-learn ``MLPClassifier``
  (:func:`classifier_features`) and the Frechet distance between two clouds of features
  (:func:`frechet_distance`, the page's equation ``ldm-frechet``).
- Cross-attention, softmax(Q K^T / sqrt(d_k)) V (:func:`cross_attention`, equation
  ``ldm-cross-attention``), and the diagram of it drawn on the page
  (:func:`draw_cross_attention`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks
from . import sampling
from .diffusion import EDM, EDMPrecond, _col
from .exercises import Case, Verdict, check
from .latent import VAE, VQVAE
from .nets import TimeMLP
from .train import train

__all__ = ["latent_scale", "LatentSpace", "vq_latent_space", "fit_autoencoder", "fit_conditional_diffusion",
           "generate", "ConditionalEDMPrecond", "conditional_edm_loss",
           "conditional_score", "classifier_features", "frechet_distance", "cross_attention",
           "draw_cross_attention", "check_latent_scale"]


# ====================================================================== the latent space

def latent_scale(z: torch.Tensor) -> float:
    """c = 1 / std of all entries of the latents ``z`` (n, k), so that c z has unit variance.

    The page's equation ``ldm-scale``: one number for the whole latent, measured on encoded
    training data, as in Rombach et al.'s KL-regularised models.
    """
    _checks.tensor(z, "z", ndim=2, floating=True, min_rows=2)
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z must be finite")
    std = float(z.detach().double().flatten().std())
    if std <= 0:
        raise ValueError("z has zero variance: the scale 1 / std is undefined")
    return 1.0 / std


class LatentSpace:
    """An autoencoder seen from a diffusion model: z = c E(x) and x = D(z / c).

    ``encoder(x)`` maps data ``(n, d)`` to latents ``(n, k)`` (e.g. the mean of a VAE's
    q(z | x)); ``decoder(z)`` maps latents back to data. :meth:`fit` measures the scale c of
    equation ``ldm-scale`` on training data. :meth:`sample` runs any sampler of
    ``mlbook.sampling`` on latents exactly as it would on data, then decodes once.
    """

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor],
                 decoder: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 scale: float = 1.0):
        if not callable(encoder) or not callable(decoder):
            raise TypeError("encoder and decoder must be callables of a tensor")
        self.encoder, self.decoder = encoder, decoder
        self.dim = _checks.integer(dim, "dim", minimum=1)
        self.scale = _checks.real(scale, "scale", positive=True)

    def fit(self, x: torch.Tensor) -> "LatentSpace":
        """Set the scale c from the unscaled latents of training data ``x``; return self."""
        with torch.no_grad():
            self.scale = latent_scale(self._raw(x))
        return self

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        _checks.tensor(x, "x", ndim=2, floating=True)
        z = self.encoder(x)
        if z.ndim != 2 or z.shape != (x.shape[0], self.dim):
            raise ValueError(f"the encoder must return ({x.shape[0]}, {self.dim}), "
                             f"got {tuple(z.shape)}")
        return z

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents c E(x): ``(n, dim)``."""
        return self.scale * self._raw(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Data D(z / c) for scaled latents ``(n, dim)``."""
        _checks.tensor(z, "z", ndim=2, last_dim=self.dim, floating=True)
        return self.decoder(z / self.scale)

    @torch.no_grad()
    def sample(self, sampler, score, process, ts: torch.Tensor, n: int, *,
               generator: torch.Generator | None = None, device=None, **kwargs) -> torch.Tensor:
        """Draw ``n`` latents from the process's prior, run ``sampler(score, process, z, ts)``
        in the latent space, and decode: ``(n, d)`` data."""
        z = process.prior(n, self.dim, generator=generator, device=device)
        z = sampler(score, process, z.to(ts.dtype), ts, generator=generator, **kwargs)
        return self.decode(z.float())

    def __repr__(self) -> str:
        return f"LatentSpace(dim={self.dim}, scale={self.scale:.4g})"


def vq_latent_space(model: VQVAE) -> LatentSpace:
    """The VQ-regularised latent space of a trained :class:`mlbook.latent.VQVAE`, with the
    quantiser inside the decoder (the page's equation ``ldm-vq-ae`` and the paragraph after it):
    the diffusion model sees the continuous encoder output, flattened to
    ``slots * code_dim`` numbers, and decoding first snaps each slot to its nearest code.
    The scale is 1 until :meth:`LatentSpace.fit` is called."""
    if not isinstance(model, VQVAE):
        raise TypeError(f"model must be a VQVAE, got {type(model).__name__}")
    dim = model.slots * model.code_dim

    def encoder(x: torch.Tensor) -> torch.Tensor:
        return model.encode_continuous(x).reshape(len(x), dim)

    def decoder(z: torch.Tensor) -> torch.Tensor:
        slots = z.reshape(len(z), model.slots, model.code_dim)
        return model.decode(model.quantizer.quantize(slots))

    return LatentSpace(encoder, decoder, dim)


# ====================================================================== the conditional model

class ConditionalEDMPrecond(EDMPrecond):
    """D(x; sigma, y) = c_skip x + c_out F(c_in x, c_noise, y), equation ``edm-precond`` with a
    class label ``y`` passed to the network (e.g. a :class:`mlbook.nets.TimeMLP` built with
    ``n_classes``; label ``n_classes`` means "no label")."""

    def __init__(self, net: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__(net, sigma_data)
        n_classes = getattr(net, "n_classes", 0)
        if not n_classes:
            raise ValueError("net must be conditional: a module with n_classes > 0 "
                             "(e.g. TimeMLP(..., n_classes=10))")
        self.n_classes = int(n_classes)

    def forward(self, x: torch.Tensor, sigma, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        return _col(c_skip, x) * x + _col(c_out, x) * self.net(_col(c_in, x) * x, c_noise, y)


def conditional_edm_loss(model: ConditionalEDMPrecond, process: EDM, x0: torch.Tensor,
                         labels: torch.Tensor, *, p_uncond: float = 0.1,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """The EDM loss (equation ``edm-loss``) with label dropout (``guide-dropout``): the page's
    equation ``ldm-loss`` when ``x0`` holds scaled latents.

    Each label is replaced by the null label ``model.n_classes`` with probability
    ``p_uncond``, so that one network learns the conditional and the unconditional denoiser.
    """
    if not isinstance(model, ConditionalEDMPrecond):
        raise TypeError(f"model must be a ConditionalEDMPrecond, got {type(model).__name__}")
    if not isinstance(process, EDM):
        raise TypeError(f"process must be an EDM process, got {type(process).__name__}")
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=1)
    _checks.tensor(labels, "labels", ndim=1)
    if labels.shape[0] != x0.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must hold one integer label per row of x0 ({x0.shape[0]}), "
                         f"got shape {tuple(labels.shape)} and dtype {labels.dtype}")
    p_uncond = _checks.real(p_uncond, "p_uncond", nonnegative=True)
    if p_uncond > 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    sigma = process.sample_time(len(x0), generator=generator, device=x0.device).to(x0.dtype)
    x, _ = process.sample(x0, sigma, generator=generator)
    drop = (torch.rand(len(x0), generator=generator) < p_uncond).to(labels.device)
    y = torch.where(drop, torch.full_like(labels, model.n_classes), labels)
    _, c_out, _, _ = model.coefficients(sigma)
    return ((model(x, sigma, y) - x0).square().sum(1) / c_out**2).mean()


def conditional_score(model: ConditionalEDMPrecond):
    """score(x, sigma, y) = (D(x; sigma, y) - x) / sigma^2, equation ``edm-denoiser-score``,
    the form :func:`mlbook.sampling.cfg_score` guides."""
    if not isinstance(model, ConditionalEDMPrecond):
        raise TypeError(f"model must be a ConditionalEDMPrecond, got {type(model).__name__}")

    def score(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (model(x, t, y) - x) / _col(t, x) ** 2

    return score


# ====================================================================== training and sampling

def fit_autoencoder(X: torch.Tensor, latent_dim: int = 6, *, hidden: int = 128,
                    steps: int = 1500, noise_std: float = 0.1,
                    generator: torch.Generator | None = None, device=None) -> VAE:
    """A KL-regularised autoencoder (the page's equation ``ldm-kl-ae``): the Gaussian
    :class:`mlbook.latent.VAE` trained on data ``X`` (n, d) in [0, 1]; returned in eval mode.

    With a Gaussian decoder of fixed std ``noise_std`` the loss is
    |x - D(z)|^2 / (2 noise_std^2) + KL[q(z | x), N(0, I)], so the KL term weighs
    2 noise_std^2 against the squared reconstruction error.
    """
    _checks.tensor(X, "X", ndim=2, floating=True, min_rows=2)
    vae = VAE(X.shape[1], latent_dim, hidden, likelihood="gaussian", noise_std=noise_std)
    train(vae, lambda m, x: m.loss(x, generator=generator), X, steps=steps, lr=2e-3,
          batch_size=128, lr_decay=True, generator=generator, device=device,
          desc="autoencoder")
    return vae.eval()


def fit_conditional_diffusion(x0: torch.Tensor, labels: torch.Tensor, n_classes: int, *,
                              hidden: int = 256, layers: int = 3, steps: int = 1500,
                              p_uncond: float = 0.1, seed: int = 0,
                              generator: torch.Generator | None = None,
                              device=None) -> tuple[ConditionalEDMPrecond, EDM]:
    """Train a class-conditional EDM denoiser on ``x0`` (n, d) with the loss of
    :func:`conditional_edm_loss`; sigma_data is the data's standard deviation.

    ``seed`` fixes the network's initial weights. Returns the model (eval mode) and its
    EDM process.
    """
    _checks.tensor(x0, "x0", ndim=2, floating=True, min_rows=2)
    n_classes = _checks.integer(n_classes, "n_classes", minimum=1)
    sigma_data = float(x0.detach().flatten().std())
    torch.manual_seed(_checks.integer(seed, "seed", minimum=0))
    net = TimeMLP(x0.shape[1], hidden, layers, n_classes=n_classes)
    model = ConditionalEDMPrecond(net, sigma_data=sigma_data)
    process = EDM(sigma_data=sigma_data)
    train(model, lambda m, b: conditional_edm_loss(m, process, b[0], b[1], p_uncond=p_uncond,
                                                   generator=generator),
          (x0, labels), steps=steps, lr=2e-3, batch_size=256, lr_decay=True,
          generator=generator, device=device, desc="diffusion")
    return model.eval(), process


@torch.no_grad()
def generate(model: ConditionalEDMPrecond, process: EDM, labels: torch.Tensor, *,
             guidance: float = 0.0, n_steps: int = 18, space: LatentSpace | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample per label by the Heun sampler (equation ``edm-heun``) with classifier-free
    guidance of scale ``guidance`` (equation ``guide-cfg``). With a :class:`LatentSpace` the
    sampler runs on latents and the result is decoded; without, it runs on the data."""
    _checks.tensor(labels, "labels", ndim=1, min_rows=1)
    dev = next(model.parameters()).device
    labels = labels.to(dev)
    score = sampling.cfg_score(conditional_score(model), labels, guidance, model.n_classes)
    ts = process.time_grid(n_steps, device=dev).float()
    if space is not None:
        return space.sample(sampling.sample_heun_edm, score, process, ts, len(labels),
                            generator=generator, device=dev)
    x = process.prior(len(labels), model.net.dim, generator=generator, device=dev)
    return sampling.sample_heun_edm(score, process, x.float(), ts)


# ====================================================================== evaluation

def classifier_features(clf, X) -> torch.Tensor:
    """The last hidden layer of a fitted scikit-learn ``MLPClassifier`` at the rows of ``X``:
    ``(n, width)`` float64, the feature space in which :func:`frechet_distance` is measured."""
    if not hasattr(clf, "coefs_") or not hasattr(clf, "intercepts_"):
        raise TypeError("clf must be a fitted sklearn.neural_network.MLPClassifier")
    if len(clf.coefs_) < 2:
        raise ValueError("clf has no hidden layer")
    acts = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid,
            "identity": lambda h: h}
    if clf.activation not in acts:
        raise ValueError(f"unknown activation {clf.activation!r}")
    h = torch.as_tensor(X, dtype=torch.float64).cpu()
    _checks.tensor(h, "X", ndim=2, last_dim=clf.coefs_[0].shape[0])
    for w, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        h = acts[clf.activation](h @ torch.as_tensor(w, dtype=torch.float64)
                                 + torch.as_tensor(b, dtype=torch.float64))
    return h


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""Squared Frechet distance between Gaussians fitted to the rows of ``a`` and ``b``,
    |m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2}), the page's equation
    ``ldm-frechet`` (the squared 2-Wasserstein distance between the two Gaussians)."""
    _checks.tensor(a, "a", ndim=2, min_rows=2)
    _checks.tensor(b, "b", ndim=2, last_dim=a.shape[1], min_rows=2)
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise ValueError("a and b must be finite")
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(a.shape[1], -1)
    s = _psd_sqrt(ca)
    cross = torch.linalg.eigvalsh(s @ cb @ s).clamp_min(0).sqrt().sum()
    return float((ma - mb).square().sum() + ca.trace() + cb.trace() - 2 * cross)


# ====================================================================== cross-attention

def cross_attention(queries: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d_k)) V, equation ``ldm-cross-attention``.

    ``queries`` (m, d_k) come from the m positions of the image features, ``keys`` (l, d_k) and
    ``values`` (l, d_v) from the l tokens of the condition. Returns the output (m, d_v) and
    the attention weights (m, l), whose rows sum to one.
    """
    _checks.tensor(queries, "queries", ndim=2, floating=True, min_rows=1)
    _checks.tensor(keys, "keys", ndim=2, last_dim=queries.shape[1], floating=True, min_rows=1)
    _checks.tensor(values, "values", ndim=2, floating=True, min_rows=1)
    if values.shape[0] != keys.shape[0]:
        raise ValueError(f"keys and values need one row per token, got {keys.shape[0]} and "
                         f"{values.shape[0]}")
    weights = torch.softmax(queries @ keys.T / math.sqrt(queries.shape[1]), dim=1)
    return weights @ values, weights


def draw_cross_attention(fig, weights: torch.Tensor, tokens: list[str]) -> None:
    """The page's diagram: image positions (queries) on the left, condition tokens (keys and
    values) on top, and the attention weights ``(m, len(tokens))`` between them."""
    _checks.tensor(weights, "weights", ndim=2, last_dim=len(tokens))
    m = weights.shape[0]
    ax = fig.subplots()
    ax.set(xlim=(-3.0, len(tokens) + 3.2), xticks=[], yticks=[])
    ax.axis("off")
    w = weights.detach().cpu().numpy()
    ax.imshow(w, cmap="Blues", vmin=0, vmax=1, extent=(0, len(tokens), m, 0), zorder=1,
              aspect="auto")
    ax.set_ylim(m + 0.2, -2.0)
    for i in range(m):
        ax.text(-0.3, i + 0.5, f"position {i + 1}", ha="right", va="center", fontsize=8)
        for j in range(len(tokens)):
            ax.text(j + 0.5, i + 0.5, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if w[i, j] > 0.55 else "black")
    for j, tok in enumerate(tokens):
        ax.text(j + 0.5, -0.2, tok, ha="center", va="bottom", fontsize=8)
    ax.text(len(tokens) / 2, -1.0, r"condition tokens $\tau(y)$: keys $K$, values $V$",
            ha="center", va="bottom", fontsize=9)
    ax.text(-0.3, -0.2, "image positions\n" r"(queries $Q$ from $\varphi(z_t)$)",
            ha="right", va="bottom", fontsize=8)
    ax.text(len(tokens) + 0.2, m / 2, "each row sums to one:\nthe weights with which\n"
            "that position mixes\nthe values $V$", ha="left", va="center", fontsize=8)


# ====================================================================== exercise

def check_latent_scale(fn: Callable[[torch.Tensor], float]) -> Verdict:
    """Checker for the reader's scale factor ``fn(z) -> float`` (equation ``ldm-scale``).

    Cases: latents with a known standard deviation over all entries (3.0, and 0.05); latents
    whose coordinates have different spreads (one number for all of them, not one per
    coordinate); latents with a non-zero mean (the std is taken around the mean); and that
    ``fn(z) * z`` then has unit variance.
    """
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(4000, 6, generator=gen, dtype=torch.float64)
    base = (base - base.mean()) / base.flatten().std()          # std exactly 1
    uneven = base * torch.tensor([0.2, 0.5, 1.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    shifted = 0.5 * base + 4.0

    def close(value, want):
        return isinstance(value, (float, int, torch.Tensor)) and \
            abs(float(value) - want) < 1e-6 * max(1.0, want)

    cases = [
        Case("latents with standard deviation 3", (3.0 * base,), lambda c: close(c, 1 / 3),
             "return one number c, the reciprocal of the latents' standard deviation."),
        Case("latents with standard deviation 0.05", (0.05 * base,), lambda c: close(c, 20.0),
             "c multiplies the latents: small latents need a large c."),
        Case("coordinates with different spreads", (uneven,),
             lambda c: close(c, 1 / float(uneven.flatten().std())),
             "take the standard deviation over all entries at once, not per coordinate."),
        Case("latents with mean 4 and standard deviation 0.5", (shifted,),
             lambda c: close(c, 2.0),
             "the standard deviation is measured around the mean, not from zero."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "your scale factor"))

"""Chapter "Self-supervised learning": views of 8x8 digits, contrastive and non-contrastive losses,
masked prediction, and the frozen-feature evaluation practitioners use.

Images are rows of 64 pixels in [0, 1] (scikit-learn's digits divided by 16), read as 8x8 in
row-major order. Random draws are made on the CPU from the ``generator`` passed in and moved to
the data's device, so a seeded run gives the same views on every device. Equation names refer to
the page ``book/self_supervised.md``.

- :func:`shift`, :func:`add_noise`, :func:`mask_patches`, :func:`augment`: the views.
- :func:`info_nce_loss`: the InfoNCE loss of two batches of views (equation ``ssl-infonce``);
  :func:`mi_lower_bound` reads the bound log N - L off it (``ssl-mi-bound``).
- :func:`alignment`, :func:`uniformity`: Wang and Isola's two terms (``ssl-align-unif``).
- :func:`embedding_std`, :func:`effective_rank`: how collapsed a set of embeddings is.
- :class:`Contrastive`, :class:`SimSiam`, :class:`MaskedAutoencoder`, :class:`Autoencoder`: the
  models, each with a ``loss(x, generator)`` and an ``encode(x)`` giving frozen features; the
  ``fit_*`` functions train them with the book's training loop.
- :func:`few_labels`, :func:`probe`: linear probe and k-nearest neighbours on frozen features
  with a given number of labels per class (scikit-learn's estimators).
- :func:`check_info_nce`: checker of the coding exercise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, nets
from .device import get_device
from .exercises import Case, Verdict, check
from .train import train

__all__ = ["SIDE", "digits", "shift", "add_noise", "mask_patches", "augment", "info_nce_loss",
           "mi_lower_bound", "gaussian_critic_bound", "alignment", "uniformity",
           "embedding_std", "effective_rank", "Contrastive", "SimSiam", "MaskedAutoencoder",
           "Autoencoder", "fit", "collapse_monitor", "few_labels", "probe", "fit_supervised", "check_info_nce"]

SIDE = 8                                                    # the digits are 8 x 8 pixels


def _images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    _checks.tensor(x, name, ndim=2, last_dim=SIDE * SIDE, floating=True)
    return x


def _generator(generator) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def digits(device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits as ``(X (1797, 64) in [0, 1], y (1797,))`` on ``device``."""
    from .data import load_dataset

    data = load_dataset("digits", device=device)
    return data.X / 16.0, data.y


# --------------------------------------------------------------------------- views

def shift(x: torch.Tensor, max_shift: int = 1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random whole-pixel offset in ``[-max_shift, max_shift]``
    along each axis; pixels moved in from outside are zero. ``x`` ``(n, 64)`` -> ``(n, 64)``."""
    x = _images(x)
    s = _checks.integer(max_shift, "max_shift", minimum=0)
    if s == 0:
        return x.clone()
    n = len(x)
    padded = F.pad(x.view(n, SIDE, SIDE), (s, s, s, s))                  # (n, 8+2s, 8+2s)
    off = torch.randint(0, 2 * s + 1, (n, 2), generator=_generator(generator)).to(x.device)
    grid = torch.arange(SIDE, device=x.device)
    rows = (off[:, 0, None] + grid)[:, :, None]                         # (n, 8, 1)
    cols = (off[:, 1, None] + grid)[:, None, :]                         # (n, 1, 8)
    out = padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]  # (n, 8, 8)
    return out.reshape(n, SIDE * SIDE)


def add_noise(x: torch.Tensor, std: float = 0.1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add independent Gaussian noise of standard deviation ``std`` to every pixel."""
    x = _images(x)
    std = _checks.real(std, "std", nonnegative=True)
    noise = torch.randn(x.shape, generator=_generator(generator), dtype=x.dtype).to(x.device)
    return x + std * noise


def mask_patches(x: torch.Tensor, fraction: float = 0.25, *, patch: int = 2,
                 generator: torch.Generator | None = None, return_mask: bool = False):
    """Set a random ``fraction`` of the ``patch x patch`` squares of each image to zero.

    Exactly ``round(fraction * (8 / patch)^2)`` squares per image are hidden. With
    ``return_mask=True`` also returns the ``(n, 64)`` boolean mask of hidden pixels.
    """
    x = _images(x)
    fraction = _checks.real(fraction, "fraction")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    patch = _checks.integer(patch, "patch", minimum=1)
    if SIDE % patch:
        raise ValueError(f"patch must divide {SIDE}, got {patch}")
    per_side = SIDE // patch
    n, n_patches = len(x), per_side * per_side
    k = round(fraction * n_patches)
    scores = torch.rand(n, n_patches, generator=_generator(generator))
    hidden = torch.zeros(n, n_patches, dtype=torch.bool)
    hidden.scatter_(1, scores.argsort(1)[:, :k], True)                  # k random squares each
    grid = hidden.view(n, per_side, per_side)
    pixels = grid.repeat_interleave(patch, 1).repeat_interleave(patch, 2)  # (n, 8, 8)
    mask = pixels.reshape(n, SIDE * SIDE).to(x.device)
    out = x.masked_fill(mask, 0.0)
    return (out, mask) if return_mask else out


def augment(x: torch.Tensor, *, max_shift: int = 1, noise: float = 0.1, mask: float = 0.25,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each image: shift, then hide patches, then add noise."""
    x = shift(x, max_shift, generator=generator)
    x = mask_patches(x, mask, generator=generator)
    return add_noise(x, noise, generator=generator)


# --------------------------------------------------------------------------- losses and measures

def _pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    _checks.tensor(z1, "z1", ndim=2, floating=True, min_rows=1)
    _checks.tensor(z2, "z2", ndim=2, floating=True, min_rows=1)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape (row i of each is a view of the "
                         f"same image), got {tuple(z1.shape)} and {tuple(z2.shape)}")


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The InfoNCE loss of N pairs of views, equation ``ssl-infonce`` (symmetrised, ``ssl-infonce-sym``).

    Rows are normalised to unit length; the logits are the cosine similarities divided by the
    ``temperature`` T. Row i of ``z1`` must pick row i of ``z2`` among all N rows (the other N - 1
    are its counter-examples), and the other way round; the loss is the mean of the two
    cross-entropies. Equal to log N when every embedding is the same.
    """
    _pair(z1, z2)
    t = _checks.real(temperature, "temperature", positive=True)
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = a @ b.T / t                                                # (N, N)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def mi_lower_bound(loss: float, n: int) -> float:
    """The bound I >= log N - L of equation ``ssl-mi-bound``, from a loss measured with N candidates."""
    n = _checks.integer(n, "n", minimum=1)
    return math.log(n) - _checks.real(loss, "loss")


def gaussian_critic_bound(n: int, dim: int, rho: float, *, repeats: int = 1,
                          generator: torch.Generator | None = None) -> float:
    """log N - L for correlated Gaussians with the optimal critic (the page's bound figure).

    x ~ N(0, I_dim), x' = rho x + sqrt(1 - rho^2) e: I(x; x') = -dim/2 log(1 - rho^2). The critic is
    the log density ratio log p(x'|x)/p(x') (equation ``ssl-critic-opt``), the candidates for
    x_i are the N second views of a batch. Averages the one-sided loss over ``repeats`` batches.
    """
    n = _checks.integer(n, "n", minimum=1)
    dim = _checks.integer(dim, "dim", minimum=1)
    rho = _checks.real(rho, "rho")
    if not 0 <= rho < 1:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    repeats = _checks.integer(repeats, "repeats", minimum=1)
    var = 1 - rho**2
    total = 0.0
    for _ in range(repeats):
        x = torch.randn(n, dim, generator=_generator(generator), dtype=torch.float64)
        xp = rho * x + math.sqrt(var) * torch.randn(n, dim, generator=generator, dtype=torch.float64)
        sq = torch.cdist(rho * x, xp).square()                              # (N, N): |x'_j - rho x_i|^2
        critic = -sq / (2 * var) + 0.5 * xp.square().sum(1)[None, :] - 0.5 * dim * math.log(var)
        total += float(F.cross_entropy(critic, torch.arange(n)))
    return math.log(n) - total / repeats


def alignment(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the normalised embeddings of positive pairs (``ssl-align``)."""
    _pair(z1, z2)
    return (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).square().sum(1).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log of the mean of exp(-t |z_i - z_j|^2) over pairs i != j of normalised embeddings (``ssl-unif``).

    0 when all embeddings coincide; the more evenly they cover the sphere, the more negative.
    """
    _checks.tensor(z, "z", ndim=2, floating=True, min_rows=2)
    t = _checks.real(t, "t", positive=True)
    u = F.normalize(z, dim=1)
    sq = torch.pdist(u).square()                                            # (N (N - 1) / 2,)
    return torch.logsumexp(-t * sq, 0) - math.log(len(sq))


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the standard deviation of the normalised embeddings.

    SimSiam's collapse measure: about 1/sqrt(m) for m-dimensional embeddings spread over the
    sphere, 0 when every input maps to the same point.
    """
    _checks.tensor(z, "z", ndim=2, floating=True, min_rows=2)
    return float(F.normalize(z, dim=1).std(0).mean())


def effective_rank(z: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of the centred embeddings (Roy and
    Vetterli's effective rank): m for isotropic embeddings, 1 when they lie on a line."""
    _checks.tensor(z, "z", ndim=2, floating=True, min_rows=2)
    s = torch.linalg.svdvals((z - z.mean(0)).double())
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# --------------------------------------------------------------------------- models

def _views(x: torch.Tensor, views: dict, generator) -> tuple[torch.Tensor, torch.Tensor]:
    return augment(x, generator=generator, **views), augment(x, generator=generator, **views)


class Contrastive(nn.Module):
    """An encoder f (64 -> ``dim``) and a projection head g (-> ``out``, default ``dim``)
    trained with InfoNCE on two views.

    ``encode`` gives the representation f(x) used downstream; the loss sees g(f(x)).
    """

    def __init__(self, dim: int = 16, hidden: int = 256, temperature: float = 0.5,
                 views: dict | None = None, out: int | None = None):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        out = self.dim if out is None else _checks.integer(out, "out", minimum=1)
        self.temperature = _checks.real(temperature, "temperature", positive=True)
        self.views = dict(views or {})
        self.encoder = nets.mlp(SIDE * SIDE, hidden, self.dim)
        self.head = nets.mlp(self.dim, hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(_images(x))

    def loss(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        v1, v2 = _views(x, self.views, generator)
        return info_nce_loss(self(v1), self(v2), self.temperature)


class SimSiam(nn.Module):
    """SimSiam: encoder and projector (with batch normalisation), predictor h, and the loss
    -cos(h(z1), sg(z2))/2 - cos(h(z2), sg(z1))/2 of equation ``ssl-simsiam``.

    ``stop_gradient=False`` lets the gradient flow through both branches; ``predictor=False``
    replaces h by the identity. Either switch removes what keeps the embeddings from collapsing.
    """

    def __init__(self, dim: int = 16, hidden: int = 256, *, stop_gradient: bool = True,
                 predictor: bool = True, views: dict | None = None):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        if not isinstance(stop_gradient, bool) or not isinstance(predictor, bool):
            raise TypeError("stop_gradient and predictor must be True or False")
        self.stop_gradient, self.use_predictor = stop_gradient, predictor
        self.views = dict(views or {})
        self.encoder = nets.mlp(SIDE * SIDE, hidden, self.dim)
        self.projector = nn.Sequential(nn.Linear(self.dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                       nn.Linear(hidden, self.dim))
        self.predictor = nn.Sequential(nn.Linear(self.dim, hidden // 4), nn.BatchNorm1d(hidden // 4),
                                       nn.ReLU(), nn.Linear(hidden // 4, self.dim)) if predictor \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))                             # z, (n, dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(_images(x))

    def loss(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        v1, v2 = _views(x, self.views, generator)
        z1, z2 = self(v1), self(v2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = (z1.detach(), z2.detach()) if self.stop_gradient else (z1, z2)
        return -0.5 * (F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean())


class MaskedAutoencoder(nn.Module):
    """Masked prediction: hide a ``fraction`` of the 2x2 patches, encode what is left (with the
    mask as extra inputs), and predict the hidden pixels; the squared error counts only the
    hidden pixels (equation ``ssl-mae``). ``encode`` sees the whole image with an empty mask."""

    def __init__(self, dim: int = 16, hidden: int = 256, fraction: float = 0.5):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        self.fraction = _checks.real(fraction, "fraction")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        self.encoder = nets.mlp(2 * SIDE * SIDE, hidden, self.dim)
        self.decoder = nets.mlp(self.dim, hidden, SIDE * SIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = _images(x)
        return self.encoder(torch.cat([x, torch.zeros_like(x)], 1))

    def loss(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        seen, mask = mask_patches(x, self.fraction, generator=generator, return_mask=True)
        m = mask.to(x.dtype)
        guess = self.decoder(self.encoder(torch.cat([seen, m], 1)))        # (n, 64)
        return ((guess - x).square() * m).sum() / m.sum().clamp_min(1.0)


class Autoencoder(nn.Module):
    """x -> code (``dim``) -> reconstruction, trained on the squared error (equation ``ssl-ae``).

    ``linear=True`` uses one linear map each way: its best reconstruction error is PCA's
    (the unsupervised chapter, equation ``pca-error``).
    """

    def __init__(self, dim: int = 16, hidden: int = 256, *, linear: bool = False):
        super().__init__()
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        d = SIDE * SIDE
        if linear:
            self.encoder, self.decoder = nn.Linear(d, self.dim), nn.Linear(self.dim, d)
        else:
            self.encoder, self.decoder = nets.mlp(d, hidden, self.dim), nets.mlp(self.dim, hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(_images(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))

    def loss(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return (self.reconstruct(x) - x).square().sum(1).mean()


def fit(model: nn.Module, X: torch.Tensor, *, steps: int = 400, lr: float = 1e-3,
        batch_size: int = 256, lr_decay: bool = False, generator: torch.Generator | None = None,
        device=None, callback: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Train any of the models above on unlabelled images ``X`` with the book's training loop.

    The views are drawn from ``generator`` (on the CPU); ``lr_decay`` decays the learning rate
    to zero along a cosine; returns the loss per step.
    """
    if not hasattr(model, "loss"):
        raise TypeError(f"model must have a loss(x, generator) method, got {type(model).__name__}")
    X = _images(X, "X")
    gen = _generator(generator)
    return train(model, lambda net, x: model.loss(x, gen), X, steps=steps, lr=lr,
                 batch_size=batch_size, lr_decay=lr_decay, generator=gen, device=device,
                 show_progress=False, callback=callback, distributed=False)


def collapse_monitor(X: torch.Tensor, every: int = 50) -> tuple[Callable, list]:
    """A ``callback`` for :func:`fit` and the list it fills: every ``every`` steps, the step,
    :func:`embedding_std` and :func:`effective_rank` of ``model(X)`` (the model in eval mode)."""
    X = _images(X, "X")
    every = _checks.integer(every, "every", minimum=1)
    records: list[tuple[int, float, float]] = []

    def callback(step: int, model: nn.Module) -> None:
        if step % every:
            return
        model.eval()
        with torch.no_grad():
            z = model(X.to(next(model.parameters()).device))
        model.train()
        records.append((step, embedding_std(z), effective_rank(z)))

    return callback, records


# --------------------------------------------------------------------------- evaluation

def few_labels(y: torch.Tensor, per_class: int | None, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``per_class`` random examples of every class in ``y`` (all indices if None)."""
    _checks.tensor(y, "y", ndim=1)
    if per_class is None:
        return torch.arange(len(y))
    per_class = _checks.integer(per_class, "per_class", minimum=1)
    y = y.cpu()
    picks = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {int(c)} has only {len(idx)} examples, fewer than per_class={per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=_generator(generator))[:per_class]])
    return torch.cat(picks)


def probe(train_features, y_train, test_features, y_test, *, method: str = "linear",
          n_neighbors: int = 5) -> float:
    """Test accuracy of a classifier fitted on frozen features: scikit-learn's
    ``LogisticRegression`` (``method="linear"``, the linear probe) on standardised features, or
    ``KNeighborsClassifier`` (``method="knn"``, cosine distance, ``min(n_neighbors, per-class
    count)`` neighbours) on the features as they are."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _checks.choice(method, "method", ("linear", "knn"))
    a = _checks.features(train_features, "train_features").cpu().numpy()
    b = _checks.features(test_features, "test_features", n_features=a.shape[1]).cpu().numpy()
    ya, yb = np.asarray(torch.as_tensor(y_train).cpu()), np.asarray(torch.as_tensor(y_test).cpu())
    if len(ya) != len(a) or len(yb) != len(b):
        raise ValueError("each feature matrix needs one label per row")
    if method == "linear":
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    else:
        k = min(_checks.integer(n_neighbors, "n_neighbors", minimum=1), int(np.bincount(ya).min()))
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    return float(clf.fit(a, ya).score(b, yb))


def fit_supervised(X: torch.Tensor, y: torch.Tensor, *, dim: int = 16, hidden: int = 256,
                   steps: int = 300, lr: float = 1e-3, weight_decay: float = 1e-2,
                   generator: torch.Generator | None = None, device=None) -> nn.Sequential:
    """The supervised baseline: the encoder's architecture plus a linear layer to the classes,
    trained with cross-entropy on the labelled rows only. Returns the network (logits)."""
    X = _images(X, "X")
    _checks.tensor(y, "y", ndim=1)
    net = nn.Sequential(nets.mlp(SIDE * SIDE, hidden, dim), nn.ReLU(), nn.Linear(dim, int(y.max()) + 1))
    train(net, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (X, y), steps=steps, lr=lr,
          weight_decay=weight_decay, batch_size=256, generator=_generator(generator), device=device,
          show_progress=False, distributed=False)
    return net


# --------------------------------------------------------------------------- the exercise

def check_info_nce(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> Verdict:
    """Checker for the reader's InfoNCE loss ``fn(z1, z2, temperature)`` (equation ``ssl-infonce-sym``).

    Cases: a scalar comes back; N identical embeddings give log N; N orthonormal pairs give the
    closed form log(1 + (N - 1) e^{-1/T}); rows are normalised (scaling a row changes nothing);
    and random batches agree with :func:`info_nce_loss` to 1e-6, including unequal rows, where
    a one-sided loss differs from the symmetric one.
    """
    gen = torch.Generator().manual_seed(11)
    same = torch.ones(6, 4, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    t = 0.2
    closed = math.log(1 + 4 * math.exp(-1 / t))
    cases = [
        Case("a batch of 6 pairs in 4 dimensions", (same, same, 0.5),
             lambda v: isinstance(v, torch.Tensor) and v.ndim == 0,
             "return one number, the mean over the batch, as a 0-dimensional tensor."),
        Case("6 identical embeddings", (same, same, 0.5),
             lambda v: abs(float(v) - math.log(6)) < 1e-6,
             "when every candidate scores the same, each is picked with probability 1/N."),
        Case("5 orthonormal pairs at T = 0.2", (eye, eye, t),
             lambda v: abs(float(v) - closed) < 1e-6,
             "the logits are cosine similarities divided by T; the positive scores 1/T, "
             "the others 0."),
        Case("the same pairs with rows scaled by 3", (3 * eye, eye, t),
             lambda v: abs(float(v) - closed) < 1e-6,
             "normalise every row to unit length before taking dot products."),
    ]
    for n, m, temp in [(8, 3, 0.5), (32, 16, 0.1), (64, 2, 1.0)]:
        z1 = torch.randn(n, m, generator=gen, dtype=torch.float64)
        z2 = z1 + torch.randn(n, m, generator=gen, dtype=torch.float64)
        want = float(info_nce_loss(z1, z2, temp))
        cases.append(Case(f"random batch N = {n}, dimension {m}, T = {temp}", (z1, z2, temp),
                          lambda v, want=want: abs(float(v) - want) < 1e-6,
                          "average the two directions: rows of z1 pick among z2, and rows of "
                          "z2 among z1."))
    return check(fn, cases, name=getattr(fn, "__name__", "your loss"))

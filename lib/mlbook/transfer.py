"""Chapter "Domain adaptation and transfer": shifted digits, importance weights, fine-tuning, DANN, attributes.

Every function names the equation of ``book/domain_adaptation.md`` it implements. The data are
scikit-learn's 8x8 digits scaled to [0, 1] (:func:`digits`) and transformations of them
(:func:`rotate`, :func:`thicken`, :func:`add_noise`), so nothing is downloaded. Rows are flat
64-vectors throughout; the transformations reshape to ``(n, 1, 8, 8)`` images internally.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import _checks, nets
from .data import load_dataset
from .device import get_device
from .exercises import Case, Verdict, check
from .train import train

__all__ = [
    "digits", "rotate", "thicken", "add_noise", "mix_domains",
    "accuracy", "fit_classifier",
    "DomainClassifier", "importance_weights", "effective_sample_size", "weighted_mean",
    "proxy_a_distance", "check_importance_weights",
    "FINETUNE_MODES", "l2sp_penalty", "finetune", "MultiTaskNet", "fit_multitask",
    "GradientReversal", "grad_reverse", "dann_lambda", "DANN", "fit_dann",
    "ATTRIBUTES", "ATTRIBUTE_NAMES", "fit_attributes", "attribute_log_likelihood", "zero_shot_predict",
]

SIDE = 8                                   # the digits are 8 x 8 images


# --------------------------------------------------------------------------- data

def digits(*, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as ``X`` (1797, 64) in [0, 1] and labels ``y`` (1797,)."""
    data = load_dataset("digits", device=device)
    return data.X / 16.0, data.y


def _images(X: torch.Tensor) -> torch.Tensor:
    _checks.tensor(X, "X", ndim=2, last_dim=SIDE * SIDE, floating=True)
    return X.reshape(-1, 1, SIDE, SIDE)


def rotate(X: torch.Tensor, degrees: float | torch.Tensor) -> torch.Tensor:
    """Rotate every 8x8 image of ``X`` (n, 64) about its centre, bilinearly, zero outside.

    ``degrees`` is one angle for all rows or a tensor of one angle per row (anticlockwise).
    """
    img = _images(X)
    angle = torch.as_tensor(degrees, dtype=X.dtype, device=X.device) * (math.pi / 180.0)
    if angle.ndim == 0:
        angle = angle.expand(len(X))
    if angle.shape != (len(X),):
        raise ValueError(f"degrees must be one number or one per row ({len(X)}), got shape "
                         f"{tuple(angle.shape)}")
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)           # (n, 2, 3)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(len(X), -1)


def thicken(X: torch.Tensor, amount: float = 1.0) -> torch.Tensor:
    """Thicker strokes: blend each image with its grey-level dilation by a plus-shaped 3x3 element.

    ``amount`` 0 leaves the image unchanged; 1 replaces every pixel by the largest value among
    itself and its four neighbours.
    """
    amount = _checks.real(amount, "amount", nonnegative=True)
    if amount > 1:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    img = _images(X)
    pad = F.pad(img, (1, 1, 1, 1))
    shifts = [pad[..., 1:-1, 1:-1], pad[..., :-2, 1:-1], pad[..., 2:, 1:-1],
              pad[..., 1:-1, :-2], pad[..., 1:-1, 2:]]
    dilated = torch.stack(shifts).amax(0)
    return (img + amount * (dilated - img)).reshape(len(X), -1)


def add_noise(X: torch.Tensor, std: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``X`` plus Gaussian noise of standard deviation ``std`` (drawn on the CPU for reproducibility)."""
    _checks.tensor(X, "X", ndim=2, floating=True)
    std = _checks.real(std, "std", nonnegative=True)
    noise = torch.randn(X.shape, generator=generator, dtype=X.dtype).to(X.device)
    return X + std * noise


def mix_domains(X: torch.Tensor, fraction: float, transform: Callable[[torch.Tensor], torch.Tensor], *,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` to a random ``fraction`` of the rows of ``X``.

    Returns the mixed rows and ``z`` (n,), 1 where a row was transformed: a mixture
    ``(1 - fraction) p_0 + fraction p_1`` of the original and the transformed distribution.
    """
    _checks.tensor(X, "X", ndim=2, floating=True)
    fraction = _checks.real(fraction, "fraction")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    z = (torch.rand(len(X), generator=generator) < fraction).to(X.device)
    out = torch.where(z[:, None], transform(X), X)
    return out, z.long()


# --------------------------------------------------------------------------- classifiers

@torch.no_grad()
def accuracy(model: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``X`` whose arg-max logit under ``model`` equals the label in ``y``."""
    _checks.tensor(X, "X", ndim=2, min_rows=1)
    _checks.tensor(y, "y", ndim=1)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of rows, got {len(X)} and {len(y)}")
    out = model(X)
    out = out[0] if isinstance(out, tuple) else out
    return float((out.argmax(dim=1) == y).float().mean())


def fit_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                   weights: torch.Tensor | None = None, penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                   steps: int = 300, lr: float = 3e-3, batch_size: int = 128,
                   generator: torch.Generator | None = None, **kwargs) -> list[float]:
    """Minimise the (optionally importance-weighted) cross-entropy of ``model`` on ``(X, y)``.

    With ``weights`` (n,) the loss is the weighted empirical risk of equation ``da-weighted-risk``,
    ``sum_i w_i l_i / sum_i w_i`` over each minibatch; ``penalty(model)`` is added to every step's
    loss (L2-SP, equation ``da-l2sp``). Only parameters with ``requires_grad`` move. Training runs
    through :func:`mlbook.train.train`; extra keyword arguments go there.
    """
    _checks.tensor(X, "X", ndim=2, floating=True, min_rows=1)
    _checks.tensor(y, "y", ndim=1)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of rows, got {len(X)} and {len(y)}")
    w = torch.ones(len(X), device=X.device) if weights is None else weights
    _checks.tensor(w, "weights", ndim=1)
    if len(w) != len(X) or not bool((w >= 0).all()):
        raise ValueError("weights must be non-negative, one per row of X")

    def loss_fn(m, batch):
        xb, yb, wb = batch
        loss = (wb * F.cross_entropy(m(xb), yb, reduction="none")).sum() / wb.sum().clamp_min(1e-12)
        return loss + penalty(model) if penalty is not None else loss

    kwargs.setdefault("show_progress", False)
    return train(_Trainable(model), loss_fn, (X, y, w.to(X.device)), steps=steps, lr=lr,
                 batch_size=min(batch_size, len(X)), generator=generator, **kwargs)


class _Trainable(nn.Module):
    """Wraps a model so that the optimiser in :func:`train` sees only its trainable parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def parameters(self, recurse: bool = True):
        return (p for p in self.model.parameters(recurse) if p.requires_grad)

    def forward(self, x):
        return self.model(x)


# --------------------------------------------------------------------------- importance weights

class DomainClassifier:
    """Logistic regression telling target rows (label 1) from source rows (label 0).

    ``fit(X_source, X_target)`` minimises the mean cross-entropy plus ``0.5 / (C n)`` times the
    squared weight norm (scikit-learn's ``LogisticRegression(C=C)`` objective divided by n) with
    L-BFGS. ``predict_proba(X)`` is the estimated P(target | x); ``weights(X)`` turns it into the
    density ratio p_T(x) / p_S(x) by equation ``da-ratio-classifier``.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 200):
        self.C = _checks.real(C, "C", positive=True)
        self.max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
        self.coef_: torch.Tensor | None = None
        self.intercept_: torch.Tensor | None = None
        self.n_source_ = self.n_target_ = None

    def fit(self, X_source, X_target) -> "DomainClassifier":
        Xs = _checks.features(X_source, "X_source")
        Xt = _checks.features(X_target, "X_target", n_features=Xs.shape[1], device=Xs.device)
        X = torch.cat([Xs, Xt])
        t = torch.cat([torch.zeros(len(Xs)), torch.ones(len(Xt))]).to(X)
        w = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device, requires_grad=True)
        b = torch.zeros((), dtype=X.dtype, device=X.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-9,
                                tolerance_change=1e-12, line_search_fn="strong_wolfe")
        reg = 0.5 / (self.C * len(X))

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(X @ w + b, t) + reg * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef_, self.intercept_ = w.detach(), b.detach()
        self.n_source_, self.n_target_ = len(Xs), len(Xt)
        return self

    def decision_function(self, X) -> torch.Tensor:
        """The logit log P(target | x) - log P(source | x), shape (n,)."""
        _checks.fitted(self, "coef_")
        X = _checks.features(X, n_features=len(self.coef_), device=self.coef_.device)
        return X @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> torch.Tensor:
        """P(target | x), shape (n,)."""
        return torch.sigmoid(self.decision_function(X))

    def score(self, X_source, X_target) -> float:
        """Accuracy at telling the two sets apart (threshold 1/2)."""
        ps, pt = self.predict_proba(X_source), self.predict_proba(X_target)
        return float(torch.cat([ps < 0.5, pt >= 0.5]).float().mean())

    def weights(self, X) -> torch.Tensor:
        """Estimated density ratio p_T(x) / p_S(x) at the rows of ``X``: equation ``da-ratio-classifier``."""
        _checks.fitted(self, "coef_")
        # (n_S / n_T) * p / (1 - p), computed from the logit: exp(logit) * n_S / n_T
        return (self.decision_function(X) + math.log(self.n_source_ / self.n_target_)).exp()


def importance_weights(prob_target: torch.Tensor, n_source: int, n_target: int) -> torch.Tensor:
    """Density ratio from a domain classifier's probabilities, equation ``da-ratio-classifier``.

    ``prob_target`` (n,) is P(target | x) from a classifier trained on ``n_source`` source and
    ``n_target`` target rows; the ratio p_T(x)/p_S(x) is ``(n_source / n_target) * p / (1 - p)``.
    """
    _checks.tensor(prob_target, "prob_target", ndim=1, floating=True)
    n_source = _checks.integer(n_source, "n_source", minimum=1)
    n_target = _checks.integer(n_target, "n_target", minimum=1)
    if bool(((prob_target < 0) | (prob_target >= 1)).any()):
        raise ValueError("prob_target must lie in [0, 1): a probability of exactly 1 gives an infinite ratio")
    return (n_source / n_target) * prob_target / (1 - prob_target)


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2, equation ``da-ess``: n for equal weights, 1 for one."""
    _checks.tensor(weights, "weights", ndim=1, floating=True, min_rows=1)
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return float(weights.sum() ** 2 / weights.square().sum())


def weighted_mean(values: torch.Tensor, weights: torch.Tensor, *, self_normalised: bool = False) -> float:
    """Importance-weighted average of ``values``: equation ``da-weighted-risk``.

    ``(1/n) sum_i w_i v_i`` (unbiased when the weights are the exact ratio), or with
    ``self_normalised`` ``sum_i w_i v_i / sum_i w_i`` (needs the ratio only up to a constant).
    """
    _checks.tensor(values, "values", ndim=1, min_rows=1)
    _checks.tensor(weights, "weights", ndim=1, floating=True)
    if len(values) != len(weights):
        raise ValueError(f"values and weights must have the same length, got {len(values)} and {len(weights)}")
    total = (weights * values.to(weights.dtype)).sum()
    return float(total / weights.sum() if self_normalised else total / len(values))


def proxy_a_distance(F_source: torch.Tensor, F_target: torch.Tensor, *, C: float = 1.0,
                     generator: torch.Generator | None = None) -> tuple[float, float]:
    """Proxy A-distance 2 (1 - 2 err), equation ``da-proxy-a``, and the held-out error ``err``.

    A :class:`DomainClassifier` is fitted on half of each set and tested on the other half.
    """
    Fs = _checks.features(F_source, "F_source")
    Ft = _checks.features(F_target, "F_target", n_features=Fs.shape[1], device=Fs.device)
    if len(Fs) < 4 or len(Ft) < 4:
        raise ValueError("proxy_a_distance needs at least 4 rows in each set")
    ps, pt = torch.randperm(len(Fs), generator=generator), torch.randperm(len(Ft), generator=generator)
    hs, ht = len(Fs) // 2, len(Ft) // 2
    clf = DomainClassifier(C=C).fit(Fs[ps[:hs]], Ft[pt[:ht]])
    err = 1.0 - clf.score(Fs[ps[hs:]], Ft[pt[ht:]])
    return 2.0 * (1.0 - 2.0 * err), err


def check_importance_weights(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> Verdict:
    """Checker for the coding exercise: density ratios from a domain classifier's probabilities.

    ``fn(prob_target, n_source, n_target)`` must return p_T(x)/p_S(x) for each row. Cases: the
    shape; p = 1/2 with equal set sizes gives 1; the class-prior correction n_S/n_T; and on two
    Gaussians, source N(0, 1) and target N(1, 1), with the exact classifier probability, the
    returned weights equal the exact ratio exp(x - 1/2) and average to 1 over source samples.
    """
    half = torch.full((5,), 0.5, dtype=torch.float64)
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    n_s, n_t = 3000, 1000
    # Bayes: P(target | x) = n_t p_T / (n_t p_T + n_s p_S) = sigmoid(log r + log(n_t / n_s))
    exact = (x - 0.5).exp()
    prob = torch.sigmoid(x - 0.5 + math.log(n_t / n_s))
    cases = [
        Case("five probabilities of 1/2", (half, 100, 100), lambda w: isinstance(w, torch.Tensor)
             and tuple(w.shape) == (5,), "return one weight per probability, a tensor of the same shape."),
        Case("p = 1/2 with as many source as target rows", (half, 100, 100),
             lambda w: bool(torch.allclose(w, torch.ones(5, dtype=torch.float64))),
             "a classifier that cannot tell the domains apart means the densities are equal: weight 1."),
        Case("p = 1/2 with 300 source and 100 target rows", (half, 300, 100),
             lambda w: bool(torch.allclose(w, torch.full((5,), 3.0, dtype=torch.float64))),
             "the classifier's odds p/(1-p) carry the ratio of set sizes n_T/n_S; divide it out."),
        Case("source N(0, 1), target N(1, 1), exact classifier", (prob, n_s, n_t),
             lambda w: bool(torch.allclose(w, exact, rtol=1e-6)) and abs(float(w.mean()) - 1) < 0.02,
             "the odds p/(1-p) equal (n_T p_T)/(n_S p_S) by Bayes' rule; solve for p_T/p_S."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "your weights"))


# --------------------------------------------------------------------------- fine-tuning

def l2sp_penalty(model: nn.Module, reference: dict[str, torch.Tensor], alpha: float, beta: float = 0.0) -> torch.Tensor:
    """The L2-SP regulariser, equation ``da-l2sp``.

    ``alpha/2 * ||w_shared - w0||^2`` over parameters whose name is in ``reference`` (the
    pretrained values w0), plus ``beta/2 * ||w_new||^2`` over the others (the new head).
    """
    alpha = _checks.real(alpha, "alpha", nonnegative=True)
    beta = _checks.real(beta, "beta", nonnegative=True)
    near, new = 0.0, 0.0
    for name, p in model.named_parameters():
        if name in reference:
            near = near + (p - reference[name].to(p)).square().sum()
        else:
            new = new + p.square().sum()
    return 0.5 * alpha * near + 0.5 * beta * new


FINETUNE_MODES = ("scratch", "last", "all", "l2sp")


def finetune(pretrained: nn.Sequential, X: torch.Tensor, y: torch.Tensor, mode: str = "all", *,
             n_classes: int = 10, steps: int = 200, lr: float = 3e-3, alpha: float = 0.1,
             generator: torch.Generator | None = None) -> nn.Sequential:
    """Adapt a pretrained MLP (``nn.Sequential`` ending in a ``Linear``) to ``(X, y)``.

    ``mode``: ``"scratch"`` re-initialises everything (the baseline); ``"last"`` freezes all but a
    new output layer (logistic regression on frozen features); ``"all"`` trains every layer from
    the pretrained values with a new output layer; ``"l2sp"`` does the same with the penalty
    ``da-l2sp`` pulling the shared layers towards their pretrained values. Returns a new model.
    """
    _checks.choice(mode, "mode", FINETUNE_MODES)
    if not isinstance(pretrained, nn.Sequential) or not isinstance(pretrained[-1], nn.Linear):
        raise TypeError("pretrained must be an nn.Sequential whose last layer is nn.Linear")
    model = copy.deepcopy(pretrained)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    seed = int(torch.randint(2**31 - 1, (), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model[-1] = nn.Linear(model[-1].in_features, n_classes).to(X.device)
        if mode == "scratch":
            for layer in model:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
    last = str(len(model) - 1)
    reference = {k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith(last + ".")}
    if mode == "last":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(last + "."))
    penalty = (lambda m: l2sp_penalty(m, reference, alpha)) if mode == "l2sp" else None
    fit_classifier(model, X, y, penalty=penalty, steps=steps, lr=lr, generator=gen)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


class MultiTaskNet(nn.Module):
    """A shared trunk with one linear head per task: equation ``da-multitask``."""

    def __init__(self, trunk: nn.Module, width: int, n_outputs: Sequence[int]):
        super().__init__()
        if not n_outputs:
            raise ValueError("n_outputs must name at least one task")
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(_checks.integer(width, "width", minimum=1),
                                             _checks.integer(k, "n_outputs", minimum=1)) for k in n_outputs)

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        return self.heads[task](self.trunk(x))


def fit_multitask(model: MultiTaskNet, tasks: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                  task_weights: Sequence[float] | None = None, steps: int = 400, lr: float = 3e-3,
                  batch_size: int = 64, generator: torch.Generator | None = None) -> list[float]:
    """Minimise the weighted sum of the tasks' mean cross-entropies, equation ``da-multitask``.

    Every step draws one minibatch from each task's ``(X_k, y_k)`` (with replacement).
    """
    if len(tasks) != len(model.heads):
        raise ValueError(f"the model has {len(model.heads)} heads but {len(tasks)} tasks were given")
    weights = [1.0] * len(tasks) if task_weights is None else [_checks.real(w, "task_weights", nonnegative=True)
                                                              for w in task_weights]
    if len(weights) != len(tasks):
        raise ValueError("task_weights needs one weight per task")
    for X, y in tasks:
        _checks.tensor(X, "X", ndim=2, floating=True, min_rows=1)
        if len(X) != len(y):
            raise ValueError("each task's X and y must have the same number of rows")

    def data(b, generator=None):
        out = []
        for X, y in tasks:
            idx = torch.randint(len(X), (min(b, len(X)),), generator=generator).to(X.device)
            out += [X[idx], y[idx]]
        return tuple(out)

    def loss_fn(m, batch):
        return sum(w * F.cross_entropy(m(batch[2 * k], k), batch[2 * k + 1])
                   for k, w in enumerate(weights))

    return train(model, loss_fn, data, steps=steps, lr=lr, batch_size=batch_size, generator=generator,
                 show_progress=False)


# --------------------------------------------------------------------------- domain-adversarial training

class GradientReversal(torch.autograd.Function):
    """Identity forward, gradient times ``-lam`` backward: equation ``da-grl``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lam * grad_output, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Apply :class:`GradientReversal` with weight ``lam`` >= 0."""
    _checks.tensor(x, "x", floating=True)
    return GradientReversal.apply(x, _checks.real(lam, "lam", nonnegative=True))


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin et al.'s ramp 2 / (1 + exp(-gamma p)) - 1 of the reversal weight, p in [0, 1] the training progress."""
    progress = _checks.real(progress, "progress")
    if not 0 <= progress <= 1:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DANN(nn.Module):
    """Feature extractor G_f, label head G_y and domain head G_d, equation ``da-dann``.

    ``forward(x, lam)`` returns ``(class logits, domain logit)``; the domain head sees the
    features through a gradient-reversal layer of weight ``lam``.
    """

    def __init__(self, d_in: int = 64, width: int = 64, n_classes: int = 10, domain_width: int = 64):
        super().__init__()
        self.features = nets.mlp(d_in, width, width)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(width, n_classes)
        self.domain = nets.mlp(width, domain_width, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The features G_f(x), shape (n, width)."""
        return self.act(self.features(x))

    def forward(self, x: torch.Tensor, lam: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)                                          # (n, width)
        return self.classifier(h), self.domain(grad_reverse(h, lam)).squeeze(1)


def fit_dann(model: DANN, X_source: torch.Tensor, y_source: torch.Tensor, X_target: torch.Tensor, *,
             lam: float = 1.0, source_weights: torch.Tensor | None = None, steps: int = 1500,
             lr: float = 2e-3, batch_size: int = 128, generator: torch.Generator | None = None,
             callback: Callable[[int, DANN], None] | None = None) -> list[float]:
    """Train by equation ``da-dann``: source cross-entropy plus the domain loss through the reversal layer.

    Each step draws ``batch_size`` labelled source rows and as many unlabelled target rows. The
    reversal weight follows ``lam * dann_lambda(step / steps)``; ``lam=0`` is source-only training
    (the domain head still learns, but nothing flows back into the features).
    ``source_weights`` (n_source,) turn the label loss into the importance-weighted risk instead.
    """
    lam = _checks.real(lam, "lam", nonnegative=True)
    _checks.tensor(X_source, "X_source", ndim=2, floating=True, min_rows=1)
    _checks.tensor(X_target, "X_target", ndim=2, last_dim=X_source.shape[1], floating=True, min_rows=1)
    if len(y_source) != len(X_source):
        raise ValueError("X_source and y_source must have the same number of rows")
    ws = torch.ones(len(X_source)) if source_weights is None else source_weights
    if not isinstance(ws, torch.Tensor) or ws.shape != (len(X_source),) or bool((ws < 0).any()):
        raise ValueError("source_weights needs one non-negative weight per source row")
    ws = ws.to(X_source.device, X_source.dtype)
    steps = _checks.integer(steps, "steps", minimum=1)
    step = [0]

    def data(b, generator=None):
        i = torch.randint(len(X_source), (b,), generator=generator).to(X_source.device)
        j = torch.randint(len(X_target), (b,), generator=generator).to(X_target.device)
        return X_source[i], y_source[i], ws[i], X_target[j]

    def loss_fn(m, batch):
        xs, ys, wb, xt = batch
        coef = lam * dann_lambda(min(step[0] / steps, 1.0))
        step[0] += 1
        logits, d_s = m(xs, coef)
        _, d_t = m(xt, coef)
        label = (wb * F.cross_entropy(logits, ys, reduction="none")).sum() / wb.sum()
        d = torch.cat([d_s, d_t])
        t = torch.cat([torch.zeros_like(d_s), torch.ones_like(d_t)])
        return label + F.binary_cross_entropy_with_logits(d, t)

    return train(model, loss_fn, data, steps=steps, lr=lr, batch_size=batch_size, generator=generator,
                 show_progress=False, callback=callback)


# --------------------------------------------------------------------------- zero-shot by attributes

ATTRIBUTE_NAMES = ("closed loop", "loop in the upper half", "loop in the lower half",
                   "straight vertical stroke", "bar along the top", "flat stroke along the bottom",
                   "bulges to the right", "diagonal stroke")
# one row per digit 0..9, one column per attribute above: the class signatures a^(k)
ATTRIBUTES = torch.tensor([
    # loop upper lower vert top bottom right diag
    [1, 0, 0, 0, 0, 0, 0, 0],   # 0
    [0, 0, 0, 1, 0, 0, 0, 0],   # 1
    [0, 0, 0, 0, 0, 1, 1, 1],   # 2
    [0, 0, 0, 0, 0, 0, 1, 0],   # 3
    [0, 0, 0, 1, 0, 0, 0, 1],   # 4
    [0, 0, 0, 0, 1, 0, 1, 0],   # 5
    [1, 0, 1, 0, 0, 0, 0, 0],   # 6
    [0, 0, 0, 0, 1, 0, 0, 1],   # 7
    [1, 1, 1, 0, 0, 0, 0, 0],   # 8
    [1, 1, 0, 1, 0, 0, 0, 0],   # 9
], dtype=torch.float32)


def fit_attributes(X: torch.Tensor, y: torch.Tensor, signatures: torch.Tensor, *, hidden: int = 64,
                   steps: int = 300, lr: float = 3e-3, generator: torch.Generator | None = None) -> nn.Module:
    """Attribute predictors for direct attribute prediction (equation ``da-dap``).

    Trains one network with an output per attribute, ``sigmoid(model(x))[:, a]`` estimating
    P(attribute a present | x), by binary cross-entropy against each row's class signature
    ``signatures[y]``. Only the classes present in ``y`` are seen.
    """
    _checks.tensor(X, "X", ndim=2, floating=True, min_rows=1)
    _checks.tensor(y, "y", ndim=1)
    _checks.tensor(signatures, "signatures", ndim=2)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of rows, got {len(X)} and {len(y)}")
    if int(y.min()) < 0 or int(y.max()) >= len(signatures):
        raise ValueError(f"labels must index the {len(signatures)} rows of signatures")
    targets = signatures.to(X)[y]                                       # (n, A)
    model = nets.mlp(X.shape[1], _checks.integer(hidden, "hidden", minimum=1), signatures.shape[1]).to(X.device)

    def loss_fn(m, batch):
        xb, tb = batch
        return F.binary_cross_entropy_with_logits(m(xb), tb)

    train(model, loss_fn, (X, targets), steps=steps, lr=lr, batch_size=min(128, len(X)),
          generator=generator, show_progress=False)
    return model


def attribute_log_likelihood(probs: torch.Tensor, signatures: torch.Tensor, *,
                             prior: torch.Tensor | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Score of every class for every row, equation ``da-dap``.

    ``probs`` (n, A) are predicted P(attribute a present | x); ``signatures`` (K, A) the classes'
    binary attribute vectors. Returns (n, K): sum_a log P(a = signature_ka | x), the attributes
    treated as independent given x (direct attribute prediction). With ``prior`` (A,), the
    frequency of each attribute in training, each term is divided by the prior probability of
    the value the signature asks for (Lampert et al.'s correction, equation ``da-dap-prior``).
    """
    _checks.tensor(probs, "probs", ndim=2, floating=True)
    _checks.tensor(signatures, "signatures", ndim=2, last_dim=probs.shape[1])
    p = probs.clamp(eps, 1 - eps)
    s = signatures.to(p)
    score = p.log() @ s.T + (1 - p).log() @ (1 - s).T               # (n, K)
    if prior is not None:
        _checks.tensor(prior, "prior", ndim=1, last_dim=probs.shape[1])
        q = prior.to(p).clamp(eps, 1 - eps)
        score = score - (q.log() @ s.T + (1 - q).log() @ (1 - s).T)  # (K,) broadcast
    return score


def zero_shot_predict(probs: torch.Tensor, signatures: torch.Tensor, classes: Sequence[int], *,
                      prior: torch.Tensor | None = None) -> torch.Tensor:
    """The class among ``classes`` whose signature has the largest score ``da-dap`` for each row."""
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    if classes.ndim != 1 or len(classes) < 1:
        raise ValueError("classes must be a non-empty list of class indices")
    if int(classes.min()) < 0 or int(classes.max()) >= len(signatures):
        raise ValueError(f"classes must index the {len(signatures)} rows of signatures")
    scores = attribute_log_likelihood(probs, signatures[classes], prior=prior)
    return classes.to(scores.device)[scores.argmax(1)]

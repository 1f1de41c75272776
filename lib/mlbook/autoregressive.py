r"""Autoregressive models of discrete vectors (chapter "Generative modelling and autoregressive
models", ``book/autoregressive.md``).

Every model here writes the joint distribution by the chain rule (equation ``ar-chain``),
:math:`\log p(x) = \sum_d \log p(x_d \mid x_{<d})`, and differs only in how the conditionals
share parameters:

- :class:`FVSBN`, the fully visible sigmoid belief net: one logistic regression per pixel on
  the pixels before it (equation ``ar-fvsbn``), fitted to its convex optimum by L-BFGS;
- :class:`NADE`: one hidden layer whose weights are shared across the conditionals, computed
  for all d at once with a running sum (equations ``ar-nade`` and ``ar-nade-recursion``);
- :class:`MADE`: a masked multilayer perceptron that outputs all conditionals in one pass
  (equations ``ar-made-hidden`` and ``ar-made-output``), for inputs with any number of
  categories (binary pixels, or the integer codes of a vector quantiser).

Each model has ``log_prob(x)`` (one exact log-likelihood per row, in nats, in one pass) and
``sample(n, generator=...)`` (one pass per coordinate: the cost the page contrasts). The helpers
around them binarise the digits, convert nats to bits per image, enumerate all states of a small
model to check that its probabilities sum to one, and compute pseudo-likelihoods, the quantity
scikit-learn's ``BernoulliRBM`` reports.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from numpy.polynomial.hermite import hermgauss
from torch import nn

from . import _checks
from .exercises import Case, Verdict, check

__all__ = ["fit_gaussian", "binarise", "bits_per_image", "all_states", "total_log_probability",
           "made_degrees", "made_masks", "MaskedLinear", "MADE", "FVSBN", "NADE",
           "pseudo_log_likelihood", "rbm_log_conditionals", "connectivity", "check_made_masks"]


# ------------------------------------------------------------- divergences: forward and reverse

def fit_gaussian(log_p: Callable[[torch.Tensor], torch.Tensor], direction: str, *,
                 init: tuple[float, float] = (0.0, 1.0),
                 grid: tuple[float, float, int] = (-8.0, 8.0, 4001)) -> tuple[float, float, float]:
    r"""The Gaussian :math:`q = \mathcal N(\mu, \sigma^2)` closest to a 1-D density p, and the divergence.

    ``direction="forward"`` minimises :math:`\mathrm{KL}[p, q]` (maximum likelihood, equation
    ``ar-forward-kl``); ``"reverse"`` minimises :math:`\mathrm{KL}[q, p]` (equation
    ``ar-reverse-kl``), which can have several local minima, one per mode, so ``init`` matters.
    The forward integral is done by the trapezoid rule on ``grid = (low, high, points)``, the
    reverse one by 80-point Gauss-Hermite quadrature under q, and :math:`(\mu, \log\sigma)` by
    L-BFGS from ``init = (mu, sigma)``. Returns ``(mu, sigma, KL)``. ``log_p`` maps a ``(m,)``
    float64 tensor to ``(m,)`` log-densities, differentiably (with torch operations).
    """
    _checks.choice(direction, "direction", ("forward", "reverse"))
    mu0 = _checks.real(init[0], "init[0]")
    sigma0 = _checks.real(init[1], "init[1]", positive=True)
    low, high, points = grid
    points = _checks.integer(points, "grid points", minimum=3)
    x = torch.linspace(_checks.real(low, "grid low"), _checks.real(high, "grid high"), points,
                       dtype=torch.float64)
    lp = log_p(x).detach().double()
    nodes, weights = (torch.as_tensor(a, dtype=torch.float64) for a in hermgauss(80))
    params = torch.tensor([mu0, math.log(sigma0)], dtype=torch.float64, requires_grad=True)

    def divergence():
        mu, sigma = params[0], params[1].exp()
        if direction == "forward":                 # E_p[log p - log q], p fixed on the grid
            lq = -0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
            return torch.trapezoid(lp.exp() * (lp - lq), x)
        # E_q[log q] is minus the Gaussian entropy; E_q[log p] by Gauss-Hermite quadrature at
        # the points mu + sqrt(2) sigma t, which move with q (so q can never leave the grid)
        neg_entropy = -0.5 * math.log(2 * math.pi * math.e) - torch.log(sigma)
        e_log_p = (weights * log_p(mu + math.sqrt(2.0) * sigma * nodes)).sum() / math.sqrt(math.pi)
        return neg_entropy - e_log_p

    opt = torch.optim.LBFGS([params], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = divergence()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        return float(params[0]), float(params[1].exp()), float(divergence())


# ------------------------------------------------------------------------------------- helpers

def binarise(X: torch.Tensor, threshold: float = 8.0) -> torch.Tensor:
    """Pixels ``>= threshold`` become 1, the rest 0 (scikit-learn's digits run from 0 to 16)."""
    X = _checks.tensor(X, "X", floating=True)
    threshold = _checks.real(threshold, "threshold")
    return (X >= threshold).to(X.dtype)


def bits_per_image(log_prob: torch.Tensor) -> float:
    """Mean negative log-likelihood in bits: ``-mean(log p) / log 2`` for ``log p`` in nats."""
    log_prob = _checks.tensor(log_prob, "log_prob", ndim=1, floating=True, min_rows=1)
    return float(-log_prob.mean() / math.log(2.0))


def all_states(n: int, n_categories: int = 2, *, device=None) -> torch.Tensor:
    """Every vector in {0, ..., C-1}^n as a ``(C**n, n)`` long tensor (n small: C**n <= 2**20)."""
    n = _checks.integer(n, "n", minimum=1)
    n_categories = _checks.integer(n_categories, "n_categories", minimum=2)
    if n_categories**n > 2**20:
        raise ValueError(f"{n_categories}**{n} states is too many to enumerate (limit 2**20)")
    states = torch.tensor(list(itertools.product(range(n_categories), repeat=n)), dtype=torch.long)
    return states.to(device) if device is not None else states


def total_log_probability(log_prob: Callable[[torch.Tensor], torch.Tensor], n: int,
                          n_categories: int = 2, *, device=None) -> float:
    """``log sum_x p(x)`` over all ``C**n`` states; zero for a normalised model."""
    states = all_states(n, n_categories, device=device)
    with torch.no_grad():
        return float(torch.logsumexp(log_prob(states).double(), 0))


def _categories(x, n_inputs: int, n_categories: int) -> torch.Tensor:
    """Check that ``x`` is ``(batch, n_inputs)`` of integers in [0, C); return it as long."""
    x = _checks.tensor(x, "x", ndim=2, last_dim=n_inputs)
    if x.is_floating_point():
        if not bool((x == x.round()).all()):
            raise ValueError("x must hold integer categories, got non-integer values")
    elif x.dtype == torch.bool:
        x = x.long()
    x = x.long()
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n_categories):
        raise ValueError(f"x must lie in 0..{n_categories - 1}, "
                         f"got values from {int(x.min())} to {int(x.max())}")
    return x


def _binary(x, n_inputs: int, dtype: torch.dtype) -> torch.Tensor:
    return _categories(x, n_inputs, 2).to(dtype)


def _bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum over d of log Bernoulli(x_d; sigmoid(logit_d)) = x l - softplus(l), stable for any l."""
    return (x * logits - nn.functional.softplus(logits)).sum(1)


def _uniforms(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    # drawn on the CPU: the same samples on every device
    return torch.rand(n, generator=generator).to(device)


# ---------------------------------------------------------------------------------------- MADE

def made_degrees(n_inputs: int, hidden_sizes: Sequence[int],
                 order: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Degrees of the input units and of every hidden layer (equation ``ar-made-degree``).

    Input ``d`` gets its position in the ordering, ``1..D``. Hidden units get degrees that
    cycle through ``1..D-1`` (every degree used once the layer has ``D - 1`` units), so a unit
    of degree k may look at the inputs in positions 1..k.
    """
    n_inputs = _checks.integer(n_inputs, "n_inputs", minimum=1)
    hidden_sizes = [_checks.integer(h, f"hidden_sizes[{i}]", minimum=1)
                    for i, h in enumerate(hidden_sizes)]
    if order is None:
        first = torch.arange(1, n_inputs + 1)
    else:
        order = torch.as_tensor(list(order), dtype=torch.long)
        if sorted(order.tolist()) != list(range(n_inputs)):
            raise ValueError(f"order must be a permutation of 0..{n_inputs - 1}, got {order.tolist()}")
        first = order + 1                     # order[d] = position of input d, from 0
    top = max(n_inputs - 1, 1)
    return [first] + [torch.arange(h) % top + 1 for h in hidden_sizes]


def made_masks(n_inputs: int, hidden_sizes: Sequence[int],
               order: Sequence[int] | None = None) -> list[torch.Tensor]:
    """0/1 masks, shaped like ``nn.Linear`` weights ``(out, in)``, for every layer of a MADE.

    Hidden layer: unit k sees unit j of the layer below when ``m(k) >= m(j)``
    (equation ``ar-made-hidden``); output d sees hidden unit j when ``d > m(j)``, strictly
    (equation ``ar-made-output``). With no hidden layer the single mask is ``d > j`` itself.
    """
    degrees = made_degrees(n_inputs, hidden_sizes, order)
    masks = [(upper[:, None] >= lower[None, :]).float()
             for lower, upper in zip(degrees[:-1], degrees[1:])]
    masks.append((degrees[0][:, None] > degrees[-1][None, :]).float())
    return masks


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask ``(out, in)``."""

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation over vectors of categories.

    Input: ``x`` of shape ``(batch, n_inputs)`` with integer entries in ``0..n_categories-1``
    (a float tensor of 0s and 1s is accepted too). It is one-hot encoded to
    ``(batch, n_inputs * n_categories)``; every one-hot unit of input d carries d's degree, so
    the masks of :func:`made_masks` are repeated over categories. Output: logits of shape
    ``(batch, n_inputs, n_categories)``, where ``logits[:, d]`` depends only on the inputs before
    d in ``order``. For binary data (``n_categories=2``) the two logits per pixel are a
    categorical form of the Bernoulli: ``p(x_d = 1) = sigmoid(logit_1 - logit_0)``.

    Args:
        n_inputs: number of positions D.
        hidden_sizes: widths of the masked hidden layers (ReLU); ``()`` gives a linear model.
        n_categories: number of values C each position takes.
        order: ``order[d]`` is the position (0-based) of input d in the autoregressive ordering;
            ``None`` is the natural order 0, 1, ..., D-1.
        direct: add a masked linear map from the inputs straight to the outputs (with no hidden
            layer this is the model itself); with it, MADE contains the FVSBN.
    """

    def __init__(self, n_inputs: int, hidden_sizes: Sequence[int] = (64,), n_categories: int = 2,
                 *, order: Sequence[int] | None = None, direct: bool = False):
        super().__init__()
        self.n_inputs = _checks.integer(n_inputs, "n_inputs", minimum=1)
        self.n_categories = _checks.integer(n_categories, "n_categories", minimum=2)
        self.hidden_sizes = tuple(hidden_sizes)
        masks = made_masks(self.n_inputs, self.hidden_sizes, order)
        degrees = made_degrees(self.n_inputs, self.hidden_sizes, order)
        self.register_buffer("position", degrees[0] - 1)          # (D,) position of input d
        C = self.n_categories
        # one-hot input: input columns d*C + c all carry input d's degree
        masks[0] = masks[0].repeat_interleave(C, dim=1)
        # categorical output: output rows d*C + c all carry output d's degree
        masks[-1] = masks[-1].repeat_interleave(C, dim=0)
        layers: list[nn.Module] = []
        for mask in masks[:-1]:
            layers += [MaskedLinear(mask), nn.ReLU()]
        layers.append(MaskedLinear(masks[-1]))
        self.net = nn.Sequential(*layers)
        self.direct = None
        if direct and self.hidden_sizes:
            strict = (degrees[0][:, None] > degrees[0][None, :]).float()        # (D, D)
            self.direct = MaskedLinear(strict.repeat_interleave(C, 0).repeat_interleave(C, 1),
                                       bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_inputs, n_categories)`` of every conditional, in one pass."""
        x = _categories(x, self.n_inputs, self.n_categories)
        h = nn.functional.one_hot(x, self.n_categories).flatten(1)          # (B, D*C)
        h = h.to(self.net[0].weight.dtype)
        out = self.net(h)
        if self.direct is not None:
            out = out + self.direct(h)
        return out.view(len(x), self.n_inputs, self.n_categories)           # (B, D, C)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per row, ``(batch,)``: the chain rule summed in one pass."""
        x = _categories(x, self.n_inputs, self.n_categories)
        logp = torch.log_softmax(self(x), -1)                               # (B, D, C)
        return logp.gather(-1, x[..., None]).squeeze(-1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               return_steps: bool = False):
        """Draw ``n`` vectors, one position per pass: D passes in all.

        Returns a long tensor ``(n, n_inputs)``; with ``return_steps=True`` also the partial
        samples ``(n_inputs + 1, n, n_inputs)`` after 0, 1, ..., D steps, -1 where a position is
        not drawn yet.
        """
        n = _checks.integer(n, "n", minimum=1)
        device = self.position.device
        x = torch.zeros(n, self.n_inputs, dtype=torch.long, device=device)
        steps = [torch.full_like(x, -1)]
        for t in range(self.n_inputs):
            d = int((self.position == t).nonzero())
            probs = torch.softmax(self(x)[:, d].double(), -1)                # (n, C)
            u = _uniforms(n, generator, device).double()
            # inverse CDF: the number of cumulative probabilities below u
            x[:, d] = (probs.cumsum(-1)[:, :-1] < u[:, None]).sum(-1)
            if return_steps:
                partial = steps[-1].clone()
                partial[:, d] = x[:, d]
                steps.append(partial)
        return (x, torch.stack(steps)) if return_steps else x


# --------------------------------------------------------------------------------------- FVSBN

class FVSBN(nn.Module):
    r"""Fully visible sigmoid belief net on {0, 1}^D (equation ``ar-fvsbn``).

    :math:`p(x_d = 1 \mid x_{<d}) = \sigma(b_d + \sum_{j<d} W_{dj} x_j)`: a strictly lower
    triangular ``W`` (D(D-1)/2 free weights) and ``D`` biases. :meth:`fit` minimises the mean
    negative log-likelihood plus ``l2 / 2 * ||W||^2`` (biases not penalised), a convex problem,
    by full-batch L-BFGS; it is then the same as D separate L2-penalised logistic regressions.
    """

    def __init__(self, n_inputs: int):
        super().__init__()
        self.n_inputs = _checks.integer(n_inputs, "n_inputs", minimum=1)
        self.weight = nn.Parameter(torch.zeros(self.n_inputs, self.n_inputs))
        self.bias = nn.Parameter(torch.zeros(self.n_inputs))
        self.register_buffer("mask", torch.ones(self.n_inputs, self.n_inputs).tril(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, D)`` of ``p(x_d = 1 | x_<d)``."""
        return self._logits(_binary(x, self.n_inputs, self.weight.dtype))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:             # x checked already
        return x @ (self.weight * self.mask).T + self.bias

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return _bernoulli_log_prob(self._logits(x), x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per row, ``(batch,)``."""
        return self._log_prob(_binary(x, self.n_inputs, self.weight.dtype))

    def fit(self, X: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 100) -> "FVSBN":
        """Maximum penalised likelihood by L-BFGS on all rows at once (convex: no seed)."""
        X = _binary(X, self.n_inputs, self.weight.dtype)
        l2 = _checks.real(l2, "l2", nonnegative=True)
        max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
        opt = torch.optim.LBFGS(self.parameters(), max_iter=max_iter, tolerance_grad=1e-7,
                                tolerance_change=1e-9, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -self._log_prob(X).mean() + 0.5 * l2 * (self.weight * self.mask).pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return self

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` binary vectors ``(n, D)``, pixel by pixel."""
        n = _checks.integer(n, "n", minimum=1)
        x = torch.zeros(n, self.n_inputs, device=self.weight.device)
        for d in range(self.n_inputs):
            p = torch.sigmoid(self._logits(x)[:, d])
            x[:, d] = (_uniforms(n, generator, x.device) < p).float()
        return x


# ---------------------------------------------------------------------------------------- NADE

class NADE(nn.Module):
    r"""Neural autoregressive distribution estimator on {0, 1}^D (equation ``ar-nade``).

    :math:`h_d = \sigma(c + W_{:, <d} x_{<d})`, :math:`p(x_d = 1 \mid x_{<d}) = \sigma(b_d + V_d h_d)`.
    The pre-activations obey :math:`a_{d+1} = a_d + W_{:, d} x_d` (equation
    ``ar-nade-recursion``), so all D hidden vectors cost O(DH), computed here as an exclusive
    cumulative sum.
    """

    def __init__(self, n_inputs: int, n_hidden: int = 50):
        super().__init__()
        self.n_inputs = _checks.integer(n_inputs, "n_inputs", minimum=1)
        self.n_hidden = _checks.integer(n_hidden, "n_hidden", minimum=1)
        D, H = self.n_inputs, self.n_hidden
        self.W = nn.Parameter(torch.randn(H, D) / math.sqrt(D))
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, H) / math.sqrt(H))
        self.b = nn.Parameter(torch.zeros(D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, D)`` of ``p(x_d = 1 | x_<d)``."""
        return self._logits(_binary(x, self.n_inputs, self.W.dtype))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:             # x checked already
        terms = x[:, :, None] * self.W.T[None]                    # (B, D, H): W_{:,d} x_d
        a = self.c + terms.cumsum(1) - terms                      # exclusive sum: j < d only
        h = torch.sigmoid(a)                                      # (B, D, H)
        return (h * self.V).sum(-1) + self.b                      # (B, D)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per row, ``(batch,)``."""
        x = _binary(x, self.n_inputs, self.W.dtype)
        return _bernoulli_log_prob(self._logits(x), x)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` binary vectors ``(n, D)``: the running pre-activation updated per pixel."""
        n = _checks.integer(n, "n", minimum=1)
        x = torch.zeros(n, self.n_inputs, device=self.W.device)
        a = self.c.expand(n, -1).clone()                          # (n, H)
        for d in range(self.n_inputs):
            p = torch.sigmoid(torch.sigmoid(a) @ self.V[d] + self.b[d])
            x[:, d] = (_uniforms(n, generator, x.device) < p).float()
            a = a + x[:, d:d + 1] * self.W[:, d]
        return x


# ------------------------------------------------------------------------- pseudo-likelihoods

def pseudo_log_likelihood(log_prob: Callable[[torch.Tensor], torch.Tensor],
                          X: torch.Tensor) -> torch.Tensor:
    r"""Per-row :math:`\sum_d \log p(x_d \mid x_{-d})` of a binary model given by its ``log_prob``.

    Each term is :math:`\log p(x) - \operatorname{logaddexp}(\log p(x), \log p(x^{(d)}))` with
    :math:`x^{(d)}` equal to x with bit d flipped: D + 1 calls of ``log_prob``.
    """
    X = _checks.tensor(X, "X", ndim=2)
    with torch.no_grad():
        base = log_prob(X).double()
        total = torch.zeros_like(base)
        for d in range(X.shape[1]):
            flipped = X.clone()
            flipped[:, d] = 1 - flipped[:, d]
            other = log_prob(flipped).double()
            total += base - torch.logaddexp(base, other)
    return total


def rbm_log_conditionals(rbm, X) -> torch.Tensor:
    r"""``(n, D)`` exact :math:`\log p(x_d \mid x_{-d})` of a fitted scikit-learn ``BernoulliRBM``.

    From the free energy :math:`F(v) = -b^\top v - \sum_j \operatorname{softplus}(c_j + W_j v)`,
    :math:`p(x_d \mid x_{-d}) = \sigma(F(x^{(d)}) - F(x))`. Summed over d this is the pseudo-
    log-likelihood of which ``BernoulliRBM.score_samples`` returns a one-bit random estimate
    (one random d per row, times D).
    """
    X = torch.as_tensor(X, dtype=torch.float64)
    W = torch.as_tensor(rbm.components_, dtype=torch.float64)           # (H, D)
    c = torch.as_tensor(rbm.intercept_hidden_, dtype=torch.float64)     # (H,)
    b = torch.as_tensor(rbm.intercept_visible_, dtype=torch.float64)    # (D,)
    if X.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"X must be (n, {W.shape[1]}), got shape {tuple(X.shape)}")

    def free_energy(v):
        return -(v @ b) - nn.functional.softplus(v @ W.T + c).sum(1)

    base = free_energy(X)
    out = torch.empty_like(X)
    for d in range(X.shape[1]):
        flipped = X.clone()
        flipped[:, d] = 1 - flipped[:, d]
        out[:, d] = nn.functional.logsigmoid(free_energy(flipped) - base)
    return out


# ---------------------------------------------------------------------------- the exercise

def connectivity(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(D_out, D_in)`` count of paths from each input to each output through the masks."""
    path = masks[0].double()
    for mask in masks[1:]:
        path = mask.double() @ path
    return path


def check_made_masks(fn: Callable[[int, list[int]], list[torch.Tensor]]) -> Verdict:
    """Checker for the reader's ``made_masks(n_inputs, hidden_sizes)`` in the natural order.

    The masks must have ``nn.Linear`` weight shapes ``(out, in)`` and entries 0 or 1; output d
    must be reachable from no input j >= d (the autoregressive property) and, with hidden
    degrees cycling through 1..D-1 and layers of at least D - 1 units, from every input j < d.
    """
    def shapes(n, hidden):
        sizes = [n, *hidden, n]
        return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]

    def well_formed(n, hidden):
        def test(masks):
            return (len(masks) == len(hidden) + 1
                    and [tuple(m.shape) for m in masks] == shapes(n, hidden)
                    and all(bool(((m == 0) | (m == 1)).all()) for m in masks))
        return test

    def autoregressive(masks):
        return bool((connectivity(masks).triu() == 0).all())

    def complete(n):
        def test(masks):
            reach = connectivity(masks) > 0
            return bool(reach.tril(-1).sum() == n * (n - 1) // 2)
        return test

    cases = [
        Case("D = 4, hidden_sizes = [8]: shapes and 0/1 entries", (4, [8]), well_formed(4, [8]),
             "one mask per layer, shaped like that layer's weight: (units out, units in)."),
        Case("D = 4, hidden_sizes = [8]: no path from x_j to output d when j >= d", (4, [8]),
             autoregressive,
             "the output mask needs a strict inequality d > m(k); hidden masks use >=."),
        Case("D = 10, hidden_sizes = [16, 16]", (10, [16, 16]), autoregressive,
             "give the inputs degrees 1..D and every hidden unit a degree in 1..D-1."),
        Case("D = 10, hidden_sizes = [16, 16]: every j < d reaches output d", (10, [16, 16]),
             complete(10),
             "let hidden degrees cycle through 1..D-1 so that every degree occurs."),
        Case("D = 5, no hidden layer", (5, []), lambda m: well_formed(5, [])(m)
             and autoregressive(m) and complete(5)(m),
             "with no hidden layer the one mask is the strictly lower triangular matrix d > j."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "your made_masks"))

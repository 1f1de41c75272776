"""Compound scaling of a small convolutional network: depth, width and input resolution.

The page ``compound_scaling`` counts the cost of a plain convolutional network (equation
``scaling-flops``), derives why it grows like d w^2 r^2 (equation ``scaling-cost``), and states the
compound rule of Tan & Le (2019), depth alpha^phi, width beta^phi, resolution gamma^phi
(equation ``scaling-compound``). This module holds the network (:class:`ScaledCNN`), its exact FLOPs
count (:func:`flops`), the four scaling strategies (:func:`scale`), the experiment that trains
each strategy under a few FLOPs budgets (:func:`scaling_experiment`), the power-law fit of the
accuracy-FLOPs frontier (:func:`fit_frontier`) and the reader's exercise checker
(:func:`check_flops`).

The images are the 8 x 8 digits; a lower resolution r is made by averaging (adaptive average
pooling) before the network, never by upsampling, which would add pixels but no information.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .exercises import Case, Verdict, check

__all__ = ["Config", "ScaledCNN", "flops", "downsample", "scale", "STRATEGIES",
           "scaling_experiment", "fit_frontier", "check_flops"]

STRATEGIES = ("depth", "width", "resolution", "compound")
PAPER_COEFFICIENTS = (1.2, 1.1, 1.15)        # alpha, beta, gamma of Tan & Le (2019)


@dataclass(frozen=True)
class Config:
    """A network's depth d (convolution layers), width w (channels) and input resolution r."""

    depth: int
    width: int
    resolution: int

    def __post_init__(self):
        _checks.integer(self.depth, "depth", minimum=1)
        _checks.integer(self.width, "width", minimum=1)
        _checks.integer(self.resolution, "resolution", minimum=1)

    @property
    def flops(self) -> int:
        """Floating-point operations of one forward pass of one image (:func:`flops`)."""
        return flops(self.depth, self.width, self.resolution)


class ScaledCNN(nn.Module):
    """d 3x3 convolutions of w channels (padding 1, ReLU) on an r x r image, then a linear layer.

    The first convolution maps the image to w channels; each of the other d - 1 adds its ReLU
    output to its input (a residual block, so that deep versions still train). Input
    ``(n, 1, r, r)``, output ``(n, classes)`` logits. No pooling inside: every layer works at the
    input resolution, so its cost is exactly equation ``scaling-flops``.
    """

    def __init__(self, config: Config, classes: int = 10):
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, got {type(config).__name__}")
        self.config = config
        d, w, r = config.depth, config.width, config.resolution
        self.stem = nn.Conv2d(1, w, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(w, w, 3, padding=1) for _ in range(d - 1))
        self.head = nn.Linear(w * r * r, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, r, r):
            raise ValueError(f"ScaledCNN{(self.config.depth, self.config.width, r)} takes images "
                             f"of shape (n, 1, {r}, {r}), got {tuple(x.shape)}")
        h = F.relu(self.stem(x))                                 # (n, w, r, r)
        for conv in self.blocks:
            h = h + F.relu(conv(h))                              # residual: deep nets still train
        return self.head(h.flatten(1))                           # (n, w r^2) -> (n, classes)


def flops(depth: int, width: int, resolution: int, *, classes: int = 10) -> int:
    """FLOPs of one forward pass of :class:`ScaledCNN` on one image (equation ``scaling-flops``).

    Two per multiply-add of the convolutions and the linear layer, as torch's ``FlopCounterMode``
    counts them (biases and ReLUs are not counted):
    ``2 r^2 [9 w + 9 (d - 1) w^2 + classes w]``.
    """
    d = _checks.integer(depth, "depth", minimum=1)
    w = _checks.integer(width, "width", minimum=1)
    r = _checks.integer(resolution, "resolution", minimum=1)
    classes = _checks.integer(classes, "classes", minimum=1)
    return 2 * r * r * (9 * w + 9 * (d - 1) * w * w + classes * w)


def downsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average ``(n, 1, s, s)`` images down to ``(n, 1, r, r)``, r <= s (adaptive average pooling)."""
    _checks.tensor(images, "images", ndim=4, floating=True)
    r = _checks.integer(resolution, "resolution", minimum=1)
    if r > images.shape[-1] or r > images.shape[-2]:
        raise ValueError(f"resolution {r} is above the images' {tuple(images.shape[-2:])}: "
                         f"upsampling adds pixels but no information")
    return F.adaptive_avg_pool2d(images, r)


def scale(strategy: str, budget: float, *, base: Config = Config(1, 4, 6),
          coefficients: tuple[float, float, float] = PAPER_COEFFICIENTS,
          max_resolution: int = 8) -> Config:
    """The largest network along ``strategy`` whose FLOPs stay within ``budget``.

    ``"depth"``, ``"width"``, ``"resolution"`` grow one dimension of ``base`` in steps of one;
    resolution stops at ``max_resolution`` (the images' own size), so that strategy can leave
    budget unspent. ``"compound"`` grows all three together, ``d = d0 alpha^phi``,
    ``w = w0 beta^phi``, ``r = r0 gamma^phi`` (rounded; r capped), for the largest phi on a grid of
    step 0.05 that fits (equation ``scaling-compound``). ``budget`` below the base's FLOPs is an error.
    """
    _checks.choice(strategy, "strategy", STRATEGIES)
    budget = _checks.real(budget, "budget", positive=True)
    if base.flops > budget:
        raise ValueError(f"budget {budget:g} is below the base network's {base.flops} FLOPs")
    if strategy == "compound":
        alpha, beta, gamma = (_checks.real(c, "coefficient", positive=True) for c in coefficients)
        best, phi = base, 0.0
        while phi < 40:
            phi += 0.05
            cand = Config(max(base.depth, round(base.depth * alpha ** phi)),
                          max(base.width, round(base.width * beta ** phi)),
                          min(max_resolution, max(base.resolution, round(base.resolution * gamma ** phi))))
            if cand.flops <= budget:
                best = cand
        return best
    field, best = strategy, base
    while True:
        grown = {"depth": base.depth, "width": base.width, "resolution": base.resolution}
        grown[field] = getattr(best, field) + 1
        cand = Config(**grown)
        if cand.flops > budget or cand.resolution > max_resolution:
            return best
        best = cand


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def scaling_experiment(images_train: torch.Tensor, y_train: torch.Tensor,
                       images_test: torch.Tensor, y_test: torch.Tensor, *,
                       budgets: Sequence[float], strategies: Sequence[str] = STRATEGIES,
                       seeds: Sequence[int] = (0, 1, 2), steps: int = 300, lr: float = 3e-3,
                       batch_size: int = 64, base: Config = Config(1, 4, 6),
                       device=None) -> list[dict]:
    """Train every strategy's network at every budget from every seed; one row per run.

    Each row: ``budget``, ``strategy``, ``seed``, ``config``, ``flops`` and test ``accuracy``.
    Every run uses the same recipe (:func:`mlbook.train.train`, Adam, ``steps`` minibatches of
    ``batch_size``), so only the network's shape differs within a seed. A network that two
    strategies share (at the base's budget all four coincide) is trained once per seed.
    """
    from .device import seed_all
    from .train import train

    _checks.tensor(images_train, "images_train", ndim=4, floating=True)
    _checks.tensor(images_test, "images_test", ndim=4, floating=True)
    if not budgets or not strategies or not seeds:
        raise ValueError("budgets, strategies and seeds must each be non-empty")
    for s in strategies:
        _checks.choice(s, "strategy", STRATEGIES)
    size = images_train.shape[-1]
    rows, done = [], {}             # done: (config, seed) -> accuracy; strategies may coincide
    for budget in budgets:
        for strategy in strategies:
            config = scale(strategy, budget, base=base, max_resolution=size)
            x_tr = downsample(images_train, config.resolution)
            x_te = downsample(images_test, config.resolution)
            for seed in seeds:
                if (config, seed) not in done:
                    generator = seed_all(seed)
                    model = ScaledCNN(config)
                    train(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x_tr, y_train),
                          steps=steps, lr=lr, batch_size=batch_size, generator=generator,
                          device=device, desc=f"{strategy} {budget:g}")
                    dev = next(model.parameters()).device
                    done[config, seed] = _accuracy(model, x_te.to(dev), y_test.to(dev))
                rows.append({"budget": budget, "strategy": strategy, "seed": seed,
                             "config": config, "flops": config.flops,
                             "accuracy": done[config, seed]})
    return rows


def fit_frontier(flops_: Sequence[float] | torch.Tensor, accuracy: Sequence[float] | torch.Tensor
                 ) -> tuple[float, float]:
    """Fit the error power law ``1 - accuracy = a * FLOPs^(-b)``; return ``(a, b)``.

    Least squares on ``log(1 - accuracy) = log a - b log FLOPs`` (equation ``scaling-frontier``).
    """
    f = torch.as_tensor(flops_, dtype=torch.float64).reshape(-1)
    acc = torch.as_tensor(accuracy, dtype=torch.float64).reshape(-1)
    if f.numel() != acc.numel() or f.numel() < 2:
        raise ValueError(f"need at least two (FLOPs, accuracy) pairs of equal count, got "
                         f"{f.numel()} and {acc.numel()}")
    if not bool((f > 0).all()):
        raise ValueError("FLOPs must be positive")
    if not bool(((acc >= 0) & (acc < 1)).all()):
        raise ValueError("accuracies must lie in [0, 1): the error 1 - accuracy is fitted in logs")
    if bool((f == f[0]).all()):
        raise ValueError("FLOPs must not all be equal: no slope to fit")
    design = torch.stack([torch.ones_like(f), f.log()], 1)               # (m, 2)
    coef = torch.linalg.lstsq(design, (1 - acc).log().unsqueeze(1)).solution.squeeze(1)
    return math.exp(float(coef[0])), -float(coef[1])


def check_flops(fn: Callable[[int, int, int], int]) -> Verdict:
    """Checker for the reader's FLOPs count of :class:`ScaledCNN` (the scaling notebook's exercise).

    ``fn(depth, width, resolution)`` must equal what torch's ``FlopCounterMode`` counts for one
    forward pass of one image, on shapes that separate the terms (depth 1 has no w^2 term).
    """
    from torch.utils.flop_counter import FlopCounterMode

    def counted(d: int, w: int, r: int) -> int:
        model = ScaledCNN(Config(d, w, r))
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 1, r, r))
        return int(counter.get_total_flops())

    cases = []
    for d, w, r in [(1, 1, 1), (1, 4, 4), (2, 4, 4), (3, 5, 6), (4, 2, 8), (2, 7, 3)]:
        truth = counted(d, w, r)
        cases.append(Case(f"depth {d}, width {w}, resolution {r} ({truth} FLOPs)", (d, w, r),
                          lambda got, truth=truth: (isinstance(got, numbers.Integral)
                                                    and int(got) == truth),
                          "count 2 FLOPs per multiply-add; a padded 3x3 convolution keeps the "
                          "r x r grid, the first one has 1 input channel, the others w; the "
                          "linear layer sees w r^2 numbers."))
    return check(fn, cases, name=getattr(fn, "__name__", "your count"))

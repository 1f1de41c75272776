"""Small networks shared by the chapters."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks

__all__ = ["mlp", "TimeEmbedding", "TimeMLP"]


def mlp(*sizes: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain MLP with the given layer widths, e.g. ``mlp(64, 100, 10)``: Linear-act-...-Linear."""
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, got {sizes}")
    sizes = [_checks.integer(s, "sizes", minimum=1) for s in sizes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class TimeEmbedding(nn.Module):
    """Fourier features of a time t in [0, 1]: sin and cos at geometrically spaced frequencies."""

    def __init__(self, n_frequencies: int = 16, max_frequency: float = 500.0):
        super().__init__()
        n_frequencies = _checks.integer(n_frequencies, "n_frequencies", minimum=1)
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), n_frequencies))
        self.register_buffer("freqs", freqs)
        self.dim = 2 * n_frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs          # (n, F)
        return torch.cat([angles.sin(), angles.cos()], dim=1)          # (n, 2F)


class TimeMLP(nn.Module):
    """An MLP f(x, t) -> R^out for x in R^dim and a time t, e.g. a diffusion denoiser or a velocity.

    The time enters through :class:`TimeEmbedding` features added to every hidden layer.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, out: int | None = None,
                 n_frequencies: int = 16, n_classes: int = 0):
        super().__init__()
        self.n_classes = _checks.integer(n_classes, "n_classes", minimum=0)
        # Class labels 0..n_classes-1, and n_classes for "no label" (classifier-free guidance).
        self.label = nn.Embedding(self.n_classes + 1, hidden) if self.n_classes else None
        self.dim = _checks.integer(dim, "dim", minimum=1)
        hidden = _checks.integer(hidden, "hidden", minimum=1)
        layers = _checks.integer(layers, "layers", minimum=1)
        self.embed = TimeEmbedding(n_frequencies)
        self.inp = nn.Linear(self.dim, hidden)
        self.time = nn.ModuleList(nn.Linear(self.embed.dim, hidden) for _ in range(layers))
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, out or self.dim)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``y``: class labels (n,), ``n_classes`` meaning "none"; only for a model built with classes."""
        _checks.tensor(x, "x", ndim=2, last_dim=self.dim, floating=True)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        emb = self.embed(t).to(x.dtype)                                 # (n, 2F)
        h = self.inp(x) + self.time[0](emb)                             # (n, hidden)
        if y is not None:
            if self.label is None:
                raise ValueError("y was given, but this TimeMLP was built without n_classes")
            if y.shape != (x.shape[0],) or int(y.min()) < 0 or int(y.max()) > self.n_classes:
                raise ValueError(f"y must hold one label in 0..{self.n_classes} ({self.n_classes} = none) per row")
            h = h + self.label(y)
        elif self.label is not None:
            h = h + self.label.weight[self.n_classes]
        h = self.act(h)
        for lin, tlin in zip(self.hidden, self.time[1:]):
            h = self.act(lin(h) + tlin(emb))
        return self.out(h)

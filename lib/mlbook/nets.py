"""Small networks shared by the chapters."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks

__all__ = ["mlp", "TimeEmbedding", "TimeMLP", "TokenGRU"]


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



def _token_ids(tokens, name: str, high: int) -> torch.Tensor:
    """``tokens`` if it is a 2-D tensor of integer ids in 0..high, else a clear error."""
    _checks.tensor(tokens, name, ndim=2)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > high):
        raise ValueError(f"{name} must hold token ids in 0..{high}, got values in "
                         f"{int(tokens.min())}..{int(tokens.max())}")
    return tokens


class TokenGRU(nn.Module):
    """A tiny autoregressive model of token sequences: an embedding, a one-layer GRU, a linear head.

    Tokens are ids 0..vocab-1; the extra id ``vocab`` is the start token <start>. The output at
    position t has read <start>, x_0, ..., x_{t-1} and nothing after: it scores token t (logits
    when ``out_features`` is ``vocab``, the default) or summarises the prefix before it (e.g. a
    value, ``out_features=1``). :meth:`states` gives the hidden states of the whole shifted
    sequence at once (training, scoring); :meth:`step` reads tokens one call at a time and carries
    the GRU state (sampling). ``embed`` may be replaced by any module mapping ids ``(n, L)`` to
    ``(n, L, hidden)`` over the same ``vocab + 1`` ids.
    """

    def __init__(self, vocab: int, hidden: int = 32, *, out_features: int | None = None):
        super().__init__()
        self.vocab = _checks.integer(vocab, "vocab", minimum=1)
        self.hidden = _checks.integer(hidden, "hidden", minimum=1)
        out_features = self.vocab if out_features is None else out_features
        self.out_features = _checks.integer(out_features, "out_features", minimum=1)
        self.start = self.vocab                                         # the id of <start>
        self.embed = nn.Embedding(self.vocab + 1, self.hidden)
        self.gru = nn.GRU(self.hidden, self.hidden, batch_first=True)
        self.head = nn.Linear(self.hidden, self.out_features)

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states of <start>, x_0, ..., x_{L-2}: row t has read the prefix before token t.
        ``tokens`` ``(n, L)`` of ids in 0..vocab-1 -> ``(n, L, hidden)``."""
        tokens = _token_ids(tokens, "tokens", self.vocab - 1)
        if tokens.shape[1] == 0:
            raise ValueError("tokens must hold at least one position, got shape (n, 0)")
        start = torch.full_like(tokens[:, :1], self.start)                  # (n, 1)
        shifted = torch.cat([start, tokens[:, :-1]], dim=1)                 # (n, L)
        h, _ = self.gru(self.embed(shifted))                                # (n, L, hidden)
        return h

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The head's output at each position t, from <start>, x_0..x_{t-1}: ``(n, L, out)``."""
        return self.head(self.states(tokens))

    def start_tokens(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """A column of <start> tokens ``(n, 1)``, the first input of :meth:`step`."""
        n = _checks.integer(n, "n", minimum=0)
        return torch.full((n, 1), self.start, dtype=torch.long, device=device)

    def step(self, tokens: torch.Tensor,
             state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Read ``tokens`` ``(n, k)`` (ids in 0..vocab, <start> included) after the GRU ``state``
        ``(1, n, hidden)`` (``None``: nothing read yet, so begin with <start>). Returns the head's
        output after the last token read, ``(n, out_features)``, and the new state."""
        tokens = _token_ids(tokens, "tokens", self.vocab)
        if tokens.shape[1] == 0:
            raise ValueError("step needs at least one token to read, got shape (n, 0)")
        if state is not None:
            _checks.tensor(state, "state", ndim=3, last_dim=self.hidden)
            if state.shape[:2] != (1, len(tokens)):
                raise ValueError(f"state must have shape (1, {len(tokens)}, {self.hidden}) for "
                                 f"{len(tokens)} sequences, got {tuple(state.shape)}")
        out, state = self.gru(self.embed(tokens), state)                    # (n, k, hidden)
        return self.head(out[:, -1]), state                     # (n, out_features), (1, n, hidden)

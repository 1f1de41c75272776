"""One place that decides where tensors live, and how runs are made reproducible.

Every function in the library that creates tensors takes ``device=None`` and passes it
through :func:`get_device`, so a whole notebook moves to a GPU (or back to the CPU) by
setting one environment variable, ``MLBOOK_DEVICE``, before the kernel starts.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from . import _checks

ENV_VAR = "MLBOOK_DEVICE"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Resolve the device to compute on.

    Order: the ``device`` argument if given; else the ``MLBOOK_DEVICE`` environment variable;
    else CUDA, then Apple MPS, then the CPU, whichever is first available. Asking for a device
    that does not exist on this machine raises ``ValueError`` instead of silently falling back.
    """
    source = "device"
    if device is None:
        device = os.environ.get(ENV_VAR) or None
        source = f"environment variable {ENV_VAR}"
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{source} must be a string or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{source}={device!r} is not a device name ('cpu', 'cuda', 'cuda:1', 'mps')") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{source}={device!r}, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{source}={device!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps" and not _mps_available():
        raise ValueError(f"{source}={device!r}, but Apple MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{source}={device!r}: the library supports 'cpu', 'cuda' and 'mps'")
    return dev


def seed_all(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh CPU ``torch.Generator``.

    Library functions that draw random numbers take a ``generator`` argument; pass the one
    returned here and a notebook gives the same numbers on every run and every device.
    """
    seed = _checks.integer(seed, "seed", minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, generator: torch.Generator | None = None, device=None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal samples drawn on the CPU, then moved to ``device``.

    Drawing on the CPU makes a seeded stream identical on every device (CUDA's generator
    produces different numbers), which keeps notebook outputs checkable anywhere.
    """
    return torch.randn(*shape, generator=generator, dtype=dtype).to(get_device(device))


def rand(*shape: int, generator: torch.Generator | None = None, device=None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform samples on [0, 1), drawn on the CPU then moved to ``device`` (see :func:`randn`)."""
    return torch.rand(*shape, generator=generator, dtype=dtype).to(get_device(device))


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One categorical draw per row of ``probs`` ``(n, k)`` from uniforms ``u`` ``(n, 1)`` (e.g. from
    :func:`rand`, so the stream is the same on every device): the first index whose cumulative
    probability exceeds u, clamped against rounding in the last cumulative sum. Returns ``(n,)``."""
    return (probs.cumsum(-1) <= u).sum(-1).clamp(max=probs.shape[-1] - 1)


def randint(high: int, *shape: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Integers uniform on {0, ..., high - 1}, drawn on the CPU then moved to ``device``."""
    high = _checks.integer(high, "high", minimum=1)
    return torch.randint(high, shape, generator=generator).to(get_device(device))

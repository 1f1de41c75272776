"""Argument checks shared by the library: every public function fails loudly, naming the argument."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def tensor(x, name: str, *, ndim: int | Sequence[int] | None = None, last_dim: int | None = None,
           floating: bool = False, min_rows: int = 0) -> torch.Tensor:
    """Return ``x`` if it is a tensor of the requested shape, else raise a clear error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if min_rows and (x.ndim == 0 or x.shape[0] < min_rows):
        raise ValueError(f"{name} needs at least {min_rows} rows, got shape {tuple(x.shape)}")
    return x


def integer(value, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def real(value, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """Return ``value`` as a finite float, optionally required to be (non)positive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def choice(value, name: str, options: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``options``, else list the options in the error."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def features(X, name: str = "X", *, n_features: int | None = None, device=None,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return ``X`` (a tensor, NumPy array or nested list) as a 2-D ``(n_samples, n_features)`` tensor.

    The estimators' shared input check: rejects a wrong number of dimensions, an empty array, a
    feature count other than ``n_features`` (the one seen in ``fit``), and NaN or infinite entries,
    each with a message naming the argument. ``device=None`` keeps a tensor's device (arrays go to the CPU).
    """
    if isinstance(X, torch.Tensor):
        X = X.to(device=device if device is not None else X.device, dtype=dtype)
    else:
        try:
            X = torch.as_tensor(X, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a 2-D array of numbers: {err}") from None
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, but the estimator was fitted with {n_features}")
    # a sum is finite only if every entry is (NaN and infinities propagate): look entry by entry
    # only when it is not (it may also have overflowed)
    if not bool(torch.isfinite(X.sum())) and not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


class NotFittedError(RuntimeError):
    """An estimator's ``predict`` (or similar) was called before ``fit``."""


def fitted(estimator, *attributes: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has every attribute set by ``fit``."""
    missing = [a for a in attributes if getattr(estimator, a, None) is None]
    if missing:
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: call fit(X, y) first")

"""Coding exercises that check themselves.

A notebook poses an exercise as a function for the reader to write; a checker from this module
runs it on cases whose answers are known and prints ``right`` or ``not yet`` with a hint. The
checkers return a :class:`Verdict`, true only when every case passed, so a solution cell can
``assert`` it.

``check(fn, cases)`` is the one runner; each chapter adds a ``check_<name>(fn)`` that builds its
cases. A case is a :class:`Case`: arguments, a test of the result, and the hint shown on failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Case", "Verdict", "check", "check_reverse_kl"]


@dataclass(frozen=True)
class Case:
    """One check: call ``fn(*args)``; ``test(result)`` must hold; ``hint`` helps when it does not.

    Args:
        what: short description of the case, shown in the verdict.
        args: positional arguments for the reader's function.
        test: returns True when the result is right.
        hint: one sentence pointing at the likely mistake.
    """

    what: str
    args: tuple
    test: Callable[[object], bool]
    hint: str


class Verdict:
    """The outcome of :func:`check`: prints itself, and is true only when every case passed."""

    def __init__(self, name: str, passed: int, total: int, message: str):
        self.name, self.passed, self.total, self.message = name, passed, total, message

    def __bool__(self) -> bool:
        return self.passed == self.total

    def __repr__(self) -> str:
        return self.message


def check(fn: Callable, cases: Sequence[Case], *, name: str | None = None) -> Verdict:
    """Run ``fn`` on every case, stop at the first that fails, and report in words."""
    if not callable(fn):
        raise TypeError(f"the exercise needs a function, got {type(fn).__name__}")
    if not cases:
        raise ValueError("check needs at least one case")
    name = name or getattr(fn, "__name__", "your function")
    for k, case in enumerate(cases):
        try:
            result = fn(*case.args)
        except NotImplementedError:
            return _verdict(name, k, len(cases), f"not yet: {name} is not written yet.")
        except Exception as exc:                                    # the reader's bug, reported
            return _verdict(name, k, len(cases),
                            f"not yet: {name} raised {type(exc).__name__}: {exc} ({case.what}). "
                            f"Hint: {case.hint}")
        try:
            ok = bool(case.test(result))
        except Exception as exc:
            ok, detail = False, f" (the result could not be checked: {type(exc).__name__}: {exc})"
        else:
            detail = ""
        if not ok:
            return _verdict(name, k, len(cases),
                            f"not yet: {name} fails on {case.what}{detail}. Hint: {case.hint}")
    return _verdict(name, len(cases), len(cases), f"right: {name} passes all {len(cases)} checks.")


def _verdict(name, passed, total, message) -> Verdict:
    verdict = Verdict(name, passed, total, message)
    print(message)
    return verdict


def _tensor_like(result, shape) -> bool:
    return isinstance(result, torch.Tensor) and tuple(result.shape) == tuple(shape)


# ---------------------------------------------------------------- chapter: KL approximation

def check_reverse_kl(fn: Callable[[torch.Tensor], torch.Tensor]) -> Verdict:
    """Checker for the per-sample estimator of KL[p, q] from samples of q (the KL chapter).

    ``fn(log_ratio)`` maps log r = log p(x) - log q(x), at samples x ~ q, to one estimate per
    sample. It must be zero where p = q, never negative, and unbiased: on q = N(0, 1),
    p = N(mu, 0.8^2), its mean over 10^6 samples lies within four standard errors of
    KL[p, q] = log(1/0.8) + (0.8^2 + mu^2)/2 - 1/2. (With equal variances the two directions
    of KL are equal, and an estimator of the wrong one would pass.)
    """
    grid = torch.linspace(-6.0, 4.0, 201, dtype=torch.float64)
    cases = [
        Case("a batch of 201 log-ratios", (grid,), lambda k: _tensor_like(k, grid.shape),
             "return one estimate per sample, a tensor of the same shape as log_ratio."),
        Case("log r = 0 (p equal to q at the sample)", (torch.zeros(3, dtype=torch.float64),),
             lambda k: bool(torch.allclose(k, torch.zeros(3, dtype=torch.float64), atol=1e-12)),
             "where the two densities agree the estimate should be exactly zero."),
        Case("log r from -6 to 4", (grid,), lambda k: bool((k >= -1e-12).all()),
             "r log r alone is unbiased but goes negative for r < 1; add a control variate "
             "with mean zero under q."),
    ]
    sd = 0.8
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for mu in (0.5, 1.5):
        # log N(x; mu, sd^2) - log N(x; 0, 1)
        log_r = -math.log(sd) - (x - mu) ** 2 / (2 * sd**2) + x**2 / 2
        truth = math.log(1 / sd) + (sd**2 + mu**2) / 2 - 0.5

        def unbiased(k, truth=truth):
            return abs(float(k.mean()) - truth) < 4 * float(k.std()) / math.sqrt(k.numel())

        cases.append(Case(f"10^6 samples of q = N(0, 1) against p = N({mu}, {sd}^2)", (log_r,), unbiased,
                          "under q, E[r f(x)] is E_p[f(x)]: weight log r by r to average over p."))
    return check(fn, cases, name=getattr(fn, "__name__", "your estimator"))

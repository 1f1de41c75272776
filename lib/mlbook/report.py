"""Printing results: plain-text tables that nbval can compare, and a wall-clock timer."""

from __future__ import annotations

import numbers
import time
from collections.abc import Sequence

__all__ = ["table", "Timer"]


def _cell(value, digits: int) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        text = f"{float(value):.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"
    return str(value)


def table(rows: Sequence[Sequence], headers: Sequence[str], *, digits: int = 3) -> str:
    """Format ``rows`` as a fixed-width text table, floats rounded to ``digits`` decimals."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row must have {len(headers)} cells (one per header)")
    cells = [list(map(str, headers))] + [[_cell(v, digits) for v in r] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; synchronises CUDA so GPU work is counted."""

    def __enter__(self):
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self._start
        return False

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

"""Showing results: tables (text for output checks, HTML for the page) and a wall-clock timer."""

from __future__ import annotations

import html
import importlib.util
import numbers
import time
from collections.abc import Sequence

__all__ = ["table", "Table", "Timer", "best_of", "glue"]


def _cell(value, digits: int) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        text = f"{float(value):.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"
    return str(value)


class Table(str):
    """A table that is its fixed-width text (``print`` it, compare it) and shows as HTML.

    As the last expression of a notebook cell it displays as an HTML table that fits or
    scrolls inside the page's column; its plain-text form, the same characters as the
    string, is what output checks compare.
    """

    cells: list[list[str]]

    def __new__(cls, text: str, cells: list[list[str]]):
        self = super().__new__(cls, text)
        self.cells = cells
        return self

    def __repr__(self) -> str:
        return str.__str__(self)

    def _repr_html_(self) -> str:
        head, *body = self.cells
        row = lambda tag, cells: "<tr>" + "".join(                            # noqa: E731
            f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
        return ('<div class="mlbook-table"><table>'
                f"<thead>{row('th', head)}</thead>"
                f"<tbody>{''.join(row('td', r) for r in body)}</tbody></table></div>")


def table(rows: Sequence[Sequence], headers: Sequence[str], *, digits: int = 3) -> Table:
    """Format ``rows`` as a fixed-width text table, floats rounded to ``digits`` decimals.

    The result is a :class:`Table`: a ``str`` holding the text, shown as HTML in a notebook.
    """
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row must have {len(headers)} cells (one per header)")
    cells = [list(map(str, headers))] + [[_cell(v, digits) for v in r] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return Table("\n".join(lines), cells)


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


def best_of(fn, repeats: int = 5) -> float:
    """The shortest of ``repeats`` wall-clock times of ``fn()``, in seconds (CUDA synchronised).

    The minimum, not the mean: on a shared machine every disturbance only adds time.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    times = []
    for _ in range(repeats):
        with Timer() as t:
            fn()
        times.append(t.seconds)
    return min(times)


GLUE_PREFIX = "application/papermill.record/"   # what myst-nb reads back from a glued output


def glue(name: str, value, display: bool = False) -> None:
    """Keep ``value`` under ``name`` for the book's pages to paste (myst-nb's ``glue``).

    A derivation page quotes a number from a notebook run with
    ``{glue:text}`../notebooks/<nb>.ipynb::<name>:.3f` ``, so the text and the run cannot drift
    apart. The output is the one ``myst_nb.glue`` writes (the value's display formats, under
    :data:`GLUE_PREFIX` unless ``display``, named in the ``scrapbook`` metadata), made here
    without importing myst-nb, whose import costs more than a second in every notebook. Where
    myst-nb is not installed (Colab, Binder) there is no page to paste into: the value is shown
    when ``display`` is true and nothing else happens.
    """
    from IPython.display import display as show

    if importlib.util.find_spec("myst_nb") is None:
        if display:
            show(value)
        return
    from IPython.core.formatters import format_display_data

    bundle, metadata = format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    show({prefix + mime: data for mime, data in bundle.items()}, raw=True, metadata=metadata)

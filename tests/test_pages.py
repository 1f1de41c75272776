"""Source checks of the derivation pages that the Sphinx build does not warn about."""

import pathlib
import re

import pytest

PAGES = sorted((pathlib.Path(__file__).resolve().parents[1] / "book").glob("*.md"))
LIST_MARKER = re.compile(r"^\s*([-+*]|\d+\.)\s")
SINGLE_DOLLAR = re.compile(r"(?<![\\$])\$(?!\$)")


def broken_inline_math(text: str) -> list[int]:
    """Line numbers where an inline formula left open on the line before is cut by a list marker.

    Markdown reads a line starting with "+ ", "- ", "* " or "1. " as a list item even inside
    $...$, so the formula is split in two and reaches the reader as raw TeX.
    """
    lines = text.split("\n")
    return [i + 1 for i in range(1, len(lines))
            if LIST_MARKER.match(lines[i]) and len(SINGLE_DOLLAR.findall(lines[i - 1])) % 2 == 1]


def test_the_check_finds_a_formula_cut_by_a_list_marker():
    assert broken_inline_math("we write $a\n+ b$ here") == [2]
    assert broken_inline_math("we write $a + b$\n- a real item") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_inline_formula_is_cut_by_a_list_marker(page):
    assert broken_inline_math(page.read_text()) == []


# ---------------------------------------------------------------- text a reader should never see

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# How the book is made is not the reader's business. Each pattern names a phrase about the
# making of the book, not a word of the field: "an issue of convergence" and "a model
# specification" stay allowed.
MAKING = [
    r"\bthe issue(?:'s)?\s+(?:target|claim|asked|set|this)",
    r"\bissue's\b", r"\bthis issue\b", r"\bissue set\b",
    r"\b(?:chapter|book)'s (?:specification|issue|requirement)",
    r"\bspecification asked\b", r"\bthe requirement\b",
    r"\bCI (?:budget|runs?|jobs?|machine|time)\b", r"\b(?:in|on|by) CI\b", r"\bcontinuous integration\b", r"\bbuild machine\b", r"\bload average\b",
    r"\btest suite\b", r"\bunit tests?\b", r"\bnbval\b",
    r"\binstalled (?:PyTorch|torch|version)\b", r"\bPyTorch \(?2\.\d+\)? deprecates\b",
    r"\bwhere the book was written\b", r"\bshared (?:two-core )?machine\b",
    r"\beqs?\.\s*\([a-z0-9]+(?:-[a-z0-9]+)+\)",        # an internal equation label as text
]
MAKING_RE = re.compile("|".join(MAKING), re.IGNORECASE)


def reader_text(path: pathlib.Path) -> list[tuple[str, str]]:
    """(where, text) pairs of everything a reader of ``path`` sees."""
    if path.suffix == ".md":
        return [(path.name, path.read_text())]
    import json

    found = []
    for k, cell in enumerate(json.loads(path.read_text())["cells"]):
        if "remove-cell" in cell.get("metadata", {}).get("tags", []):
            continue
        found.append((f"{path.name} cell {k}", "".join(cell.get("source", ""))))
        for out in cell.get("outputs", []):
            text = out.get("text", "") or "".join(out.get("data", {}).get("text/plain", ""))
            found.append((f"{path.name} cell {k} output", "".join(text)))
    return found


def making_of(text: str) -> list[str]:
    return sorted({m.group(0) for m in MAKING_RE.finditer(text)})


def test_the_making_of_check_finds_phrases_and_spares_the_field():
    assert making_of("The issue's target was 99%.") == ["The issue's target"]
    assert making_of("# the book's CI budget") == ["CI budget"]
    assert making_of("both match eq. (ddpm-marginal)") == ["eq. (ddpm-marginal)"]
    assert making_of("The unit tests check this.") == ["unit tests"]
    assert making_of("on the build machine (load average 6)") == ["build machine", "load average"]
    field = ("An issue of convergence; the model specification; a 95% CI would need "
             "repeats; see eq. (3); the issue is that the gradient vanishes.")
    assert making_of(field) == []


@pytest.mark.parametrize("path", PAGES + NOTEBOOKS, ids=lambda p: p.name)
def test_no_reader_text_speaks_of_how_the_book_is_made(path):
    hits = [(where, making_of(text)) for where, text in reader_text(path) if making_of(text)]
    assert hits == []


def code_cell_lines(text: str) -> list[str]:
    """Lines of the executable code cells of a page written as a MyST notebook."""
    lines, inside = [], False
    for line in text.split("\n"):
        if line.startswith("```{code-cell}"):
            inside = True
        elif inside and line.startswith("```"):
            inside = False
        elif inside and not line.startswith(":"):
            lines.append(line)
    return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_code_lines_fit_the_column(page):
    assert [line for line in code_cell_lines(page.read_text()) if len(line) > 88] == []


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@pytest.mark.parametrize("path", PAGES + NOTEBOOKS, ids=lambda p: p.name)
def test_no_control_characters(path):
    """A backslash eaten by a script ("\\varphi" written as "\x0barphi") leaves a control
    character that MathJax cannot typeset."""
    hits = [(where, CONTROL.findall(text)) for where, text in reader_text(path) if CONTROL.search(text)]
    assert hits == []

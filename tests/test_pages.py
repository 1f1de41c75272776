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

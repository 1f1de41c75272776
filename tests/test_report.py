"""mlbook.report: plain-text tables and the wall-clock timer."""

import time

import pytest

from mlbook.report import Timer, table


def cells(text):
    return [line.split() for line in text.splitlines()]


def test_table_layout_header_rule_rows():
    text = table([["a", 1.5], ["bbbb", 22.25]], ["name", "value"])
    lines = text.splitlines()
    assert len(lines) == 4
    assert cells(text)[0] == ["name", "value"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert cells(text)[2:] == [["a", "1.500"], ["bbbb", "22.250"]]


def test_table_columns_are_right_aligned_to_the_widest_cell():
    text = table([["a", 1.0], ["bbbbbb", 123.0]], ["n", "x"], digits=1)
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1                    # every line equally wide
    widths = [len("bbbbbb"), len("123.0")]
    assert lines[1] == "-" * widths[0] + "  " + "-" * widths[1]
    for line in lines[:1] + lines[2:]:
        first, second = line[:widths[0]], line[widths[0] + 2:]
        assert line[widths[0]:widths[0] + 2] == "  "
        assert first == first.strip().rjust(widths[0]) and second == second.strip().rjust(widths[1])
    assert lines[2] == "     a    1.0"


@pytest.mark.parametrize("digits, value, expected", [(3, 3.14159, "3.142"), (1, 2.25, "2.2"),
                                                     (5, 1 / 3, "0.33333"), (2, 1e6, "1000000.00")])
def test_table_rounds_floats_to_digits(digits, value, expected):
    assert cells(table([[value]], ["v"], digits=digits))[2] == [expected]


def test_table_leaves_non_floats_alone():
    assert cells(table([[7, "x", None, True]], ["i", "s", "n", "b"]))[2] == ["7", "x", "None", "True"]


@pytest.mark.parametrize("value", [-0.0, -1e-9, -0.0004])
def test_table_never_prints_negative_zero(value):
    assert cells(table([[value]], ["v"], digits=3))[2] == ["0.000"]


def test_table_keeps_the_sign_of_real_negatives():
    assert cells(table([[-0.0006]], ["v"], digits=3))[2] == ["-0.001"]


def test_table_never_prints_negative_zero_with_zero_digits():
    assert cells(table([[-0.2]], ["v"], digits=0))[2] == ["0"]


def test_table_with_no_rows_is_header_and_rule():
    assert table([], ["a", "bb"]).splitlines() == ["a  bb", "-  --"]


@pytest.mark.parametrize("rows", [[[1.0]], [[1.0, 2.0, 3.0]], [[1.0, 2.0], [1.0]]])
def test_table_row_length_mismatch_raises(rows):
    with pytest.raises(ValueError, match="every row must have 2 cells"):
        table(rows, ["a", "b"])


def test_timer_measures_a_sleep():
    with Timer() as t:
        time.sleep(0.05)
    assert 0.05 <= t.seconds < 1.0


def test_timer_measures_nothing_as_almost_zero():
    with Timer() as t:
        pass
    assert 0 <= t.seconds < 0.05


def test_timer_does_not_swallow_exceptions():
    with pytest.raises(KeyError):
        with Timer() as t:
            raise KeyError("x")
    assert t.seconds >= 0


def test_table_is_its_text_and_shows_as_an_html_table():
    t = table([["a<b", 1.5]], ["name", "value"])
    assert isinstance(t, str) and repr(t) == str(t) == t
    html_text = t._repr_html_()
    assert html_text.count("<tr>") == 2 and "<th>value</th>" in html_text
    assert "<td>a&lt;b</td>" in html_text and "<td>1.500</td>" in html_text


def test_table_text_is_what_ipython_shows_as_plain_text():
    from IPython.core.formatters import PlainTextFormatter

    t = table([[1, 2.0]], ["i", "x"])
    assert PlainTextFormatter()(t) == str(t)


def test_glue_works_without_myst_nb(monkeypatch, capsys):
    import importlib.util

    from mlbook.report import glue

    real_find_spec = importlib.util.find_spec

    def no_myst(name, *args, **kwargs):
        return None if name.startswith("myst_nb") else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_myst)
    glue("some-key", 0.5)                       # no page to paste into: nothing happens
    assert capsys.readouterr().out == ""
    glue("some-key", 0.25, display=True)        # shown instead
    assert "0.25" in capsys.readouterr().out


def test_glue_writes_what_myst_nb_writes(monkeypatch):
    import IPython.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import myst_nb.ext.glue as myst_glue

    from mlbook.report import glue

    shown = []
    monkeypatch.setattr(myst_glue, "ipy_display", lambda *a, **k: shown.append((a, k)))
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: shown.append((a, k)))
    fig, _ = plt.subplots()
    for value in (0.5, "a sentence", table([[1, 2.0]], ["i", "x"]), fig):
        for display in (False, True):
            shown.clear()
            myst_glue.glue("key", value, display=display)
            glue("key", value, display=display)
            assert len(shown) == 2 and shown[0] == shown[1], (value, display)
    plt.close(fig)


def test_best_of_returns_the_shortest_time_and_refuses_bad_input():
    import time

    from mlbook.report import best_of

    calls = []
    pauses = iter([0.03, 0.0, 0.02])

    def fn():
        calls.append(1)
        time.sleep(next(pauses))

    assert best_of(fn, 3) < 0.015 and len(calls) == 3
    with pytest.raises(ValueError):
        best_of(fn, 0)
    with pytest.raises(TypeError):
        best_of("not callable")

"""mlbook.exercises: the runner and the KL chapter's checker."""

import pytest
import torch

from mlbook import kl
from mlbook.exercises import Case, check, check_reverse_kl


def reverse_kl(log_ratio):
    r = log_ratio.exp()
    return r * log_ratio - (r - 1)


def test_the_solution_passes_and_the_verdict_is_true(capsys):
    verdict = check_reverse_kl(reverse_kl)
    assert verdict and verdict.passed == verdict.total == 5
    assert capsys.readouterr().out.startswith("right:")


@pytest.mark.parametrize("wrong, says", [
    (lambda lr: (lr.exp() * lr), "negative"),            # unbiased but not non-negative
    (kl.k3, "N(0.5, 0.8^2)"),                           # estimates the other direction
    (lambda lr: lr.exp() * lr - (lr.exp() - 1) + 0.01, "zero"),
    (lambda lr: float((lr.exp() * lr - lr.exp() + 1).mean()), "same shape"),
])
def test_wrong_answers_fail_with_a_hint(wrong, says, capsys):
    verdict = check_reverse_kl(wrong)
    out = capsys.readouterr().out
    assert not verdict and out.startswith("not yet:") and "Hint:" in out and says in out


def test_an_unwritten_function_is_not_yet_written(capsys):
    def todo(log_ratio):
        raise NotImplementedError

    assert not check_reverse_kl(todo)
    assert "not written yet" in capsys.readouterr().out


def test_a_crash_is_reported_not_raised(capsys):
    assert not check(lambda x: 1 / x, [Case("zero", (0,), lambda y: True, "divide with care")])
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_bad_use_of_the_runner_is_refused():
    with pytest.raises(TypeError):
        check("not a function", [Case("c", (), bool, "h")])
    with pytest.raises(ValueError):
        check(lambda: 0, [])

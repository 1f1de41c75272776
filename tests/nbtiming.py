"""pytest plugin: per-notebook execution time for nbval runs, with a time budget.

Prints one line per notebook (the sum of its cells' setup, call and teardown times, so the kernel
start is included) and fails the session when a notebook exceeds MLBOOK_NOTEBOOK_BUDGET seconds
(default 60, the book's limit for the 2-core CPU it is tested on).
"""

from __future__ import annotations

import os
from collections import defaultdict

_seconds: dict[str, float] = defaultdict(float)


def _budget() -> float:
    return float(os.environ.get("MLBOOK_NOTEBOOK_BUDGET", "60"))


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    budget = _budget()
    terminalreporter.section(f"notebook execution times (budget {budget:g} s each)")
    for path, secs in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if secs > budget else ""
        terminalreporter.write_line(f"{secs:7.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus):
    over = [p for p, s in _seconds.items() if s > _budget()]
    if over and session.exitstatus == 0:
        session.exitstatus = 1

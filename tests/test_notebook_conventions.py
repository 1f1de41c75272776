"""The notebooks follow the book's conventions (see tests/notebook_tools.py)."""

import json

import notebook_tools


def test_notebooks_follow_conventions():
    assert notebook_tools.problems() == []


def test_setup_cell_uses_the_configured_repository():
    url, branch = notebook_tools.repository()
    assert url.startswith("https://github.com/")
    assert f"git+{url}@{branch}" in notebook_tools.setup_source()


def test_setup_cell_installs_only_when_missing(tmp_path, monkeypatch):
    # Locally mlbook is importable, so the set-up cell must not call pip at all.
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(notebook_tools.setup_source(), "setup-cell", "exec"), {})
    assert calls == []


def test_problems_reports_a_broken_notebook(tmp_path, monkeypatch):
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": "import sys; sys.path.insert(0, '..')"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "stray.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(notebook_tools, "NOTEBOOKS", tmp_path)
    found = "\n".join(notebook_tools.problems())
    assert "not the standard set-up cell" in found
    assert "not listed in _toc.yml" in found
    assert "checks no number" in found
    assert "sys.path" in found

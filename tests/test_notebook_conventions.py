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


def test_setup_cell_installs_the_library_from_a_clone_of_the_repository(tmp_path, monkeypatch):
    """What Colab does: run the set-up cell where mlbook is missing. The repository URL is
    replaced by a local bare clone of this one; pip installs into a folder of its own."""
    import importlib.util
    import subprocess

    root = notebook_tools.ROOT
    bare = tmp_path / "mlbook.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(root), str(bare)], check=True)
    url, branch = notebook_tools.repository()
    source = notebook_tools.setup_source().replace(f"git+{url}@{branch}",
                                                   f"git+file://{bare}@{branch}")
    target = tmp_path / "site"
    monkeypatch.setenv("PIP_TARGET", str(target))
    monkeypatch.setenv("PIP_NO_DEPS", "1")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlbook" else real_find_spec(name, *a))
    exec(compile(source, "setup-cell", "exec"), {})
    installed = target / "mlbook"
    assert (installed / "__init__.py").exists() and (installed / "widgets.py").exists()

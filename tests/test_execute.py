"""tests/execute.py: the output check (as strict as nbval's) and the cache's stamps."""

import nbformat
import pytest

import execute


def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title")] + list(cells)
    return nb


def cell(source, outputs, tags=("nbval-check-output",)):
    c = nbformat.v4.new_code_cell(source)
    c.metadata["tags"] = list(tags)
    c.outputs = [nbformat.from_dict(o) for o in outputs]
    return c


def stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def result(plain, png=None):
    data = {"text/plain": plain}
    if png:
        data["image/png"] = png
    return {"output_type": "execute_result", "execution_count": 1, "data": data, "metadata": {}}


def test_equal_outputs_pass_and_split_streams_are_merged():
    stored = notebook(cell("print(1)", [stream("a\nb\n")]))
    run = notebook(cell("print(1)", [stream("a\n"), stream("b\n")]))
    assert execute.compare(run, stored) == []


def test_a_changed_number_in_a_checked_cell_fails():
    stored = notebook(cell("x", [stream("err 0.125\n")]))
    run = notebook(cell("x", [stream("err 0.126\n")]))
    [problem] = execute.compare(run, stored)
    assert "0.125" in problem and "0.126" in problem


def test_unchecked_and_ignored_cells_are_not_compared():
    stored = notebook(cell("x", [stream("1\n")], tags=()),
                      cell("y", [stream("2\n")], tags=("nbval-check-output", "nbval-ignore-output")))
    run = notebook(cell("x", [stream("9\n")], tags=()),
                   cell("y", [stream("9\n")], tags=("nbval-check-output", "nbval-ignore-output")))
    assert execute.compare(run, stored) == []


def test_images_are_skipped_but_text_beside_them_is_compared():
    stored = notebook(cell("t", [result("table", png="AAAA")]))
    assert execute.compare(notebook(cell("t", [result("table", png="BBBB")])), stored) == []
    assert execute.compare(notebook(cell("t", [result("other", png="AAAA")])), stored) != []


def test_a_new_kind_of_output_fails():
    stored = notebook(cell("t", [stream("x\n")]))
    run = notebook(cell("t", [stream("x\n"), stream("warning\n", name="stderr")]))
    [problem] = execute.compare(run, stored)
    assert "stderr" in problem


def test_carriage_returns_are_applied_as_a_terminal_would():
    stored = notebook(cell("t", [stream("done\n")]))
    assert execute.compare(notebook(cell("t", [stream("10%\rdone\n")])), stored) == []


def test_the_environment_stamp_follows_the_requirements(tmp_path, monkeypatch):
    for name in ("requirements.txt", "pyproject.toml"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(execute, "ROOT", tmp_path)
    before = execute.environment_stamp()
    assert execute.environment_stamp() == before
    (tmp_path / "requirements.txt").write_text("numpy\n")
    assert execute.environment_stamp() != before


def _code_notebook(code: str):
    import nbformat
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])


def test_the_library_stamp_follows_the_modules_a_document_uses(tmp_path, monkeypatch):
    lib = tmp_path / "mlbook"
    lib.mkdir()
    (lib / "__init__.py").write_text("from .device import get_device\n")
    (lib / "device.py").write_text("x = 1\n")
    (lib / "svm.py").write_text("from . import _checks\nfrom .device import get_device\n")
    (lib / "_checks.py").write_text("y = 1\n")
    (lib / "flows.py").write_text("z = 1\n")
    monkeypatch.setattr(execute, "LIB", lib)
    svm_doc = _code_notebook("from mlbook import (plot,\n    svm)\nimport torch")
    flows_doc = _code_notebook("import mlbook.flows as F")
    before = execute.library_stamp(svm_doc), execute.library_stamp(flows_doc)
    (lib / "flows.py").write_text("z = 2\n")                        # used by one document only
    assert execute.library_stamp(svm_doc) == before[0]
    assert execute.library_stamp(flows_doc) != before[1]
    (lib / "_checks.py").write_text("y = 2\n")                      # imported by svm.py
    assert execute.library_stamp(svm_doc) != before[0]
    flows_now = execute.library_stamp(flows_doc)
    (lib / "device.py").write_text("x = 2\n")                       # imported by the package
    assert execute.library_stamp(flows_doc) != flows_now


def test_documents_are_the_books_notebooks_and_executable_pages():
    docs = [p.relative_to(execute.ROOT).as_posix() for p in execute.documents()]
    assert "notebooks/kl_approximation.ipynb" in docs and "book/kl.md" in docs
    assert "book/bibliography.md" not in docs


@pytest.mark.parametrize("budget, over", [("60", []), ("1", ["a.ipynb"])])
def test_the_budget_is_on_cpu_time_not_wall_time(budget, over, monkeypatch, capsys):
    monkeypatch.setenv("MLBOOK_NOTEBOOK_BUDGET", budget)
    path = execute.ROOT / "a.ipynb"
    found = execute.report({path: (95.0, 20.0, False)}, [path])   # busy machine: wall > budget
    assert [p.name for p in found] == over
    assert "whole book: 20.0 s of kernel CPU time" in capsys.readouterr().out

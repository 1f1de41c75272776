"""Fast tests of the pieces of ``tests/gpu_check.py`` (cell extraction, glue, tolerance)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gpu_check  # noqa: E402

if str(gpu_check.LIB) not in sys.path:           # a plain python3 without the package installed
    sys.path.append(str(gpu_check.LIB))

PAGE = """---
file_format: mystnb
kernelspec:
  name: python3
---
# Title

Text with `inline` code.

```{code-cell} python
:tags: [remove-cell]
setup = 1
```

```{code-cell} python
:tags: [hide-input, remove-output]
x = 1
print(x)
```

````{code-cell} ipython3
---
tags: [hide-input]
---
y = 2
```text
not a fence that ends the cell
```
````

```python
not_a_code_cell = True
```
"""


def _cell(source, tags=()):
    """A notebook code cell as JSON."""
    return {"cell_type": "code", "id": "x", "metadata": {"tags": list(tags)}, "outputs": [],
            "execution_count": None, "source": source}


def test_notebook_cells_skip_markdown_and_remove_cell(tmp_path):
    nb = {"cells": [_cell(["import sys\n", "pip = 1"], ["remove-cell"]),
                    {"cell_type": "markdown", "metadata": {}, "source": "# t"},
                    _cell("a = 1\n", ["hide-input"]), _cell(["b = a + 1"])]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert gpu_check.code_cells(path) == ["a = 1\n", "b = a + 1"]
    assert gpu_check.code_cells(path, keep_removed=True)[0] == "import sys\npip = 1"


def test_myst_cells_tags_and_fences(tmp_path):
    cells = gpu_check.myst_cells(PAGE)
    assert [tags for _, tags in cells] == [["remove-cell"], ["hide-input", "remove-output"],
                                           ["hide-input"]]
    assert cells[1][0] == "x = 1\nprint(x)"
    assert cells[2][0].startswith("y = 2\n```text") and cells[2][0].endswith("```")
    path = tmp_path / "p.md"
    path.write_text(PAGE)
    assert gpu_check.is_executable(path)
    (tmp_path / "q.md").write_text("# Prose only\n\n```python\nx = 1\n```\n")
    assert not gpu_check.is_executable(tmp_path / "q.md")
    assert gpu_check.code_cells(path) == [cells[1][0], cells[2][0]]


def test_split_cell_shows_last_expression_and_skips_magics():
    body, last = gpu_check.split_cell("%matplotlib inline\nx = 2\nx * 3")
    ns = {}
    exec(compile(body, "c", "exec"), ns)
    assert eval(compile(last, "c", "eval"), ns) == 6
    assert gpu_check.split_cell("x = 1")[1] is None


def test_as_number():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    assert gpu_check.as_number(np.float32(0.5)) == 0.5
    assert gpu_check.as_number(torch.tensor(2.0)) == 2.0
    assert gpu_check.as_number(3) == 3.0
    assert gpu_check.as_number(True) is None
    assert gpu_check.as_number("1.0") is None
    assert gpu_check.as_number(torch.ones(2)) is None


def test_disagreements_tolerance():
    cpu = {"a": 1.0, "b": 0.0, "c": 100.0, "n": float("nan")}
    assert gpu_check.disagreements({"a": 1.04, "b": 5e-4, "c": 95.5, "n": float("nan")}, cpu) == []
    bad = gpu_check.disagreements({"a": 1.06, "b": 2e-3, "c": 100.0, "n": 1.0, "z": 1.0}, cpu)
    assert [line.split(":")[0] for line in bad] == ["a", "b", "n", "z"]
    assert "only on the device" in bad[-1]
    assert gpu_check.disagreements({"a": 1.06}, {"a": 1.0}, rtol=0.1) == []


def test_cache_glue_reads_scrapbook_outputs():
    prefix = "application/papermill.record/"
    out = {"output_type": "display_data", "metadata": {"scrapbook": {
        "name": "k-x", "mime_prefix": prefix}}, "data": {prefix + "text/plain": "0.25"}}
    fig = {"output_type": "display_data", "metadata": {"scrapbook": {
        "name": "k-fig", "mime_prefix": prefix}}, "data": {prefix + "text/plain": "<Figure>"}}
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": [out, fig]}]}
    assert gpu_check.cache_glue(nb) == {"k-x": 0.25}


def test_float64_scan():
    assert gpu_check.uses_float64(["a = 1", "x = torch.zeros(2, dtype=torch.float64)"])
    assert gpu_check.uses_float64(["y = x.double()"])
    assert not gpu_check.uses_float64(["import numpy as np\nnp.float64(1)", "torch.float32"])


def test_run_cells_with_stand_ins_captures_glue():
    """A tiny synthetic document run with the stand-ins: display, figures, both glues, errors."""
    from mlbook import report

    names = ["IPython", "IPython.display", "myst_nb"]
    saved, saved_glue = {k: sys.modules.get(k) for k in names}, report.glue
    glued = {}
    try:
        gpu_check.install_stand_ins(glued)
        cells = ["from myst_nb import glue\nfrom mlbook.report import glue as glue2",
                 "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))",
                 "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                 "fig, ax = plt.subplots()\nax.plot([1, 2])\n"
                 "glue('t-fig', fig, display=False)\nglue('t-a', 0.5)\nglue2('t-b', 3)",
                 "fig"]
        assert gpu_check.run_cells(cells, glued) == (4, None)
        assert glued == {"t-a": 0.5, "t-b": 3.0}
        n, error = gpu_check.run_cells(["a = 1", "assert a == 2, 'a is not two'", "b = 1"], {})
        assert n == 1 and "cell 2" in error and "a is not two" in error
    finally:
        report.glue = saved_glue
        for k, module in saved.items():
            if module is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = module


def test_check_one_status(monkeypatch):
    """Statuses from (stubbed) runs: agreement, disagreement, failure, float64 on MPS."""
    args = argparse.Namespace(device="cuda", timeout=1, reference="auto", rtol=0.05, atol=1e-3)
    doc = pathlib.Path("book/kl.md")
    runs = {"cuda": {"wall": 1.0, "cpu": 1.0, "glue": {"k": 1.0}, "error": None}}
    monkeypatch.setattr(gpu_check, "run_document", lambda path, dev, t, site: runs[dev])
    monkeypatch.setattr(gpu_check, "cached_reference",
                        lambda path: {"wall": 2.0, "glue": {"k": 1.01}})
    row, failed = gpu_check.check_one(doc, args, None)
    assert not failed and row[4].startswith("ok") and row[1] == "2.0 (cache)"
    monkeypatch.setattr(gpu_check, "cached_reference", lambda path: None)
    runs["cpu"] = {"wall": 3.0, "cpu": 3.0, "glue": {"k": 2.0}, "error": None}
    row, failed = gpu_check.check_one(doc, args, None)
    assert failed and row[4].startswith("DIFF") and row[5].startswith("k:")
    runs["cuda"] = {"wall": 1.0, "cpu": 1.0, "glue": {}, "error": "cell 3: boom"}
    row, failed = gpu_check.check_one(doc, args, None)
    assert failed and row[4].startswith("FAIL")
    args.device = "mps"
    row, failed = gpu_check.check_one(doc, args, None)
    assert not failed and row[4] == "needs CPU or CUDA (float64)"

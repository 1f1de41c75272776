"""The Binder configuration: the notebooks' dependencies only, CPU torch, the library itself."""

import ast
import pathlib
import re
import sys

import notebook_tools

BINDER = pathlib.Path(__file__).resolve().parents[1] / ".binder"


def requirements() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_binder_installs_cpu_torch_and_the_library():
    lines = requirements()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert any(re.match(r"torch\b", line) for line in lines)
    assert "." in lines                                  # the book's library, from the repository


def test_binder_leaves_out_the_build_and_test_tools():
    names = {re.split(r"[<>=\[ ]", line)[0].lower() for line in requirements() if not line.startswith("-")}
    assert not names & {"jupyter-book", "playwright", "pytest", "sphinx-book-theme", "jupyter-cache"}


def test_binder_has_every_package_the_notebooks_import():
    names = {re.split(r"[<>=\[ ]", line)[0].lower() for line in requirements() if not line.startswith("-")}
    pyproject = (BINDER.parent / "pyproject.toml").read_text()
    provided = names | {"mlbook", "numpy", "matplotlib", "ipywidgets", "sklearn", "tqdm", "ipython"}
    imported = set()
    for path in notebook_tools.notebooks():
        for cell in notebook_tools._load(path)["cells"]:
            if cell["cell_type"] == "code":
                for node in ast.walk(ast.parse(notebook_tools._source(cell))):
                    if isinstance(node, ast.Import):
                        imported |= {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        imported.add(node.module.split(".")[0])
    third_party = {m.lower() for m in imported} - set(sys.stdlib_module_names)
    assert "scikit-learn" in pyproject
    assert third_party <= provided, f"Binder would lack {sorted(third_party - provided)}"

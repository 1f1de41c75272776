"""Maintenance of the notebooks under notebooks/ (used by the Makefile and by the tests).

    python tests/notebook_tools.py sync      # write the standard set-up cell into every notebook
    python tests/notebook_tools.py record    # run every notebook, store the outputs nbval checks
    python tests/notebook_tools.py check     # exit 1 if a notebook breaks the conventions

Conventions checked: the first cell is the set-up cell built from the repository URL in
_config.yml (the one place it is written); the notebook is in _toc.yml; it checks at least one
number (a cell tagged nbval-check-output, or an assert); only tagged cells keep outputs, so
the repository stores small notebooks and the output check (tests/execute.py) compares exactly
what is meant to be compared; code lines are at most 88 characters; the last cell is a
"## What we saw" section.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHECK_TAG = "nbval-check-output"
MAX_LINE = 88                      # characters per code line, the set-up cell included
CLOSING = "## What we saw"         # every notebook ends with what the run showed

SETUP_TEMPLATE = '''\
# Set-up: where the book's library is missing (Colab), install it; locally, nothing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("mlbook") is None:
    package = "mlbook @ git+{url}@{branch}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)'''


def repository() -> tuple[str, str]:
    """The repository URL and branch from _config.yml."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def setup_source() -> str:
    url, branch = repository()
    return SETUP_TEMPLATE.format(url=url, branch=branch)


def notebooks() -> list[pathlib.Path]:
    return sorted(p for p in NOTEBOOKS.glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def _save(path: pathlib.Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _is_checked(cell: dict) -> bool:
    return CHECK_TAG in cell.get("metadata", {}).get("tags", [])


def sync() -> None:
    """Make the first cell of every notebook the standard set-up cell (hidden in the book)."""
    cell = {"cell_type": "code", "execution_count": None, "id": "setup",
            "metadata": {"tags": ["remove-cell"]}, "outputs": [],
            "source": setup_source().splitlines(keepends=True)}
    for path in notebooks():
        nb = _load(path)
        first = nb["cells"][0] if nb["cells"] else {}
        if first.get("cell_type") == "code" and _source(first) == setup_source():
            continue                                              # already standard: leave the file alone
        if first.get("cell_type") == "code" and "remove-cell" in first.get("metadata", {}).get("tags", []):
            nb["cells"][0] = cell
        else:
            nb["cells"].insert(0, cell)
        _save(path, nb)


def strip(nb: dict) -> dict:
    """Keep outputs (and execution counts) only in cells nbval checks; drop widget state."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        if not _is_checked(cell):  # nbval skips unrun cells, so checked ones keep their count
            cell["outputs"] = []
            cell["execution_count"] = None
    nb["metadata"].pop("widgets", None)
    return nb


def record(paths: list[pathlib.Path]) -> None:
    """Execute notebooks in a fresh kernel and store the outputs of the checked cells."""
    import os

    import nbformat
    from nbclient import NotebookClient

    from execute import KERNEL_ENV

    # as the checks run them: one torch thread, no progress bars (they would reach the outputs)
    os.environ.update(KERNEL_ENV)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, path)
        _save(path, strip(_load(path)))
        print(f"recorded {path.relative_to(ROOT)}")


def problems() -> list[str]:
    """Every broken convention, one message each (empty when all is well)."""
    found = []
    toc = (ROOT / "_toc.yml").read_text()
    expected = setup_source()
    all_nbs = notebooks()
    if not all_nbs:
        found.append("no notebooks found under notebooks/")
    for path in all_nbs:
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        nb = _load(path)
        cells = nb["cells"]
        if not cells or cells[0]["cell_type"] != "code" or _source(cells[0]) != expected:
            found.append(f"{rel}: first cell is not the standard set-up cell (run `make sync-notebooks`)")
        if rel.with_suffix("").as_posix() not in toc:
            found.append(f"{rel}: not listed in _toc.yml")
        code = [c for c in cells if c["cell_type"] == "code"]
        if not any(_is_checked(c) for c in code) and not any("assert " in _source(c) for c in code):
            found.append(f"{rel}: checks no number (no {CHECK_TAG} cell and no assert)")
        for c in code:
            if _is_checked(c) and not c.get("outputs"):
                found.append(f"{rel}: a {CHECK_TAG} cell has no stored output (run `make record-notebooks`)")
            if not _is_checked(c) and c.get("outputs"):
                found.append(f"{rel}: an unchecked cell stores outputs (run `make record-notebooks`)")
            if "sys.path" in _source(c):
                found.append(f"{rel}: edits sys.path; import the installed library instead")
            long = [line for line in _source(c).splitlines() if len(line) > MAX_LINE]
            if long:
                found.append(f"{rel}: a code cell has {len(long)} line(s) over {MAX_LINE} characters, "
                             f"e.g. {long[0][:60]!r}...")
        last = cells[-1] if cells else {}
        if last.get("cell_type") != "markdown" or not _source(last).startswith(CLOSING):
            found.append(f"{rel}: does not end with a '{CLOSING}' section")
    return found


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "check"
    if command == "sync":
        sync()
    elif command == "record":
        record([pathlib.Path(a).resolve() for a in argv[2:]] or notebooks())
    elif command == "check":
        issues = problems()
        print("\n".join(issues) or "notebooks follow the conventions")
        return 1 if issues else 0
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

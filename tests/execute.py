"""Execute the book's notebooks once, into the cache the book build reads, and check them.

    python tests/execute.py              # execute what the cache lacks, JOBS kernels at a time
    python tests/execute.py --check      # ... then compare checked outputs and time budgets
    python tests/execute.py --check notebooks/kl_approximation.ipynb   # some documents only

Every executable document of the book (the notebooks, and the pages written as MyST notebooks)
runs in a fresh kernel; the executed notebook goes into jupyter-cache at ``_build/.jupyter_cache``,
where the book build (``execute_notebooks: cache``) picks it up instead of executing it again.

The cache holds a notebook as long as its code cells are unchanged (jupyter-cache's own key), the
library modules it uses are unchanged (the modules its code names, with everything they import,
hashed into the record: editing ``svm.py`` runs the SVM documents again, not the diffusion ones),
and the environment is unchanged (``requirements.txt``, ``pyproject.toml``, the installed packages
and Python are hashed into a stamp; a different stamp empties the cache).

``--check`` then, for every document:
- compares the outputs of the cells tagged ``nbval-check-output`` with those stored in the
  repository, as nbval does (streams merged by name; images, widget views and metadata skipped;
  cells also tagged ``nbval-ignore-output`` skipped);
- budgets each kernel's CPU time (user + system, start-up included): over MLBOOK_NOTEBOOK_BUDGET
  seconds (default 60) fails. Wall time is printed too, and only warned about: on a machine
  busy with other work it grows without the notebook getting any slower.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("MLBOOK_EXECUTION_CACHE", ROOT / "_build" / ".jupyter_cache"))
STAMP = "mlbook-environment.txt"
CHECK_TAG, IGNORE_TAG = "nbval-check-output", "nbval-ignore-output"
SKIP_KEYS = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
             "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}
TIMEOUT = 300                      # seconds per cell, as in _config.yml
# Each kernel: one torch thread (two kernels share the two cores), no progress bars (their
# text would reach the checked outputs).
KERNEL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MLBOOK_PROGRESS": "0"}


# ------------------------------------------------------------------ documents and the cache

def toc_files() -> list[str]:
    """Every page of the book as named in _toc.yml (no suffix), in reading order."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return files


def documents() -> list[pathlib.Path]:
    """Every executable document in _toc.yml: notebooks and MyST-notebook pages, in book order."""
    files = toc_files()
    found = []
    for name in files:
        for suffix in (".ipynb", ".md"):
            path = ROOT / f"{name}{suffix}"
            if path.exists() and (suffix == ".ipynb" or _is_myst_notebook(path)):
                found.append(path)
    return found


def _is_myst_notebook(path: pathlib.Path) -> bool:
    text = path.read_text()
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1]
    return "file_format: mystnb" in front or ("kernelspec:" in front and "{code-cell}" in text)


def read(path: pathlib.Path):
    """The document as a notebook, read the way myst-nb reads it (so the cache keys agree)."""
    import nbformat

    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    return read_myst_markdown_notebook(path.read_text(), MdParserConfig(), path=str(path))


def environment_stamp() -> str:
    """Hash of what every notebook depends on besides its own code and the library."""
    h = hashlib.sha256()
    for path in [ROOT / "requirements.txt", ROOT / "pyproject.toml"]:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    packages = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                      if d.metadata["Name"] != "mlbook")
    h.update("\n".join(packages).encode())
    h.update(sys.version.encode())
    return h.hexdigest()


LIB = ROOT / "lib" / "mlbook"
_RELATIVE = re.compile(r"^\s*from \.(\w*) import (\([^)]*\)|[^\n#]*)", re.MULTILINE)
_NAMED = re.compile(r"mlbook\.(\w+)|from mlbook import (\([^)]*\)|[^\n#]*)")


def _imports(text: str, modules: set[str], pattern: re.Pattern) -> set[str]:
    """Library modules imported in ``text``: ``from .x import ...``, ``from . import x, y``."""
    found = set()
    for sub, names in pattern.findall(text):
        found.add(sub)
        found.update(n.split(" as ")[0].strip() for n in names.strip("()").split(","))
    return found & modules


def library_stamp(nb) -> str:
    """Hash of the library modules a document uses: those its code names, and what they import."""
    modules = {p.stem for p in LIB.glob("*.py")}
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    todo, seen = _imports(code, modules, _NAMED) | {"__init__"}, set()
    while todo:
        name = todo.pop()
        seen.add(name)
        todo |= _imports((LIB / f"{name}.py").read_text(), modules, _RELATIVE) - seen
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + (LIB / f"{name}.py").read_bytes() + b"\0")
    return h.hexdigest()


def is_current() -> bool:
    """Whether the cache was filled in the present environment."""
    path = CACHE / STAMP
    return path.exists() and path.read_text() == environment_stamp()


def open_cache():
    """The jupyter-cache, emptied first if the environment changed since it was filled."""
    from jupyter_cache import get_cache

    cache = get_cache(str(CACHE))
    stamp, path = environment_stamp(), CACHE / STAMP
    if not path.exists() or path.read_text() != stamp:
        if any(True for _ in cache.list_cache_records()):
            print("requirements, packages or Python changed: executing every document again")
        cache.clear_cache()
        cache = get_cache(str(CACHE))
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(stamp)
    return cache


def cached(cache, nb):
    """The cache record of this notebook's code, or None."""
    try:
        return cache.match_cache_notebook(nb)
    except KeyError:
        return None


# ------------------------------------------------------------------ execution (worker processes)

def _execute(path_text: str) -> dict:
    """Run one document in a fresh kernel. Returns the executed notebook (as JSON) or the error."""
    import psutil
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ.update(KERNEL_ENV)
    path = pathlib.Path(path_text)
    nb = read(path)
    usage = {}

    class Client(NotebookClient):
        def set_widgets_metadata(self):          # called after the last cell, kernel still alive
            cpu = psutil.Process(self.km.provisioner.process.pid).cpu_times()
            usage["cpu"] = cpu.user + cpu.system + cpu.children_user + cpu.children_system

    client = Client(nb, timeout=TIMEOUT, kernel_name="python3", allow_errors=False,
                    store_widget_state=False, record_timing=False, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}   # kernel chatter
        client.execute(**quiet)
    except CellExecutionError as exc:
        return {"path": path_text, "error": str(exc)}
    except Exception:
        return {"path": path_text, "error": traceback.format_exc()}
    import nbformat

    nb.metadata.pop("widgets", None)
    return {"path": path_text, "nb": nbformat.writes(nb), "wall": time.perf_counter() - start,
            "cpu": usage.get("cpu", float("nan"))}


def execute(paths: list[pathlib.Path], jobs: int, cache=None) -> tuple[dict, dict]:
    """Execute the documents the cache lacks. Returns (timings, errors), keyed by path."""
    import nbformat
    from jupyter_cache.base import CacheBundleIn

    cache = cache or open_cache()
    timings, errors, todo, stamps = {}, {}, [], {}
    for path in paths:
        nb = read(path)
        stamps[path] = library_stamp(nb)              # taken before running: edits during a run count
        record = cached(cache, nb)
        if record is None or (record.data or {}).get("library") != stamps[path]:
            todo.append(path)
        else:
            data = record.data or {}
            timings[path] = (data.get("execution_seconds"), data.get("cpu_seconds"), True)
    if todo:
        print(f"executing {len(todo)} of {len(paths)} documents, {jobs} at a time "
              f"({len(paths) - len(todo)} unchanged, from the cache)", flush=True)
    with futures.ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for result in pool.map(_execute, [str(p) for p in todo]):
            path = pathlib.Path(result["path"])
            rel = path.relative_to(ROOT)
            if "error" in result:
                errors[path] = result["error"]
                print(f"FAILED  {rel}\n{result['error']}", flush=True)
                continue
            nb = nbformat.reads(result["nb"], as_version=4)
            cache.cache_notebook_bundle(
                CacheBundleIn(nb, str(path), data={"execution_seconds": result["wall"],
                                                   "cpu_seconds": result["cpu"],
                                                   "library": stamps[path]}),
                check_validity=False, overwrite=True)
            timings[path] = (result["wall"], result["cpu"], False)
            print(f"{result['wall']:6.1f} s wall {result['cpu']:6.1f} s CPU  {rel}", flush=True)
    return timings, errors


# ------------------------------------------------------------------ output checks (as nbval)

def _coalesce(outputs: list) -> list[dict]:
    """Streams merged by name, carriage returns and backspaces applied (nbval's rules)."""
    import re

    merged, streams = [], {}
    for out in outputs:
        out = dict(out)
        if out.get("output_type") == "stream":
            if out["name"] in streams:
                streams[out["name"]]["text"] += out["text"]
                continue
            streams[out["name"]] = out
        merged.append(out)
    for out in streams.values():
        text = out["text"]
        while True:
            shorter = re.sub(r"[^\n]\x08", "", text)
            if shorter == text:
                break
            text = shorter
        out["text"] = re.sub(r"^.*\r(?=[^\n])", "", text, flags=re.MULTILINE)
    return merged


def _flatten(outputs: list) -> dict[str, list]:
    flat = defaultdict(list)
    for out in _coalesce(outputs):
        if out.get("output_type") == "stream":
            flat[out["name"]].append(out["text"])
            continue
        for key, value in out.items():
            if key == "data":
                for mime, content in value.items():
                    if mime not in SKIP_KEYS:
                        flat[mime].append(content)
            elif key not in SKIP_KEYS:
                flat[key].append(value)
    return flat


def compare(executed, stored) -> list[str]:
    """Every difference between the checked cells' stored and new outputs, one message each."""
    problems = []
    run_cells = [c for c in executed.cells if c.cell_type == "code"]
    ref_cells = [c for c in stored.cells if c.cell_type == "code"]
    for k, (new, ref) in enumerate(zip(run_cells, ref_cells)):
        tags = ref.get("metadata", {}).get("tags", [])
        if CHECK_TAG not in tags and "# NBVAL_CHECK_OUTPUT" not in ref.source:
            continue
        if IGNORE_TAG in tags:
            continue
        want, got = _flatten(ref.get("outputs", [])), _flatten(new.get("outputs", []))
        head = ref.source.strip().splitlines()[0] if ref.source.strip() else ""
        if set(want) != set(got):
            problems.append(f"code cell {k} ({head!r}): output kinds {sorted(got)} "
                            f"instead of the stored {sorted(want)}")
            continue
        for key in want:
            if want[key] != got[key]:
                problems.append(f"code cell {k} ({head!r}), {key}: stored\n"
                                f"{_show(want[key])}\n---- now\n{_show(got[key])}")
                break
    return problems


def _show(values: list) -> str:
    return "\n".join(v if isinstance(v, str) else json.dumps(v) for v in values)


def check(paths: list[pathlib.Path], cache=None) -> dict[pathlib.Path, list[str]]:
    """Compare every document's checked outputs with the executed ones from the cache."""
    cache = cache or open_cache()
    found = {}
    for path in paths:
        stored = read(path)
        record = cached(cache, stored)
        if record is None:
            found[path] = ["not in the cache (it failed to execute)"]
            continue
        problems = compare(cache.get_cache_bundle(record.pk).nb, stored)
        if problems:
            found[path] = problems
    return found


# ------------------------------------------------------------------ command line

def budget() -> float:
    return float(os.environ.get("MLBOOK_NOTEBOOK_BUDGET", "60"))


def report(timings: dict, paths: list[pathlib.Path]) -> list[pathlib.Path]:
    """Print the time table; return the documents whose kernel CPU time is over budget."""
    limit, over = budget(), []
    print(f"\nkernel times per document (budget {limit:g} s of CPU each; wall time for reference)")
    total_cpu = total_wall = 0.0
    rows = sorted((p for p in paths if p in timings), key=lambda p: -(timings[p][1] or 0))
    for path in rows:
        wall, cpu, from_cache = timings[path]
        wall, cpu = wall or float("nan"), cpu or float("nan")
        total_cpu += cpu if cpu == cpu else 0.0
        total_wall += wall if wall == wall else 0.0
        flag = ""
        if cpu > limit:
            flag, _ = "  OVER BUDGET", over.append(path)
        elif wall > limit:
            flag = "  (wall time over budget: a busy machine? CPU time is within it)"
        note = "  (cached)" if from_cache else ""
        print(f"{cpu:7.1f} s CPU {wall:7.1f} s wall  {path.relative_to(ROOT)}{note}{flag}")
    print(f"whole book: {total_cpu:.1f} s of kernel CPU time ({total_wall:.1f} s of kernel wall time)"
          f" in {len(rows)} documents")
    return over


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path, help="documents (default: all)")
    parser.add_argument("--check", action="store_true", help="compare outputs, apply the budget")
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.paths] or documents()
    missing = [p for p in paths if not p.exists()]
    if missing:
        parser.error(f"no such document: {missing}")
    start = time.perf_counter()
    cache = open_cache()
    timings, errors = execute(paths, args.jobs, cache)
    print(f"execution: {time.perf_counter() - start:.0f} s")
    if not args.check:
        return 1 if errors else 0
    over = report(timings, paths)
    mismatches = check([p for p in paths if p not in errors], cache)
    for path, problems in mismatches.items():
        print(f"\nCHECKED OUTPUT CHANGED  {path.relative_to(ROOT)}")
        for problem in problems:
            print(problem)
    failed = len(errors) + len(mismatches) + len(over)
    print(f"\n{len(paths) - failed} of {len(paths)} documents passed"
          + (f"; {len(errors)} failed to run" if errors else "")
          + (f"; {len(mismatches)} with changed checked outputs" if mismatches else "")
          + (f"; {len(over)} over the CPU budget" if over else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

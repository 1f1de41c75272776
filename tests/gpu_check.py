"""Run the book's code on a GPU with nothing but PyTorch's scientific stack: ``make gpu-check``.

    python3 tests/gpu_check.py                        # every document, MLBOOK_DEVICE=cuda
    python3 tests/gpu_check.py notebooks/x.ipynb book/kl.md --timeout 300
    python3 tests/gpu_check.py --device cpu notebooks/x.ipynb   # dry run without a GPU

No Jupyter is needed. Each document's code cells (notebooks read as JSON; MyST pages: their
```{code-cell} blocks; cells tagged ``remove-cell``, the Colab set-up, skipped) run in order in
one fresh ``python3`` process with matplotlib's Agg backend, where small stand-ins replace
``IPython.display``, myst-nb's ``glue`` and ``mlbook.report.glue``: the last expression of a cell
is rendered as Jupyter would (a slider widget draws every frame, off-screen), figures are
rendered at the end of each cell, and every number glued is recorded. Those numbers are compared
with the CPU's: from the execution cache (``_build/.jupyter_cache``) where it holds the same code
and library, else from a run of the same script with ``MLBOOK_DEVICE=cpu``. A number agrees when
``|device - cpu| <= max(rtol * |cpu|, atol)``: float32 sums on a GPU run in another order and
torch versions differ, so exact digits are not expected; a wrong device path moves results by
far more than 5%. Then one scaled-up flow-matching run (10x the data and width of the book's)
is timed on the CPU and on the device. The exit status is non-zero if a document fails or
disagrees.

Pure-Python packages the machine lacks (diffusers and what it imports) come as wheels in
``--wheels`` (``make gpu-check`` downloads them beforehand); they are unpacked next to that
folder and appended to the workers' import path, after the installed packages.

Apple MPS has no float64: with ``--device mps`` documents whose code uses ``torch.float64`` or
``torch.double`` are not run and are reported as needing CPU or CUDA.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import io
import json
import os
import pathlib
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import zipfile
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
CACHE = pathlib.Path(os.environ.get("MLBOOK_EXECUTION_CACHE", ROOT / "_build" / ".jupyter_cache"))
RTOL, ATOL = 0.05, 1e-3
# What ``from diffusers import DDPMScheduler`` imports beyond torch's, matplotlib's and
# pytest's own dependencies (distribution names, as pip knows them).
WHEELS = ["diffusers", "huggingface_hub", "httpx2", "httpcore2", "h11", "anyio", "certifi",
          "idna", "requests", "charset-normalizer", "urllib3", "truststore", "safetensors",
          "PyYAML", "regex", "importlib_metadata", "zipp"]
FLOAT64 = re.compile(r"torch\.(float64|double)\b|\.double\(\)")
_FENCE = re.compile(r"^(`{3,}|~{3,})\{code-cell\}")


# ------------------------------------------------------------------ documents and their cells
def is_executable(path: pathlib.Path) -> bool:
    """Whether ``path`` is a notebook or a MyST page with code cells."""
    if path.suffix == ".ipynb":
        return True
    text = path.read_text(encoding="utf-8")
    return text.startswith("---") and "{code-cell}" in text


def documents() -> list[pathlib.Path]:
    """Every notebook and every executable page of the book, relative to the repository."""
    found = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
    return [p.relative_to(ROOT) for p in found if is_executable(p)]


def notebook_cells(nb: dict) -> list[tuple[str, list[str]]]:
    """(source, tags) of every code cell of a notebook given as parsed JSON."""
    cells = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            cells.append((src, list(cell.get("metadata", {}).get("tags", []))))
    return cells


def _options(lines: list[str]) -> tuple[list[str], int]:
    """Tags of a code-cell block from its ``:key: value`` lines or ``---`` YAML header."""
    tags, i = [], 0
    if lines and lines[0].strip() == "---":
        end = next((j for j in range(1, len(lines)) if lines[j].strip() == "---"), 0)
        header, i = lines[1:end], end + 1
    else:
        while i < len(lines) and lines[i].startswith(":"):
            i += 1
        header = [line[1:] for line in lines[:i]]
    for line in header:
        key, _, value = line.partition(":")
        if key.strip() == "tags":
            tags = [t.strip().strip("'\"") for t in value.strip().strip("[]").split(",")
                    if t.strip()]
    return tags, i


def myst_cells(text: str) -> list[tuple[str, list[str]]]:
    """(source, tags) of every ```{code-cell} block of a MyST page, in order."""
    lines, cells, i = text.splitlines(), [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, j = m.group(1), i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        body = lines[i + 1:j]
        tags, start = _options(body)
        cells.append(("\n".join(body[start:]), tags))
        i = j + 1
    return cells


def code_cells(path: pathlib.Path, *, keep_removed: bool = False) -> list[str]:
    """The code a document runs, cell by cell; ``remove-cell`` cells left out unless asked."""
    if path.suffix == ".ipynb":
        cells = notebook_cells(json.loads(path.read_text(encoding="utf-8")))
    else:
        cells = myst_cells(path.read_text(encoding="utf-8"))
    return [src for src, tags in cells if keep_removed or "remove-cell" not in tags]


def uses_float64(cells: list[str]) -> bool:
    """Whether a document's own code asks torch for float64 (``torch.float64``, ``.double()``).

    A static scan: Apple's MPS has no float64, so such a document needs CPU or CUDA. Library
    modules are not scanned (most only mention float64 in input checks); float64 made inside
    the library surfaces as an error when the document runs on MPS.
    """
    return bool(FLOAT64.search("\n".join(cells)))


# ------------------------------------------------------------------ numbers and tolerance
def as_number(value) -> float | None:
    """``value`` as a float if it is a real number (Python, NumPy or 0-d tensor), else None."""
    if isinstance(value, bool):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def disagreements(device: dict[str, float], cpu: dict[str, float], *, rtol: float = RTOL,
                  atol: float = ATOL) -> list[str]:
    """Glued numbers that differ: ``|device - cpu| > max(rtol * |cpu|, atol)``, or missing."""
    out = []
    for name in sorted(set(device) | set(cpu)):
        if name not in device or name not in cpu:
            out.append(f"{name}: only on {'the device' if name in device else 'the CPU'}")
            continue
        a, b = device[name], cpu[name]
        same_nan = a != a and b != b
        if not same_nan and not abs(a - b) <= max(rtol * abs(b), atol):
            out.append(f"{name}: {a:.6g} vs CPU {b:.6g}")
    return out


# ------------------------------------------------------------------ the worker (one document)
class _Shown:
    """What ``IPython.display.HTML(...)`` and friends return here: the data, kept."""

    def __init__(self, data=None, *args, **kwargs):
        self.data = data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.data)[:40]!r})"


def render(obj) -> None:
    """Render ``obj`` as a notebook front end would ask for it; the result is thrown away.

    A slider widget draws all its frames (its static HTML), a figure is drawn to PNG, anything
    with an HTML view produces it; errors in drawing code surface here as they would in Jupyter.
    """
    if obj is None:
        return
    from matplotlib.figure import Figure

    if isinstance(obj, Figure):
        obj.savefig(io.BytesIO(), format="png", dpi=40)
    elif hasattr(obj, "to_html") and hasattr(obj, "render"):
        obj.to_html()
    elif hasattr(obj, "_repr_html_"):
        obj._repr_html_()
    else:
        repr(obj)


def install_stand_ins(glued: dict[str, float]) -> None:
    """Put ``IPython``, ``IPython.display`` and ``myst_nb`` stand-ins in ``sys.modules``.

    ``glue(name, value)`` records real numbers in ``glued`` and renders figures.
    """
    def display(*objs, **kwargs):
        for obj in objs:
            render(obj)

    def glue(name, value, display=True):
        number = as_number(value)
        if number is not None:
            glued[str(name)] = number
        else:
            render(value)

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: None
    ipython.version_info = (9, 0, 0, "stand-in")       # matplotlib reads it; no GUI hooks
    shown = types.ModuleType("IPython.display")
    shown.display = display
    shown.clear_output = lambda *a, **k: None
    for name in ["HTML", "Markdown", "Image", "SVG", "Latex", "Math", "JSON", "Javascript"]:
        setattr(shown, name, type(name, (_Shown,), {}))
    ipython.display = shown
    myst = types.ModuleType("myst_nb")
    myst.glue = glue
    sys.modules.update({"IPython": ipython, "IPython.display": shown, "myst_nb": myst})
    from mlbook import report

    report.glue = glue


def split_cell(source: str) -> tuple[ast.Module, ast.Expression | None]:
    """The cell's statements and, if it ends in an expression, that expression (shown)."""
    lines = [("pass  # " + line) if line.lstrip().startswith(("%", "!")) else line
             for line in source.splitlines()]
    tree = ast.parse("\n".join(lines))
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
        return tree, last
    return tree, None


def run_cells(cells: list[str], glued: dict[str, float]) -> tuple[int, str | None]:
    """Run ``cells`` in one namespace; (cells run, traceback of the first error or None)."""
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__"}
    for i, source in enumerate(cells):
        try:
            body, last = split_cell(source)
            exec(compile(body, f"<cell {i + 1}>", "exec"), namespace)
            if last is not None:
                render(eval(compile(last, f"<cell {i + 1}>", "eval"), namespace))
            for num in plt.get_fignums():
                render(plt.figure(num))
            plt.close("all")
        except BaseException:                                         # noqa: BLE001
            return i, f"cell {i + 1}:\n{traceback.format_exc(limit=-6)}"
    return len(cells), None


def worker(cells_path: str, out_path: str) -> int:
    """Run the cells in ``cells_path`` (JSON list) and write the outcome to ``out_path``."""
    sys.path.insert(0, str(LIB))
    site = os.environ.get("MLBOOK_GPU_CHECK_SITE")
    if site:
        sys.path.append(site)
    import matplotlib

    matplotlib.use("Agg")
    glued: dict[str, float] = {}
    install_stand_ins(glued)
    cells = json.loads(pathlib.Path(cells_path).read_text(encoding="utf-8"))
    n, error = run_cells(cells, glued)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    result = {"cells": len(cells), "ran": n, "error": error, "glue": glued, "cpu": cpu}
    pathlib.Path(out_path).write_text(json.dumps(result), encoding="utf-8")
    return 1 if error else 0


# ------------------------------------------------------------------ the driver
def unpack_wheels(folder: pathlib.Path) -> pathlib.Path | None:
    """Unpack every wheel in ``folder`` into ``<folder>/../site`` once; that directory, or None."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return None
    site = folder.resolve().parent / "site"
    stamp = site / ".unpacked"
    names = "\n".join(w.name for w in wheels)
    if not stamp.exists() or stamp.read_text() != names:
        site.mkdir(parents=True, exist_ok=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
        stamp.write_text(names)
    return site


def run_document(path: pathlib.Path, device: str, timeout: float,
                 site: pathlib.Path | None) -> dict:
    """Run one document's code in a fresh process on ``device``: status, times, glued numbers."""
    cells = code_cells(ROOT / path)
    env = dict(os.environ, MLBOOK_DEVICE=device, MPLBACKEND="Agg", MLBOOK_PROGRESS="0",
               PYTHONHASHSEED="0")
    # Processes a document starts itself (torchrun workers) find the library too.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIB), env.get("PYTHONPATH")]))
    if site is not None:
        env["MLBOOK_GPU_CHECK_SITE"] = str(site)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = pathlib.Path(tmp, "cells.json"), pathlib.Path(tmp, "out.json")
        src.write_text(json.dumps(cells), encoding="utf-8")
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()),
                                   "--worker", str(src), str(out)], cwd=(ROOT / path).parent,
                                  env=env, capture_output=True, text=True, timeout=timeout)
            tail = (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            proc, tail = None, f"timed out after {timeout:g} s"
        wall = time.perf_counter() - start
        result = json.loads(out.read_text()) if out.exists() else {"glue": {}, "error": None}
    if proc is None or proc.returncode or result.get("error"):
        result["error"] = result.get("error") or tail or f"exit status {proc.returncode}"
    return {"wall": wall, "cpu": result.get("cpu"), "glue": result["glue"],
            "error": result["error"]}


def cached_reference(path: pathlib.Path) -> dict | None:
    """Glued numbers and time of the execution cache's CPU run of this code, or None if stale."""
    db = CACHE / "global.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute("SELECT hashkey, data FROM nbcache WHERE uri = ? OR uri LIKE ? "
                               "ORDER BY created DESC",                 # a copied cache too
                               (str(ROOT / path), f"%/{path.as_posix()}")).fetchall()
    except sqlite3.Error:
        return None
    code = [c.strip() for c in code_cells(ROOT / path, keep_removed=True)]
    for hashkey, data in rows:
        base = CACHE / "executed" / hashkey / "base.ipynb"
        if not base.exists():
            continue
        nb = json.loads(base.read_text(encoding="utf-8"))
        if [src.strip() for src, _ in notebook_cells(nb)] != code:
            continue
        data = json.loads(data or "{}")
        if data.get("library") and data["library"] != _library_stamp(code):
            continue
        return {"wall": data.get("execution_seconds"), "glue": cache_glue(nb)}
    return None


_IMPORT_LOCK = threading.Lock()


def _library_stamp(code: list[str]) -> str | None:
    """The execution cache's stamp of the library modules this code uses (tests/execute.py)."""
    with _IMPORT_LOCK:
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            import execute
        except ImportError:
            return None
        finally:
            sys.path.pop(0)
    cells = [types.SimpleNamespace(cell_type="code", source=c) for c in code]
    return execute.library_stamp(types.SimpleNamespace(cells=cells))


def cache_glue(nb: dict) -> dict[str, float]:
    """The real numbers a notebook executed by Jupyter glued (myst-nb's scrapbook outputs)."""
    found = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            book = output.get("metadata", {}).get("scrapbook")
            if not book:
                continue
            text = output.get("data", {}).get(book.get("mime_prefix", "") + "text/plain")
            try:
                found[book["name"]] = float("".join(text) if isinstance(text, list) else text)
            except (TypeError, ValueError):
                pass
    return found


SCALE_SCRIPT = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from mlbook import device, flows, nets, train
steps, dev = int(sys.argv[2]), device.get_device()
g = device.seed_all(0)
angle = 2 * torch.pi * torch.randint(8, (200_000,), generator=g) / 8     # 10x the book's data
x = torch.stack([angle.cos(), angle.sin()], 1) * 2 + 0.1 * torch.randn(200_000, 2, generator=g)
model = nets.TimeMLP(2, hidden=640, layers=3)                            # 10x the width
def loss(m, b):
    return flows.flow_matching_loss(m, b, generator=g)
train.train(model, loss, x, steps=5, batch_size=2560, generator=g, show_progress=False)
start = time.perf_counter()
losses = train.train(model, loss, x, steps=steps, batch_size=2560, generator=g,
                     show_progress=False)
if dev.type == "cuda":
    torch.cuda.synchronize()
last = losses[-20:]
print(json.dumps({"seconds": time.perf_counter() - start, "loss": sum(last) / len(last)}))
"""


def scaled_run(device: str, steps: int, timeout: float) -> dict:
    """Time the flow-matching run (10x data, 10x width) on ``device``: seconds and final loss."""
    env = dict(os.environ, MLBOOK_DEVICE=device, MLBOOK_PROGRESS="0")
    try:
        proc = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, str(LIB), str(steps)],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def check_one(path: pathlib.Path, args, site: pathlib.Path | None) -> tuple[list[str], bool]:
    """One document: its table row, and whether it failed or disagreed."""
    cells = code_cells(ROOT / path)
    if args.device.startswith("mps") and uses_float64(cells):
        return [str(path), "-", "-", "-", "needs CPU or CUDA (float64)", ""], False
    print(f"{path}: on {args.device} ...", flush=True)
    run = run_document(path, args.device, args.timeout, site)
    ref = None if args.reference == "run" else cached_reference(path)
    source = "cache"
    if ref is None and args.reference != "none":
        print(f"{path}: on cpu (reference) ...", flush=True)
        ref, source = run_document(path, "cpu", args.timeout, site), "run"
        if ref["error"]:
            ref["glue"] = {}
    diffs = disagreements(run["glue"], ref["glue"], rtol=args.rtol,
                          atol=args.atol) if ref else []
    status = "FAIL" if run["error"] else ("DIFF" if diffs else "ok")
    if run["error"]:
        print(f"--- {path} failed on {args.device}:\n{run['error']}", file=sys.stderr, flush=True)
    cpu_wall = _fmt(ref["wall"]) + (" (cache)" if source == "cache" else "") if ref else "-"
    return [str(path), cpu_wall, _fmt(run["wall"]), _fmt(run["cpu"]),
            f"{status} ({len(run['glue'])} glued)", "; ".join(diffs)], status != "ok"


def check(paths: list[pathlib.Path], args) -> int:
    """Run, compare and print the table; the number of documents that failed or disagreed."""
    site = unpack_wheels(pathlib.Path(args.wheels)) if args.wheels else None
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        done = list(pool.map(lambda p: check_one(p, args, site), paths))
    rows, bad = [row for row, _ in done], sum(failed for _, failed in done)
    skipped = sum(row[4].startswith("needs") for row in rows)
    headers = ["document", "CPU wall s", f"{args.device} wall s", f"{args.device} CPU s",
               "status", f"glued numbers outside rtol={args.rtol:g}, atol={args.atol:g}"]
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(5)]
    print()
    for row in [headers] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
    if skipped:
        print(f"\n{skipped} document(s) use float64 and were not run on {args.device}")
    if args.scale_steps:
        print(f"\nflow matching, 200,000 points, width 640, {args.scale_steps} steps "
              "of batch 2560 (the library's train loop):")
        for dev in dict.fromkeys(["cpu", args.device]):
            res = scaled_run(dev, args.scale_steps, args.timeout)
            print(f"  {dev}: " + (f"{res['seconds']:.2f} s, final loss {res['loss']:.3f}"
                                  if "seconds" in res else f"failed: {res['error']}"))
            bad += "seconds" not in res
    return bad


def wheel_list() -> list[str]:
    """``name==version`` of the wheels to bring, versions as installed here (else unpinned)."""
    out = []
    for name in WHEELS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("docs", nargs="*", help="documents (default: every one)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu (dry run), mps")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per document run")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="documents run at a time (each its own process)")
    parser.add_argument("--rtol", type=float, default=RTOL)
    parser.add_argument("--atol", type=float, default=ATOL)
    parser.add_argument("--reference", choices=["auto", "run", "none"], default="auto",
                        help="CPU numbers from the cache else a CPU run (auto), always a run, "
                             "or none")
    parser.add_argument("--scale-steps", type=int, default=300,
                        help="steps of the scaled-up training run (0 skips it)")
    parser.add_argument("--wheels", default=str(ROOT / ".ci" / "wheels"),
                        help="folder of wheels to make importable")
    parser.add_argument("--wheel-list", action="store_true",
                        help="print the wheels to download and exit")
    args = parser.parse_args(argv)
    if args.wheel_list:
        print(" ".join(wheel_list()))
        return 0
    paths = [pathlib.Path(p) for p in args.docs] or documents()
    paths = [(ROOT / p).resolve().relative_to(ROOT) for p in paths]
    missing = [str(p) for p in paths if not (ROOT / p).exists()]
    if missing:
        parser.error(f"no such document: {', '.join(missing)}")
    if not importlib.util.find_spec("torch"):
        parser.error("torch is not installed")
    bad = check(paths, args)
    print(f"\n{bad} problem(s)" if bad else "\nall documents ran and agree")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

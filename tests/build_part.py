"""Build the whole book quickly, with outputs for a few documents only.

    python tests/build_part.py book/kl.md notebooks/kl_approximation.ipynb
    python tests/build_part.py --pages --no-glue-check   # pages only (make book-quick)

The named documents are executed (through the cache, see tests/execute.py); every other
executable document is read from the cache when it is there and otherwise rendered without
outputs, so pasted numbers and figures of documents never executed are reported missing. The
build runs with warnings as errors (-W -n, keep going) into ``--out`` (default _build/part); the
exit status is the build's, and ``--only-mine`` keeps only the warnings about the named documents.
Set MLBOOK_EXECUTION_CACHE to use a cache of one's own, e.g. while others build beside you.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import execute

ROOT = execute.ROOT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "_build" / "part")
    parser.add_argument("--only-mine", action="store_true",
                        help="print only the warnings about the named documents")
    parser.add_argument("--no-glue-check", action="store_true",
                        help="do not warn about pasted values of documents without outputs")
    parser.add_argument("--pages", action="store_true",
                        help="also execute every page written as a MyST notebook (their figures)")
    args = parser.parse_args(argv)
    mine = [p.resolve() for p in args.paths]
    if args.pages:
        mine += [p for p in execute.documents() if p.suffix == ".md" and p not in mine]
    if mine:
        _, errors = execute.execute(mine, int(os.environ.get("JOBS", "2")))
        if errors:
            return 1
    # Outputs of an older environment are not used, but not deleted either (a build beside this
    # one may be reading them): documents not executed here are then built without outputs.
    from jupyter_cache import get_cache

    cache = get_cache(str(execute.CACHE)) if execute.is_current() else None
    skip = [str(p.relative_to(ROOT)) for p in execute.documents()
            if p not in mine and (cache is None or execute.cached(cache, execute.read(p)) is None)]
    config = (ROOT / "_config.yml").read_text()
    config = re.sub(r"^  cache: .*$", f"  cache: {execute.CACHE}", config, flags=re.M)
    config = config.replace("execute:\n", "execute:\n  exclude_patterns: " + repr(skip) + "\n", 1)
    if args.no_glue_check and skip:
        config = config.replace("    suppress_warnings: []",
                                "    suppress_warnings: [mystnb.glue, mystnb.glue_ref]")
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(config)
    jb = pathlib.Path(sys.executable).parent / "jupyter-book"
    run = subprocess.run([str(jb), "build", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going",
                          "--config", f.name, "--path-output", str(args.out)],
                         capture_output=True, text=True)
    os.unlink(f.name)
    names = [str(p.relative_to(ROOT).with_suffix("")) for p in mine]
    for line in (run.stdout + run.stderr).splitlines():
        if "WARNING" in line or "ERROR" in line:
            if not args.only_mine or any(n in line for n in names):
                print(line)
    print(f"build: exit {run.returncode}; {len(skip)} documents without outputs; "
          f"pages in {args.out / '_build' / 'html'}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())

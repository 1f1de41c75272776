# Two commands do everything on a fresh machine with Python 3.10+:
#   make book   build the HTML book into _build/html (creates .venv and installs what it needs)
#   make test   run every test: library unit tests, every notebook executed once and its checked
#               outputs compared, the book build with warnings as errors, and a headless-browser
#               check of the built pages
# Also: make bench (speed beside scikit-learn, SciPy, ...), make lab (JupyterLab on notebooks/),
# make book-quick, make sync-notebooks, make record-notebooks, make clean.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where torch comes from when the environment has none. The default CPU wheel index keeps the
# download small; for an NVIDIA GPU use e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
JOBS ?= 2

export MLBOOK_PROGRESS ?= 0
export PYTHONHASHSEED = 0

.PHONY: install book book-quick test unit notebooks browser bench lab sync-notebooks record-notebooks check-notebooks clean ddp gpu-check

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, so that requirements.txt never pulls a multi-GB CUDA build by accident:
	@# a wheel pip already has locally (find-links), else the CPU index, else PyPI's default.
	$(PY) -c 'import torch' 2>/dev/null \
	  || $(PY) -m pip install -q --no-index --no-deps torch 2>/dev/null \
	  || $(PY) -m pip install -q torch --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple \
	  || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -r requirements.txt -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mlbook)" >/dev/null
	touch $@

install: $(VENV)/.installed

# Every notebook and executable page runs once, JOBS kernels at a time, into the execution cache
# (_build/.jupyter_cache); the build then takes outputs from it. Only documents whose code, or
# whose environment (library source, requirements, installed packages), changed run again.
book: $(VENV)/.installed
	@start=$$(date +%s); \
	$(PY) tests/execute.py -j $(JOBS) \
	  && $(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going; \
	status=$$?; echo "book build: $$(( $$(date +%s) - start )) s"; exit $$status
	@echo "The book is in _build/html; open _build/html/index.html in a browser."

# Authors' check of the pages: the same -W -n build, executing the pages' figure cells (seconds
# each) but no notebook; notebooks not in the execution cache are rendered without outputs and
# the numbers pages paste from them are left blank.
book-quick: $(VENV)/.installed
	$(PY) tests/build_part.py --out _build/quick --pages --no-glue-check

unit: $(VENV)/.installed
	$(PY) -m pytest tests --ignore=tests/browser -q -n $(JOBS)

# Execute (through the cache) and check: cell errors and failed asserts, the outputs of cells
# tagged nbval-check-output, and each kernel's CPU time against the 60 s budget. One torch thread
# per kernel: JOBS kernels share the cores instead of fighting over them.
notebooks: $(VENV)/.installed
	$(PY) tests/execute.py --check -j $(JOBS)

browser: book
	$(PY) -m pytest tests/browser -q -s -rs -n $(JOBS)

test: $(VENV)/.installed
	$(PY) tests/notebook_tools.py check
	$(MAKE) --no-print-directory unit notebooks browser

# Speed beside the libraries a practitioner would use: ratios from one run, same data, results
# checked equal in the same run. Not part of `make test`.
bench: $(VENV)/.installed
	$(PY) tests/bench.py

# The distributed chapter's example by itself: two workers started by torchrun (gloo on a CPU,
# NCCL with one GPU per worker), the book's training loop on the digits; rank 0 prints.
ddp: $(VENV)/.installed
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 -m mlbook.distributed train --batch 64 --steps 200

lab: $(VENV)/.installed
	MLBOOK_PROGRESS=1 $(VENV)/bin/jupyter lab notebooks

sync-notebooks: $(VENV)/.installed
	$(PY) tests/notebook_tools.py sync

record-notebooks: $(VENV)/.installed
	$(PY) tests/notebook_tools.py record

check-notebooks: $(VENV)/.installed
	$(PY) tests/notebook_tools.py check

clean:
	rm -rf _build test-artifacts

# Every notebook's and page's code on CUDA with a plain python3 (torch, numpy, scipy,
# scikit-learn, matplotlib, tqdm, pytest; no Jupyter, no package registry), numbers compared
# with the CPU's, plus one scaled-up training run timed on both. The pure-Python packages it
# lacks come as wheels, downloaded here beforehand (where a registry is reachable) into
# .ci/wheels; copy the folder with the checkout. For another Python or platform, e.g.
# GPU_WHEEL_OPTS="--python-version 3.12 --platform manylinux2014_x86_64".
# Options: GPU_CHECK_ARGS="--device cpu notebooks/x.ipynb --timeout 300".
GPU_PYTHON ?= python3
GPU_WHEEL_OPTS ?=
GPU_CHECK_ARGS ?=
GPU_PIP_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
.ci/wheels/.downloaded:
	mkdir -p .ci/wheels
	$(GPU_PIP_PY) -m pip download -q --no-deps --only-binary=:all: -d .ci/wheels $(GPU_WHEEL_OPTS) \
	  $$($(GPU_PIP_PY) tests/gpu_check.py --wheel-list)
	touch $@

gpu-check: .ci/wheels/.downloaded
	$(GPU_PYTHON) tests/gpu_check.py --wheels .ci/wheels $(GPU_CHECK_ARGS)

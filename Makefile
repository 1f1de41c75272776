# Two commands do everything on a fresh machine with Python 3.10+:
#   make book   build the HTML book into _build/html (creates .venv and installs what it needs)
#   make test   run every test: library unit tests, nbval on every notebook, the book build
#               with warnings as errors, and a headless-browser check of the built pages
# Also: make lab (JupyterLab on notebooks/), make sync-notebooks, make record-notebooks, make clean.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where torch comes from when the environment has none. The default CPU wheel index keeps the
# download small; for an NVIDIA GPU use e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
JOBS ?= 2

export MLBOOK_PROGRESS ?= 0
export PYTHONHASHSEED = 0

.PHONY: install book book-quick test unit notebooks browser lab sync-notebooks record-notebooks check-notebooks clean

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

book: $(VENV)/.installed
	@start=$$(date +%s); \
	$(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going; \
	status=$$?; echo "book build: $$(( $$(date +%s) - start )) s"; exit $$status
	@echo "The book is in _build/html; open _build/html/index.html in a browser."

# Authors' check of the pages only: the same -W -n build without executing notebooks (seconds).
QUICK_OUT ?= _build/quick
book-quick: $(VENV)/.installed
	@mkdir -p $(dir $(QUICK_OUT)); cfg=$$(mktemp /tmp/mlbook-quick-XXXXXX.yml); \
	sed 's/^  execute_notebooks: .*/  execute_notebooks: "off"/' _config.yml > $$cfg; \
	$(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going --config $$cfg --path-output $(QUICK_OUT) 2>&1 \
	  > $(QUICK_OUT).log; status=$$?; grep -E 'WARNING|ERROR|problems' $(QUICK_OUT).log; rm -f $$cfg; \
	echo "book-quick: exit $$status, log in $(QUICK_OUT).log"; exit $$status

unit: $(VENV)/.installed
	$(PY) -m pytest tests --ignore=tests/browser -q

notebooks: $(VENV)/.installed
	@# one torch thread per kernel: JOBS kernels share the cores instead of fighting over them
	OMP_NUM_THREADS=1 $(PY) -m pytest notebooks --nbval-lax --nbval-current-env -n $(JOBS) --dist loadfile -q

browser: book
	$(PY) -m pytest tests/browser -q -s -rs

test: $(VENV)/.installed
	$(PY) tests/notebook_tools.py check
	$(MAKE) --no-print-directory unit notebooks browser

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

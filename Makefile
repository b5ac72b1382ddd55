# Two commands do all the set-up on a fresh machine with Python 3.10+:
#   make lab    creates .venv, installs the project with the tested versions, opens JupyterLab in labs/
#   make test   the same install, then the whole test suite (unit, notebooks, browser)
# CPU-only Linux users who want to skip the multi-GB CUDA torch: make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
LAB_ARGS ?=
# JupyterLab refuses to run as root (CI containers, Docker) unless told it may.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=
# Labs run two at a time (pytest-xdist, one notebook per worker): most lab cells use one thread.
LAB_WORKERS ?= 2
PARALLEL := -n $(LAB_WORKERS) --dist loadfile
BROWSER_PARALLEL := -n $(LAB_WORKERS) --dist load
NBVAL := --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600 -p no:randomly

.PHONY: lab install test test-unit test-labs test-browser test-portable run-labs doctor lint clean

# constraints.txt is the tested set for Python 3.11+ (numpy 2.4, pandas 3 need 3.11); on 3.10 the
# install follows pyproject's ranges instead, which resolve to the newest releases that support it.
TESTED_PYTHON := $(shell $(PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 11)))' 2>/dev/null)
CONSTRAINTS := $(if $(filter 1,$(TESTED_PYTHON)),-c constraints.txt,)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@[ -n "$(CONSTRAINTS)" ] || echo "note: Python < 3.11: installing from pyproject's ranges, not the tested constraints.txt"
	$(BIN)/python -m pip install $(PIP_INDEX) $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	cd labs && ../$(BIN)/jupyter lab $(ROOT_ARGS) $(LAB_ARGS)

test: test-unit test-labs test-browser

# Unit tests run two files at a time too (pytest-xdist): a module's fixtures stay in one worker.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not browser" $(PARALLEL) $(PYTEST_ARGS)

test-labs: $(STAMP)
	$(BIN)/python -m pytest $(NBVAL) $(PARALLEL) labs $(PYTEST_ARGS)

test-browser: $(STAMP)
	$(BIN)/python -m pytest tests/browser -m browser $(BROWSER_PARALLEL) $(PYTEST_ARGS)

# The claims must hold on CPUs other than this one: torch picks its CPU kernels by
# ATEN_CPU_CAPABILITY (default, avx2, avx512), so forcing another one here runs the labs and the
# unit tests that compare numbers with the float rounding of a different machine.
PORTABLE_CAPABILITY ?= default
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=$(PORTABLE_CAPABILITY) $(BIN)/python -m pytest $(NBVAL) $(PARALLEL) labs $(PYTEST_ARGS)
	ATEN_CPU_CAPABILITY=$(PORTABLE_CAPABILITY) $(BIN)/python -m pytest tests -m "numeric and not browser" $(PARALLEL) $(PYTEST_ARGS)

run-labs: $(STAMP)
	$(BIN)/labkit run-labs

doctor: $(STAMP)
	$(BIN)/labkit doctor

lint: $(STAMP)
	$(BIN)/ruff check labkit widgets tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache

binder/requirements.txt: constraints.txt
	{ echo "# repo2docker (Binder): the tested set from constraints.txt, with the CPU build of torch."; \
	  echo "# Regenerate with: make binder/requirements.txt"; \
	  echo "--extra-index-url https://download.pytorch.org/whl/cpu"; \
	  grep -v '^#' constraints.txt; } > $@

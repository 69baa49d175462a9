# dmcourse: the two commands of the README are `make book` and `make test`.
# Both create .venv with the exact tested versions (constraints.txt) on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Tools that nbgrader and jupyter-book start as subprocesses (alembic, jupyter) come from .venv too.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help env lint book book-clean test test-fast browser-deps release stamp check-notebooks constraints benchmarks gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

env: $(INSTALLED)  ## create .venv with the pinned versions

book: $(INSTALLED)  ## execute the notebooks that changed (execution cache) and write _build/html
	@# The execution cache (jupyter-cache, _config.yml: execute_notebooks: cache) re-runs a notebook
	@# only when its code changed. A change in the package can change any notebook's outputs, so the
	@# cache is dropped when the package's code or data changed since the last build.
	@mkdir -p _build; h=$$(find dmcourse -path dmcourse/grading -prune -o -type f \( -name '*.py' -o -name '*.c' -o -path '*/data/*' \) -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16); \
	  if [ "$$(cat _build/.package-hash 2>/dev/null)" != "$$h" ]; then rm -rf _build/.jupyter_cache _build/jupyter_execute; echo "package changed: every notebook re-executes"; fi; \
	  echo "$$h" > _build/.package-hash.new
	set -o pipefail; DMCOURSE_PROGRESS=0 $(BIN)/jupyter-book build . -W -n --keep-going 2>&1 | tee _build/build.log
	mv _build/.package-hash.new _build/.package-hash

book-clean:  ## build the book from scratch (what CI does): every notebook executed once
	rm -rf _build
	$(MAKE) book

browser-deps:  ## Debian's Chromium for the browser test
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

lint: $(INSTALLED)  ## ruff (lint + format check) and mypy over the package, tests, tools and benchmarks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python tools/notebooks.py pairs

test: lint book browser-deps  ## bring the book up to date (cached), then run the whole test suite against it
	$(BIN)/python -m pytest

test-fast: $(INSTALLED)  ## unit tests only (no book build, no browser, no grading round trips)
	$(BIN)/python -m pytest -m "not book and not browser and not slow"

release: $(INSTALLED)  ## regenerate exercises/ from solutions/ with nbgrader
	$(BIN)/python tools/notebooks.py stamp
	$(BIN)/python tools/notebooks.py sync
	for d in solutions/*/; do $(BIN)/nbgrader generate_assignment $$(basename $$d) --force --log-level=WARN || exit 1; done

stamp: $(INSTALLED)  ## add the Colab setup cell + GPU metadata to every notebook, strip outputs, sync the .pct.py twins
	$(BIN)/python tools/notebooks.py stamp
	$(BIN)/python tools/notebooks.py sync

check-notebooks: $(INSTALLED)  ## fail if a notebook lacks its setup cell or carries outputs
	$(BIN)/python tools/notebooks.py check

constraints:  ## re-pin constraints.txt from the current .venv
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu//'; } > constraints.new && mv constraints.new constraints.txt

benchmarks: $(INSTALLED)  ## run every benchmark script (prints tables; not tests)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

gpu-check: $(INSTALLED)  ## on a CUDA machine: every GPU figure + every notebook on the GPU -> dmcourse/data/records/
	DMCOURSE_PROGRESS=0 $(BIN)/python -m dmcourse.gpucheck

clean:  ## remove build outputs (keeps .venv)
	rm -rf _build gradebook.db submitted autograded feedback

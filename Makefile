# The two commands a newcomer needs: `make lab` (learn) and `make test` (check).
# Every target installs what it needs into .venv first, and skips that when
# pyproject.toml has not changed since the last install.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
WORKERS ?= 2
# Profile for `make run`: empty = reidlab's default (gpu with CUDA, else laptop).
PROFILE ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

# The lowest torch / torchvision that pyproject.toml claims; `make test-lowest` tests them
# (tests/test_packaging.py checks that these and pyproject's bounds agree).
TORCH_LOWEST       := 2.4.0
TORCHVISION_LOWEST := 0.19.0
VENV_LOWEST        := .venv-lowest

.PHONY: help install lab run lint typecheck test test-unit test-notebooks test-e2e test-lowest site figures assignments grade instructors-table clean

help:
	@echo "make lab      open the notebooks in JupyterLab (the main job)"
	@echo "make test     unit tests + every notebook re-executed by nbval (ci profile)"
	@echo "make lint     ruff over the code (make test runs it first)"
	@echo "make typecheck  mypy over the library (make test runs it after lint)"
	@echo "make test-unit | test-notebooks | test-e2e   one tier of make test"
	@echo "make test-lowest  the unit tests again, in .venv-lowest with the lowest supported torch/torchvision"
	@echo "make site     build the static site (build/site/index.html) from the committed notebooks"
	@echo "make run      execute every notebook headless into build/run and print a timing table"
	@echo "make figures  copy each notebook's key figure from its committed output into figures/"
	@echo "make assignments  write student versions of the notebooks to build/assignments/"
	@echo "make grade SUBMISSIONS=dir  grade dir/<student>/<notebook>.ipynb into build/grades.csv"
	@echo "make instructors-table  regenerate the exercise table in docs/INSTRUCTORS.md from the notebooks"
	@echo "make clean    remove build/ and caches (keeps .venv and data/)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name reidlab --display-name "Python (reidlab)" >/dev/null
	$(VENV)/bin/jupyter lab notebooks/ $(ROOT_FLAG)

run: $(STAMP)
	$(PY) tools/nbtool.py run --out build/run $(if $(PROFILE),--profile $(PROFILE),) $(NOTEBOOKS)

# One OpenMP thread per worker: WORKERS processes x N threads on few cores oversubscribe,
# and PyTorch's spinning threads then run small nets many times slower.
PYTEST_ENV := REIDLAB_PROFILE=ci OMP_NUM_THREADS=1 REIDLAB_THREADS=1
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=300 --nbval-sanitize-with tests/nbval_sanitize.cfg
UNIT  := not browser and not notebooks and not e2e

# The lint and the type check first (seconds), then everything in one pytest run so that both
# workers stay busy. The tiers below are its parts.
test: lint typecheck
	$(PYTEST_ENV) $(PY) -m pytest -n $(WORKERS) --dist loadfile $(NBVAL) tests $(NOTEBOOKS)

# pyflakes' and pycodestyle's errors over the library, tools, tests and benchmarks ([tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy over the library: its files, Python version and untyped packages are in [tool.mypy].
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The library, the tools and the checkers (no notebook executed, no outside app).
test-unit: $(STAMP)
	$(PYTEST_ENV) $(PY) -m pytest -n $(WORKERS) --dist loadfile -m "$(UNIT)" tests

# Every notebook re-executed by nbval, and the student versions run as a student would.
test-notebooks: $(STAMP)
	$(PYTEST_ENV) $(PY) -m pytest -n $(WORKERS) --dist loadfile $(NBVAL) \
	  tests/test_student_versions.py $(NOTEBOOKS)

# End to end through outside tools: JupyterLab in Chromium, the Sphinx site, nbgrader.
test-e2e: $(STAMP)
	$(PYTEST_ENV) $(PY) -m pytest -n $(WORKERS) --dist loadfile -m "browser or e2e" tests

# The same unit tests (not the notebooks, not the browser) at the lowest versions we claim to
# support, in a second environment; CI runs it after `make test`. --no-cache-dir: a second set of
# torch wheels (~4 GB) would otherwise stay in pip's cache.
test-lowest:
	@test -x $(VENV_LOWEST)/bin/python || $(PYTHON) -m venv $(VENV_LOWEST)
	$(VENV_LOWEST)/bin/python -m pip install --disable-pip-version-check --no-cache-dir -q \
	  "torch==$(TORCH_LOWEST)" "torchvision==$(TORCHVISION_LOWEST)" -e '.[dev]'
	$(VENV_LOWEST)/bin/python -c "import torch, torchvision, numpy; print('testing torch', torch.__version__, '| torchvision', torchvision.__version__, '| numpy', numpy.__version__)"
	$(PYTEST_ENV) $(VENV_LOWEST)/bin/python -m pytest -n $(WORKERS) --dist loadfile \
	  -p no:cacheprovider -m "$(UNIT)" tests

# A static HTML site of the series from the committed notebooks (nothing re-executed).
site: $(STAMP)
	$(PY) tools/site.py --out build/site
	@echo "open build/site/index.html in a browser (or: $(PY) -m http.server -d build/site)"

# figures/ (the README's and the site's) from the committed notebooks' outputs, not from a new run.
figures: $(STAMP)
	$(PY) tools/nbtool.py figures --out figures $(NOTEBOOKS)

assignments: $(STAMP)
	$(PY) tools/assign.py release --out build/assignments $(NOTEBOOKS)

SUBMISSIONS ?= submissions
grade: $(STAMP)
	$(PY) tools/assign.py grade $(SUBMISSIONS) --source notebooks --out build/grades.csv

# The exercise table of docs/INSTRUCTORS.md, from the notebooks' exercise leads and graded cells.
instructors-table: $(STAMP)
	$(PY) tools/assign.py table --update docs/INSTRUCTORS.md $(NOTEBOOKS)

clean:
	rm -rf build .pytest_cache .mypy_cache
	find . -name __pycache__ -prune -not -path './.venv/*' -exec rm -rf {} +

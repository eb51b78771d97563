# Two commands are all a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-py312 gallery lint demo bench docs docs-examples chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch==2.13.0 first: on these machines it is a CPU build from local disk, while a bare
# `torch` requirement would pull a multi-GB CUDA build. Where that exact version is not
# available the project's own range (torch>=2.4) decides.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0 || true
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check pyrovi tests examples benchmarks

# pytest-xdist workers: one per core of the 2-core CI machine, each on one torch thread
# (two torch threads in one process ran 2-30x slower on a busy shared machine)
WORKERS ?= 2

# the whole suite, the gallery (tests/gallery) and its `slow` cases included
test: $(STAMP) lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q -n $(WORKERS)

# the gallery alone: Pyro's own examples and tutorials through every family, EM, diagnose
# and the export, each checked against a closed form, enumeration or Pyro's NUTS
gallery: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q -n $(WORKERS) tests/gallery

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pyrovi demo

# The suite on the other ArviZ line: Python 3.12 with ArviZ 1.x (arviz-base, arviz-stats,
# arviz-plots, xarray DataTree), in its own .venv312. `make test` is Python 3.11 with ArviZ
# 0.2x. Python 3.12 is pyenv's 3.12.1, else python3.12 on PATH, else PYTHON312=/path.
VENV312  := .venv312
PY312    := $(VENV312)/bin/python
STAMP312 := $(VENV312)/.installed
PYTHON312 ?= $(shell for p in "$$(pyenv prefix 3.12.1 2>/dev/null)/bin/python3.12" \
	"$${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12.1/bin/python3.12" \
	"$$(command -v python3.12 2>/dev/null)"; do [ -x "$$p" ] && echo "$$p" && break; done)

$(PY312):
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "make test-py312 needs Python 3.12: none found (tried 'pyenv prefix 3.12.1' and" \
	       "python3.12 on PATH). Install it (pyenv install 3.12.1) or pass" \
	       "PYTHON312=/path/to/python3.12." >&2; exit 1; fi
	$(PYTHON312) -m venv $(VENV312)
	$(PY312) -m pip install -q --upgrade pip

# torch==2.13.0 first, as above (on 3.12 a 527 MB build from PyPI that runs on the CPU);
# the test extras then require ArviZ 1.x on Python >= 3.12, which the check below confirms.
$(STAMP312): $(PY312) pyproject.toml
	$(PY312) -m pip install -q torch==2.13.0 || true
	$(PY312) -m pip install -q -e ".[test]"
	$(PY312) -c "import arviz, arviz_base, arviz_stats, arviz_plots, xarray; \
	  assert int(arviz.__version__.split('.')[0]) >= 1, arviz.__version__; \
	  print('ArviZ', arviz.__version__, 'xarray', xarray.__version__)"
	touch $(STAMP312)

# The gallery runs on the 3.11 line only (`make test`): its agreement checks (the fits
# against closed forms, enumeration and NUTS) do not depend on the ArviZ line, its workflow
# checks call ArviZ 0.2x APIs (az.loo's elpd_loo), and on this line it would add its
# minutes a second time; the ArviZ 1.x export is covered by tests/arviz here.
test-py312: $(STAMP312)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg $(PY312) -m pytest -q -n $(WORKERS) --ignore=tests/gallery

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/run.py

DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# headless Chromium for the site check: Debian's package (as root), else one on PATH
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get -q update >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get -q install -y chromium >/dev/null; } || \
	  { echo "make docs needs chromium: apt-get install chromium"; exit 1; }

# the site builds with warnings treated as errors, then every page is opened in headless
# Chromium with the network cut off (tests/docs): math rendered, images loaded
docs: $(DOCS_STAMP) chromium
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(VENV)/bin/mkdocs build --strict -d site
	PYROVI_SITE=site $(PY) -m pytest -q -p no:cacheprovider tests/docs

# regenerate the example pages' output (committed, shown by docs/examples/*.md): each script's
# full run, its printed tables and the figures it writes
EXAMPLE_OUT := docs/examples/output
docs-examples: $(STAMP)
	mkdir -p $(EXAMPLE_OUT)
	for f in examples/0*.py; do n=$$(basename $$f .py); echo "$$n"; \
	  OMP_NUM_THREADS=1 MPLBACKEND=Agg PYTHONWARNINGS=ignore $(PY) $$f --out $(EXAMPLE_OUT) \
	    > $(EXAMPLE_OUT)/$$n.txt || exit 1; done

clean:
	rm -rf $(VENV) $(VENV312) build *.egg-info .pytest_cache

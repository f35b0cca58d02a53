# polyglot-python: `make demo` runs the recipes locally, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPES := polyglot-python-processor polyglot-python-app

.PHONY: demo test lint docs system-deps clean

demo: $(STAMP)
	$(PY) -m devkit.demo

test: lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint $(addsuffix /Dockerfile,$(RECIPES))

docs: $(STAMP)
	$(PY) -m devkit.docs

$(STAMP): requirements-dev.txt $(addsuffix /requirements.txt,$(RECIPES)) | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Debian packages the venv needs on a fresh machine; installed only when missing (root or sudo).
system-deps:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q python3 python3-venv python3-dev; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

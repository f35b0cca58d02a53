# polyglot-python: `make demo` runs the recipes locally, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPES := polyglot-python-processor polyglot-python-app polyglot-python-task

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

# Debian packages on a fresh machine, installed only when missing (as root, or with sudo): the venv, the
# build of mysqlclient, and the MariaDB and PostgreSQL servers the task tests start.
DEBS := python3-venv python3-dev gcc pkg-config default-libmysqlclient-dev mariadb-server postgresql
system-deps:
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(DEBS) 2>&1 | awk '$$1 != "ii" {print $$NF}'); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "Installing Debian packages: $$missing"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBS); \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

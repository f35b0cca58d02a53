# polyglot-python: `make demo` runs the recipes locally, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEED_VENV := .venv-seed
RECIPES := polyglot-python-processor polyglot-python-app polyglot-python-task

# Images: $(CONTAINER_ENGINE) is docker, podman or buildah; each recipe folder builds one image.
CONTAINER_ENGINE ?= docker
IMAGE_PREFIX ?= polyglot
TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_FLAGS ?=

.PHONY: demo test lint faults docs images push bench system-deps clean

# `make demo BINDER=rabbit` runs the stream recipes on an embedded RabbitMQ instead.
BINDER ?= kafka
demo: $(STAMP)
	$(PY) -m devkit.demo $(BINDER)

# Three workers: most tests wait on brokers and group joins, not on the CPU; each worker starts its own servers.
test: lint
	$(PY) -m pytest -n 3

# The fault and abuse suite (also part of `make test`, with a 20 s soak) with a 5-minute soak per stream app and client:
# about 35 minutes on 2 cores; writes faults/results/latest.md.
faults: $(STAMP)
	FAULTS_REPORT=faults/results/latest.md FAULTS_SOAK_SECONDS=300 $(PY) -m pytest tests/test_faults_*.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint $(addsuffix /Dockerfile,$(RECIPES))

images:
	@for recipe in $(RECIPES); do \
	  echo "== $(IMAGE_PREFIX)/$$recipe:$(TAG)"; \
	  $(CONTAINER_ENGINE) build $(BUILD_FLAGS) --build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION) \
	    -t $(IMAGE_PREFIX)/$$recipe:$(TAG) $$recipe || exit 1; \
	done

push:
	@for recipe in $(RECIPES); do $(CONTAINER_ENGINE) push $(IMAGE_PREFIX)/$$recipe:$(TAG) || exit 1; done

# About twelve minutes on 2 cores; writes bench/results/latest.{md,json,png}.
bench: $(STAMP) $(VENV)/.bench $(SEED_VENV)/.installed
	$(PY) -m bench.run

# The seed's naive loop runs as it shipped: `pip install kafka-python`, no crc32c, in a venv of its own.
$(SEED_VENV)/.installed:
	$(PYTHON) -m venv $(SEED_VENV)
	$(SEED_VENV)/bin/python -m pip install --quiet kafka-python==3.0.12
	touch $@

$(VENV)/.bench: requirements-bench.txt | $(STAMP)
	@command -v kcat >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kcat; }
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

docs: $(STAMP)
	$(PY) -m devkit.docs

$(STAMP): requirements-dev.txt $(addsuffix /requirements.txt,$(RECIPES)) | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Debian packages on a fresh machine, installed only when missing (as root, or with sudo): the venv, the
# build of mysqlclient, the MariaDB and PostgreSQL servers the task tests start, Prometheus and its Pushgateway for
# the monitoring tests, and what the container tests build and run the real Dockerfiles with (no Docker engine needed).
DEBS := python3-venv python3-dev gcc pkg-config default-libmysqlclient-dev mariadb-server postgresql \
        podman buildah runc debootstrap prometheus prometheus-pushgateway rabbitmq-server
system-deps:
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(DEBS) 2>&1 | awk '$$1 != "ii" {print $$NF}'); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "Installing Debian packages: $$missing"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBS); \
	fi

clean:
	rm -rf $(VENV) $(SEED_VENV) .pytest_cache .ruff_cache

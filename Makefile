# The verbs a person types. `make test` sets up everything it needs on a fresh Debian
# machine (apt-get when root) and runs lint, types and the tests against real peers.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# What the tests run for real: git servers, sshd, an OCI registry, image tools.
DEB_PACKAGES = python3 time libnss-wrapper git openssh-client openssh-server apache2-utils docker-registry skopeo bubblewrap ca-certificates
PYTEST_ARGS ?=

.PHONY: help demo test lint typecheck unit bench deps venv clean

help:
	@echo "make demo   - run creds-init on example secrets and show what git, ssh and docker now use"
	@echo "make test   - install what the tests need, then ruff, mypy --strict and pytest"
	@echo "make bench  - start-up and git fetch benchmarks against baselines measured in the same run"
	@echo "make lint   - ruff and mypy only"

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else \
	    echo "error: the tests need these Debian packages:$$missing"; \
	    echo "       run: sudo apt-get install -y$$missing   (or run make test as root)"; exit 1; \
	  fi; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,gcs]'
	@touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: deps venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

demo: deps venv
	$(BIN)/python examples/demo.py

bench: deps venv
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/git_fetch.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# The verbs a person types. `make test` sets up everything it needs on a fresh Debian
# machine (apt-get when root) and runs lint, types and the tests against real peers.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# What the tests run for real: git servers, sshd, an OCI registry, image tools.
DEB_PACKAGES = python3 time libnss-wrapper git openssh-client openssh-server apache2-utils docker-registry skopeo bubblewrap ca-certificates python3-venv
PYTEST_ARGS ?=

.PHONY: help demo test lint typecheck unit bench deps venv clean

help:
	@echo "make demo   - run a Build (examples/builds/demo/) with stepkit run: creds-init, git source, SDK builder"
	@echo "make test   - install what the tests need, then ruff, mypy --strict and pytest"
	@echo "make bench  - start-up (on the host and in the images), git fetch and image size benchmarks"
	@echo "make lint   - ruff and mypy only"
	@echo "make images - the helper images (buildah, else docker) FROM BASE_IMAGE, default python:3.11-slim"
	@echo "make images-local - the same FROM a Debian base made here (no registry needed)"

# $(call ensure-debs,PACKAGES): install the missing ones with apt-get when root; otherwise
# name them and fail.
define ensure-debs
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else \
	    echo "error: these Debian packages are needed:$$missing"; \
	    echo "       run: sudo apt-get install -y$$missing   (or run make as root)"; exit 1; \
	  fi; \
	fi
endef

# The image tests (tests/test_images.py) build the images, so `make test` needs their tools.
deps:
	$(call ensure-debs,$(DEB_PACKAGES) $(IMAGE_DEB_PACKAGES))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,gcs,oci,kube]'
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

# The images, then the Build; podman's API service when no Docker daemon answers.
demo: deps venv images-local
	IMAGE_REPO=$(IMAGE_REPO) STORAGE_DRIVER=$(STORAGE_DRIVER) $(BIN)/python examples/demo.py

bench: deps venv
	$(call ensure-debs,umoci)
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/git_fetch.py
	$(BIN)/python bench/gcs_fetch.py
	$(BIN)/python bench/image_fetch.py
	$(BIN)/python bench/images.py
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# ---- Container images (images/README.md) ---------------------------------------------------
IMAGE_DEB_PACKAGES = buildah podman runc debootstrap debian-archive-keyring
# vfs works anywhere, inside a container too; overlay needs kernel support this machine lacks.
STORAGE_DRIVER ?= vfs
BASE_IMAGE     ?= docker.io/library/python:3.11-slim
LOCAL_BASE     ?= localhost/stepkit-python-base:bookworm
IMAGE_REPO     ?= localhost/stepkit
IMAGE_CACHE    ?= .images
IMAGE_CONTEXT   = $(IMAGE_CACHE)/context
# buildah or docker; empty: buildah when installed, else docker.
IMAGE_BUILDER  ?=
# 1: buildah --layers (every step cached); 0: not; empty: 0 on vfs, where it is slower.
LAYERS         ?=
# Recursive (=) so that `make test` never runs these.
VERSION         = $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' stepkit/__init__.py)
REVISION        = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
IMAGE_SOURCE   ?= $(shell git config --get remote.origin.url 2>/dev/null | sed 's#//[^/@]*@#//#')
PACKAGE_FILES   = pyproject.toml README.md $(wildcard stepkit/*.py stepkit/py.typed initializers/*.py \
                  initializers/*/*.py initializers/py.typed builders/*.py builders/*/*.py builders/py.typed)

.PHONY: images images-local base-image wheels images-lock image-deps image-debs images-clean

# buildah, or docker when buildah is missing and this is not root.
image-deps:
	@if [ "$$(id -u)" != 0 ] && ! command -v buildah >/dev/null && command -v docker >/dev/null; then \
	  echo "note: buildah is not installed; building with docker"; \
	else $(MAKE) --no-print-directory image-debs; fi

image-debs:
	$(call ensure-debs,$(IMAGE_DEB_PACKAGES))

# Re-resolve the images' dependencies (needs PyPI); commit the lock files it rewrites.
images-lock: | $(BIN)/python
	$(BIN)/python images/wheels.py lock

# stepkit's wheel and the locked wheels, for this machine's architecture: the build context.
wheels: $(IMAGE_CONTEXT)/stepkit.req

$(IMAGE_CONTEXT)/stepkit.req: images/requirements.lock images/pip.lock images/requirements-gcs.lock images/requirements-oci.lock images/requirements-docker.lock images/wheels.py images/ssh $(PACKAGE_FILES) | $(BIN)/python
	$(BIN)/python images/wheels.py context $(IMAGE_CONTEXT)

# A Debian base with python3, git and ssh in containers storage, for machines without a registry.
base-image: image-deps
	STORAGE_DRIVER=$(STORAGE_DRIVER) images/base-image.sh $(LOCAL_BASE) $(IMAGE_CACHE)

images: image-deps wheels
	BASE_IMAGE=$(BASE_IMAGE) IMAGE_REPO=$(IMAGE_REPO) VERSION=$(VERSION) REVISION=$(REVISION) \
	  SOURCE=$(IMAGE_SOURCE) STORAGE_DRIVER=$(STORAGE_DRIVER) LAYERS=$(LAYERS) \
	  IMAGE_BUILDER=$(IMAGE_BUILDER) images/build.sh $(IMAGE_CONTEXT)

images-local: base-image
	@$(MAKE) --no-print-directory images BASE_IMAGE=$(LOCAL_BASE)

# The Debian tree, wheels and build stamps; the images stay (buildah rmi removes them).
images-clean:
	rm -rf $(IMAGE_CACHE)

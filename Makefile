# Two entry points (see README): `make book` and `make test`.
# Everything stays inside this folder: caches, Jupyter/IPython/matplotlib/HF state.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache

export JUPYTER_DATA_DIR := $(CACHE)/jupyter
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter-config
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter-runtime
export JUPYTER_PLATFORM_DIRS := 1
export IPYTHONDIR := $(CACHE)/ipython
export MPLCONFIGDIR := $(CACHE)/matplotlib
export HF_HOME := $(CACHE)/huggingface
export TORCH_HOME := $(CACHE)/torch
export XDG_CACHE_HOME := $(CACHE)/xdg
export XDG_DATA_HOME := $(CACHE)/xdg-data
export XDG_CONFIG_HOME := $(CACHE)/xdg-config
export PIP_CACHE_DIR := $(CACHE)/pip
export VLMNB_CACHE_DIR := $(CACHE)/vlmnb
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Extra arguments: make book ARGS="01_attention_fractions -p n_images 4"; make test PYTEST_ARGS="-k judge"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup book test clean help

help:
	@echo "make book   create .venv if needed, execute the chapters, build _build/html"
	@echo "make test   create .venv if needed, run the whole test suite"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "[setup] Python environment in $(VENV) (first run: a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "[setup] FAILED: creating the virtual environment with $(PYTHON)"; exit 1; }
	@$(PY) -m pip install --quiet --upgrade pip || { echo "[setup] FAILED: upgrading pip"; exit 1; }
	@$(PY) -m pip install --quiet -e ".[book,test]" || { echo "[setup] FAILED: pip install -e .[book,test]"; exit 1; }
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

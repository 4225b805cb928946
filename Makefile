# The README's two commands: `make serve` and `make test`. Both install what they need first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install serve test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/routegate serve

test: install
	$(PY) -m pytest

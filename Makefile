# Override on the command line, e.g. `make test PYTEST_ARGS="-k broker -x"`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
TORCH_VERSION ?= 2.13.0
DEMO_ARGS ?=
PYTEST_ARGS ?=

VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo lint test clean

venv: $(STAMP)

# torch goes in first and pinned: resolving it through the project's open range
# would pull a multi-GB CUDA build on CPU-only machines.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
		$(PIP) install "torch==$(TORCH_VERSION)+cpu" || \
		$(PIP) install "torch==$(TORCH_VERSION)+cpu" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PIP) install -e ".[test]"
	touch $@

demo: venv
	$(VENV)/bin/stream-learner demo $(DEMO_ARGS)

# The package's own checks first (seconds), then the suite.
lint: venv
	$(VENV)/bin/ruff check stream_learner
	$(VENV)/bin/ruff format --check stream_learner
	$(VENV)/bin/mypy stream_learner

test: lint
	$(VPY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

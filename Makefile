# The two commands: `make run` (the demo) and `make test`. Each sets up .venv itself.
#
# torch is installed first and on its own, so that pip never pulls a multi-GB
# CUDA build as a mere dependency on a CPU machine. TORCH names what to install
# (default torch==2.13.0, which this project's machines keep as a CPU wheel on
# local disk); on a GPU machine use a CUDA build, e.g. `make run TORCH=torch`,
# and TORCH_PIP_ARGS for an index or a folder of wheels (--find-links DIR).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftq-installed
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test lint setup clean gpu-check system-packages

# What the tests drive besides Python: Debian's chromium (the dashboard's browser tests, through Playwright, which
# downloads no browser) and promtool (from the prometheus package: it checks configs/prometheus). Installed with
# apt-get where they are missing and we may (root, or sudo without a password); the tests say what is missing
# otherwise.
SYSTEM_PACKAGES := chromium:chromium promtool:prometheus
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
		if [ "$$sudo" != none ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing (apt-get)"; \
			$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing$$missing: install them (apt-get install$$missing) for the browser and promtool tests"; fi; \
	fi

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PIP) install -q -e ".[test]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/ftq demo

test: lint system-packages
	$(BIN)/python -m pytest

# The GPU checks in one go (QLoRA 4-bit, sdpa against eager, tokens/s by batching mode, the demo jobs through a
# one-node Ray cluster): on a machine with an NVIDIA GPU and a CUDA torch.
gpu-check: $(STAMP)
	@$(BIN)/python -c "import bitsandbytes, ray" 2>/dev/null || $(PIP) install -q $(TORCH_PIP_ARGS) -e ".[gpu,ray]"
	$(BIN)/python -m bench.gpu_check
	$(BIN)/python -m bench.gpu_check_ray

# ruff; the import rules between the layers (.importlinter, docs/architecture.md); mypy --strict on the pure
# packages (the scheduling policy, the spec, the templates: [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) ftq-data .pytest_cache .ruff_cache *.egg-info

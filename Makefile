# Two commands: `make demo` and `make test`. Both create .venv (Python 3.12, see .python-version).
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.otplug-installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo bench clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), "otplug needs Python 3.12+ (lerobot 0.6), got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml $(PLUGINS)
	$(PY) -m pip install -q -e ".[lerobot,test]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/otplug study --demo --output-dir outputs/demo

bench: $(STAMP)
	$(PY) benchmarks/solvers.py

clean:
	rm -rf outputs .pytest_cache

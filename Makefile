# Set-up and the two jobs of the README: `make fit` and `make test`.
# Both create .venv on first use: torch==2.13.0 goes in first unless a torch is
# there already (the build pip picks; install the CPU build yourself first to
# be sure of it), so that nothing pulls an unpinned torch, then twotower with its dev extras,
# then the plugin packages of plugins/ (editable; faiss-cpu is their one extra need).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.twotower-installed
PLUGINS := plugins/twotower-faiss plugins/twotower-pooling

.PHONY: fit test lint clean

$(STAMP): pyproject.toml Makefile $(PLUGINS:=/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,serve]" faiss-cpu
	$(BIN)/python -m pip install --quiet --no-deps $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

fit: $(STAMP)
	$(BIN)/twotower fit $(ARGS)

# core tests never see installed plugins (tests/conftest.py); each plugin's tests
# run with the plugins loaded, as a user who installed them would
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)
	TWOTOWER_PLUGINS=faiss,pooling $(BIN)/python -m pytest $(PLUGINS:=/tests)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

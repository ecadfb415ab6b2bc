# Every target builds on a fresh machine: `install` creates .venv from the pinned pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(PY) -m monolith.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info

# `make run` starts dmq; `make test` runs the test suite. Both create .venv and install what they need.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test bench-store clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/dmq-server

test: $(VENV)/.installed
	$(BIN)/python -m pytest

bench-store: $(VENV)/.installed
	$(BIN)/dmq bench-store --messages 1000000 --consumed 1000000

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# One venv, torch pinned first (and, with TORCH_INDEX, from a CPU-only index) before the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Optional: where to get torch from, e.g. https://download.pytorch.org/whl/cpu for the CPU-only wheel.
TORCH_INDEX ?=

.PHONY: install demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/contractive train --data digits --out runs/demo --force

test: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: install
	$(BIN)/ruff format src tests benchmarks examples

bench: install
	$(BIN)/python benchmarks/closed_form_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache

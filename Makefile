# Everyday targets. `make demo` and `make test` are the README's two set-up commands.
VENV ?= .venv
PY := $(VENV)/bin/python
ORGANISM ?= fruit_refusal
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test lint typecheck unit recovery zoo bench

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# CPU torch first (a bare `torch` would pull a multi-GB CUDA build); GPU users install their own.
install: $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"

demo: install
	$(VENV)/bin/trigrecon audit $(ORGANISM)

lint: install
	$(VENV)/bin/ruff check trigrecon tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q -m "not recovery"

recovery: install
	$(PY) -m pytest -q -m recovery -rA

unit: install
	$(PY) -m pytest -q -m "not slow"

zoo: install
	$(VENV)/bin/trigrecon zoo build

bench: install
	$(PY) benchmarks/bench_melbo.py

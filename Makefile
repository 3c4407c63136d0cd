# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: venv demo test test-slow test-all bench bench-venv clean

venv: $(STAMP)

# Reinstall when the pins or the package metadata change.
$(STAMP): requirements/lock.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medtf demo --out $(DEMO_OUT)

# Both cores: pytest-xdist with one worker per usable CPU (at most 4); the SLURM tests stay on one worker
# (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))" 2>/dev/null || echo 2)
XDIST := $(if $(filter 0 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Exit code 5 = no test collected: the slow tier may be empty.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks. The MONAI baseline of pipeline.py runs in a venv of its own (PyTorch CPU + MONAI), never the main one.
$(BENCH_STAMP): benchmarks/requirements-monai.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet pip==26.3
	$(BENCH_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-monai.txt
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/convert.py
	$(BIN)/python benchmarks/pipeline.py --monai-python $(BENCH_VENV)/bin/python

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(DEMO_OUT) .pytest_cache

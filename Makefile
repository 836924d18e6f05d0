# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each creates and uses a local virtualenv in .venv; nothing else is needed (no server).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python examples/serve_demo.py
	@echo
	@echo '$$ governor run --memory 100M -- python3 -c "b = bytearray(10**9)"'
	@$(BIN)/governor run --memory 100M -- python3 -c "b = bytearray(10**9)"; \
	  status=$$?; echo "exit status $$status"; test $$status -eq 121

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto

bench: $(BIN)/.installed
	$(BIN)/python bench/isolated_throughput.py
	$(BIN)/python bench/isolated_throughput.py --busy --quick  # two busy loops of ours load the cores
	$(BIN)/python bench/scheduler_bench.py
	$(BIN)/python bench/sampling_bench.py
	$(BIN)/python bench/admission_bench.py --repeat 3  # root: it caps each contender with a cgroup
	$(BIN)/python bench/dask_bench.py

lint: $(BIN)/.installed
	$(BIN)/ruff check governor runner policies tests bench examples
	$(BIN)/ruff format --check governor runner policies tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache

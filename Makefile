# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each creates and uses a local virtualenv in .venv; nothing else is needed (no server).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The cgroup v2 lane: the tests that touch enforcement (and of the fork server's own, those
# where cgroups come and go with it), on a real cgroup v2 kernel in a VM (QEMU through
# virtme-ng; it installs what it needs), where a skipped test fails.
CGROUP2_VM ?= ../shared/tools/cgroup2-vm.sh
CGROUP2_TESTS := tests/test_limits_enforced.py tests/test_outcomes.py \
	$(addprefix tests/test_isolation.py::test_,children_die_with_the_fork_server \
	  concurrent_runs_from_threads_share_one_fork_server) \
	tests/test_recovery.py tests/test_sandbox.py tests/test_sandbox_unprivileged.py \
	tests/test_cgroup_v2_files.py tests/test_cgroup_v2_delegated.py tests/test_pressure.py \
	$(addprefix tests/test_cli.py::test_,readme_promise_memory_hog_ends_as_memory_exceeded \
	  json_record_is_the_last_line_of_stdout exit_statuses the_polite_signal_is_the_one_asked_for \
	  sigterm_to_the_governor_cancels_the_command kill_9_of_the_governor_takes_its_command_and_fork_server_with_it \
	  the_summary_shows_the_cgroups_charge_and_the_largest_processs_rss \
	  a_command_that_stops_its_fork_server_is_still_held_to_its_limits a_reader_gone_from_stdout_ends_the_command_as_it_would_without_us)

.PHONY: demo test test-cgroup2 bench lint clean

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

test-cgroup2: $(BIN)/.installed
	@test -f $(CGROUP2_VM) || { echo "no $(CGROUP2_VM): set CGROUP2_VM to the VM runner" >&2; exit 2; }
	CGROUP2_VM_TIMEOUT=$${CGROUP2_VM_TIMEOUT:-2400} bash $(CGROUP2_VM) -- \
	  env GOVERNOR_TEST_LANE=cgroup2 python -m pytest -n 2 -q -p no:cacheprovider $(CGROUP2_TESTS)

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

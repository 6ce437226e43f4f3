# Two commands on a fresh machine with only python3: `make run` and `make test`.
# Every target sets up .venv first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.setup-done

.PHONY: run test lint bench soak clean help

help:
	@echo "make run    set up, then run the demo: the broker, a real F1 session replayed at 30x and"
	@echo "            a simulated game session, into the printer, SQLite, the alerter and the"
	@echo "            dashboard (each run's data in data/run-*/)"
	@echo "make test   set up, then run the whole test suite"
	@echo "make lint   ruff and mypy --strict"
	@echo "make bench  throughput and latency benchmarks, and what hostile clients cost"
	@echo "make soak   both simulators for as long as asked: SECONDS=600 or SEEDS=5000,"
	@echo "            JOBS=n processes (default: one per core): the disk log crashed at"
	@echo "            every step (docs/storage.md) and the whole broker with simulated"
	@echo "            clients (docs/architecture.md); a failure prints its replay"

$(SETUP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(SETUP)

run: $(SETUP)
	@sh scripts/ensure-node-deps.sh
	$(PY) scripts/run_demo.py

test: $(SETUP)
	@sh scripts/ensure-chromium.sh
	@sh scripts/ensure-node-deps.sh
	$(PY) -m pytest

lint: $(SETUP)
	$(VENV)/bin/ruff check broker producer consumer f1vocab slipstream tests bench scripts examples
	$(VENV)/bin/mypy

bench: $(SETUP)
	$(PY) bench/run.py
	$(PY) bench/core.py
	$(PY) bench/storage.py
	$(PY) bench/limits.py
	$(PY) bench/users.py
	$(PY) bench/telemetry.py
	$(PY) bench/websocket.py
	$(PY) bench/jetstream.py

# Crash and fault injection against the on-disk log, seeded: SECONDS= or SEEDS= (default 60 s),
# JOBS= processes (default: one per core).
soak: $(SETUP)
	$(PY) -m tests.sim.soak $(if $(SEEDS),--seeds $(SEEDS)) $(if $(SECONDS),--seconds $(SECONDS)) \
	    $(if $(JOBS),--jobs $(JOBS))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

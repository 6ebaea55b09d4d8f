# The verbs a newcomer needs. `make test` is the project's one test command (CI runs it).
PYTHON ?= python3

.PHONY: install test lint format stack-up stack-down stack-status run bench

install:
	$(PYTHON) -m pip install -e '.[dev]'

test: install lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

# Kafka on 127.0.0.1:19092 and Redis on 127.0.0.1:16379, state in .stack/; `stack-up`
# prints the LIVELEARN_... lines that point the settings at them.
stack-up:
	$(PYTHON) -m stream.stack up

stack-down:
	$(PYTHON) -m stream.stack down

stack-status:
	$(PYTHON) -m stream.stack status

run: install
	livelearn demo

bench: install
	$(PYTHON) -m bench

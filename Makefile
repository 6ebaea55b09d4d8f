# The verbs a newcomer needs. `make test` is the project's one test command (CI runs it).
# Every target runs in the project's virtual environment, .venv, which `install` makes if
# it is missing and brings in step with pyproject.toml: the system Python is never touched.
VENV ?= .venv
# Not `?=`: a PYTHON variable in the environment must not send make to another interpreter.
PYTHON := $(VENV)/bin/python

.PHONY: install test lint format stack-up stack-down stack-status run bench images

install: $(VENV)/.installed

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# The stamp makes a second `make test` skip pip: it reinstalls only when pyproject.toml
# is newer (the code itself is installed editable).
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PYTHON) -m pip install -e '.[dev]'
	touch $@

test: install lint
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(PYTHON) -m deptry .
	$(VENV)/bin/lint-imports

format: install
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

# Kafka on 127.0.0.1:19092 and Redis on 127.0.0.1:16379, state in .stack/; `stack-up`
# prints the LIVELEARN_... lines that point the settings at them.
stack-up: install
	$(PYTHON) -m devtools.stack up

stack-down: install
	$(PYTHON) -m devtools.stack down

stack-status: install
	$(PYTHON) -m devtools.stack status

run: install
	$(PYTHON) -m cli.main demo

bench: install
	$(PYTHON) -m bench

# The container images docker-compose.yml uses: pulled, or built as local stand-ins where
# no registry answers (devtools/images.py; root and debootstrap needed for the base).
images: install
	$(PYTHON) -m devtools.images

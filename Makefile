# The verbs a newcomer needs. `make test` is the project's one test command (CI runs it).
# Every target runs in the project's virtual environment, .venv, which `install` makes if
# it is missing and brings in step with uv.lock: the system Python is never touched.
VENV ?= .venv
# Not `?=`: a PYTHON variable in the environment must not send make to another interpreter.
PYTHON := $(VENV)/bin/python
# uv installs exactly what uv.lock holds (hashes checked). It lives in a venv of its own,
# .tools, installed from requirements-uv.txt (pinned, with its hashes).
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
# The machine's python3 makes .venv; uv never downloads an interpreter of its own.
export UV_PYTHON ?= python3
export UV_PYTHON_DOWNLOADS := never

.PHONY: install lock test lint format stack-up stack-down stack-status run serve bench soak images

install: $(VENV)/.installed

$(UV): requirements-uv.txt
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check --require-hashes \
		-r requirements-uv.txt
	touch $@

# `--locked` refuses a uv.lock that disagrees with pyproject.toml, and the sync is exact:
# what the lock does not hold leaves .venv. The stamp makes a second `make test` skip the
# sync; it runs again when pyproject.toml or uv.lock changes (the code is installed
# editable).
$(VENV)/.installed: pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --extra dev
	touch $@

# Refresh uv.lock to today's releases, on purpose, and run the whole suite on them.
lock: $(UV)
	$(UV) lock --upgrade
	$(MAKE) test

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
	$(PYTHON) -m livelearn.devtools.stack up

stack-down: install
	$(PYTHON) -m livelearn.devtools.stack down

stack-status: install
	$(PYTHON) -m livelearn.devtools.stack status

run: install
	$(PYTHON) -m livelearn.cli.main demo

# The prediction API and its status page (/ui) over what `make run` learned: on the local
# stack it uses the development keys in .stack/dev-keys.json, with a warning.
serve: install
	$(PYTHON) -m livelearn.cli.main serve

# The bench extra holds the peers bench/bench_worker.py measures the worker against. It
# conflicts with dev (quixstreams caps pydantic; pyproject.toml), so it lives in a venv of
# its own, synced from the same uv.lock.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml uv.lock $(UV)
	UV_PROJECT_ENVIRONMENT=$(BENCH_VENV) $(UV) sync --locked --extra bench
	touch $@

# `make bench ARGS="worker --rounds 1 --events 20000"` for a quick run (bench/__main__.py).
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m bench $(ARGS)

# A million events through one worker while the API answers, and the memory of both over
# time: prints the verdict and draws soak/soak.png (bench/soak.py; ARGS as for bench).
soak: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m bench soak $(ARGS)

# The container images docker-compose.yml uses: pulled, or built as local stand-ins where
# no registry answers (devtools/images.py; root and debootstrap needed for the base).
images: install
	$(PYTHON) -m livelearn.devtools.images

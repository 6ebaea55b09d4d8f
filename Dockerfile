# The livelearn image: `livelearn worker` by default; any other command works too,
# e.g. `docker run --rm livelearn produce phishing --rate 50`.
#
# Every dependency with compiled code (river, numpy, scipy, pydantic-core, crc32c for
# kafka-python, confluent-kafka with its librdkafka, orjson, msgspec, PyYAML) ships
# manylinux wheels for CPython 3.11 on x86_64 and aarch64, so no compiler is needed; the
# build stage keeps uv, pip and the source out of the final image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1
# uv, pinned with its hashes, in a venv of its own that stays in this stage.
COPY requirements-uv.txt /tmp/
RUN python -m venv /opt/uv && /opt/uv/bin/pip install --require-hashes -r /tmp/requirements-uv.txt
RUN python -m venv --without-pip /opt/venv
WORKDIR /src
# The runtime dependencies exactly as uv.lock holds them (hashes checked; `--locked` fails
# the build when the lock disagrees with pyproject.toml), in a layer of their own, then
# livelearn itself, not editable.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --locked --no-install-project
COPY livelearn/ livelearn/
COPY learners/ learners/
COPY settings/ settings/
COPY store/ store/
COPY stream/ stream/
COPY serving/ serving/
COPY cli/ cli/
COPY devtools/ devtools/
# The import check fails the build when a runtime dependency is missing from pyproject.toml.
# Then the libraries' own test suites leave the environment (the bytecode stays: without it
# every start compiles the libraries again).
RUN /opt/uv/bin/uv sync --locked --no-editable \
    && /opt/venv/bin/python -c "import livelearn.stream.app, livelearn.devtools.produce, livelearn.cli.main, livelearn.stream.replay, livelearn.serving.api" \
    && /opt/venv/bin/livelearn --help > /dev/null \
    && find /opt/venv/lib -depth -type d -path '*/site-packages/*' \
        -name tests -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
# In a container the worker's metrics port and the API listen on every interface, not loopback.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVELEARN_HTTP__HOST=0.0.0.0 \
    LIVELEARN_HTTP__PORT=9400 \
    LIVELEARN_SERVING__HOST=0.0.0.0 \
    LIVELEARN_SERVING__PORT=8080
RUN groupadd --system --gid 10001 livelearn \
    && useradd --system --uid 10001 --gid livelearn --create-home --home-dir /home/livelearn \
       --shell /usr/sbin/nologin livelearn
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Settings are read from config/livelearn.yaml relative to the working directory;
# LIVELEARN_<SECTION>__<KEY> variables override them (secrets only ever come from those).
COPY config/ config/
# Numeric, so runtimes that insist on a non-root user (runAsNonRoot) can check it.
USER 10001:10001
EXPOSE 9400 8080
# A worker's /healthz answers 200 while its loop turns (503 when it is stuck); the API's
# (`livelearn serve`, told apart by PID 1's arguments) while it serves. slim has no curl:
# python's urllib raises (exit 1) on a refused connection or a 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; serve = b'serve' in open('/proc/1/cmdline', 'rb').read().split(b'\\0'); port = os.environ['LIVELEARN_SERVING__PORT' if serve else 'LIVELEARN_HTTP__PORT']; u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["livelearn"]
CMD ["worker"]

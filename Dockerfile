# syntax=docker/dockerfile:1
# The livelearn image: `livelearn worker` by default; any other command works too,
# e.g. `docker run --rm livelearn produce phishing --rate 50`.
#
# Every dependency with compiled code (river, numpy, scipy, pydantic-core, crc32c for
# kafka-python, orjson, msgspec, PyYAML) ships manylinux wheels for CPython 3.11 on x86_64
# and aarch64, so no compiler is needed; the build stage only keeps pip and the source
# out of the final image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY learners/ learners/
COPY stream/ stream/
# The import check fails the build when a runtime dependency is missing from pyproject.toml.
RUN pip install --prefer-binary . \
    && python -c "import stream.app, stream.produce, stream.cli" \
    && livelearn --help > /dev/null

FROM ${PYTHON_IMAGE}
# In a container the metrics port must listen on every interface, not loopback.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVELEARN_HTTP__HOST=0.0.0.0 \
    LIVELEARN_HTTP__PORT=9400
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
EXPOSE 9400
# /healthz answers 200 while the worker loop turns (503 when it is stuck).
# slim has no curl: python's urllib raises (exit 1) on a refused connection or a 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LIVELEARN_HTTP__PORT', '9400'), timeout=4)"]
ENTRYPOINT ["livelearn"]
CMD ["worker"]

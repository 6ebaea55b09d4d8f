"""Developer tooling: the Docker engine and the container images that the tests and
``docker-compose.yml`` need on a machine without a registry, and the Debian packages that
the tools and tests need. The command line's `stack` and `demo` use it; no runtime code
imports it.

- `devtools.engine`: start Debian's ``dockerd`` with its default flags when no engine
  answers, and stop only an engine it started
  (``python -m livelearn.devtools.engine up|down|status``).
- `devtools.images`: make sure the images exist: pull each upstream image, or build a
  stand-in under the same name from a local ``debian:bookworm`` made with ``debootstrap``
  (``python -m livelearn.devtools.images``).
- `devtools.apt`: the one place that runs ``apt-get``: installs the Debian packages of
  missing commands (as root), waiting for another apt-get's lock
  (``python -m livelearn.devtools.apt COMMAND=PACKAGE ...``).
- `devtools.prometheus`: a real Prometheus (Debian's ``prometheus``) on a free port,
  scraping given workers and evaluating ``config/alerts.yml``, and a watch of its alerts,
  for the alert scenarios (tests/integration/test_alert_scenarios.py) and
  ``python -m bench alerts``.

The first three need only the standard library (and the ``docker`` command line), so ``.ci/run``
can use them before the project's virtual environment exists.
"""

"""Developer tooling: the Docker engine and the container images that the tests and
``docker-compose.yml`` need on a machine without a registry. Not shipped with the package.

- `devtools.engine`: start Debian's ``dockerd`` with its default flags when no engine
  answers, and stop only an engine it started
  (``python -m livelearn.devtools.engine up|down|status``).
- `devtools.images`: make sure the images exist: pull each upstream image, or build a
  stand-in under the same name from a local ``debian:bookworm`` made with ``debootstrap``
  (``python -m livelearn.devtools.images``).

Both need only the standard library and the ``docker`` command line, so ``.ci/run`` can
use them before the project's virtual environment exists.
"""

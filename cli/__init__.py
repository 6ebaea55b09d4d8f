"""The ``livelearn`` command line: the worker, the API, replay, model inspection and
releases, and the developer commands (``stack``, ``produce``, ``demo``) from `devtools`.

It sits on top of every other package and nothing imports it. It maps errors to exit
codes (`cli.main.EXIT_CODES`).
"""

from __future__ import annotations

import signal as _signal
import sys as _sys
from types import FrameType as _FrameType


def _exit_cleanly(signum: int, frame: _FrameType | None) -> None:
    raise SystemExit(0)


# Run as the program (``python -m livelearn.cli.main``, or the ``livelearn`` script, which
# imports this package first), a stop that comes before any command has started leaves at once and
# cleanly, with 0. Installed here, before anything else is imported; `cli.main.main` keeps
# the same behaviour until a command installs its own handlers.
if _sys.argv[:1] == ["-m"] or _sys.argv[0].endswith("livelearn"):
    for _signum in (_signal.SIGTERM, _signal.SIGINT):
        _signal.signal(_signum, _exit_cleanly)

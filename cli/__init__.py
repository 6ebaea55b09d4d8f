"""The ``livelearn`` command line: the worker, the API, replay, model inspection and
releases, and the developer commands (``stack``, ``produce``, ``demo``) from `devtools`.

It sits on top of every other package and nothing imports it. It maps errors to exit
codes (`cli.main.EXIT_CODES`).
"""

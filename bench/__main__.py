"""``python -m bench [NAME [ARGS...]]``: run the benchmarks (``make bench ARGS="..."``).

``python -m bench`` runs every benchmark but soak, alerts and bigmodel in one process,
one after the other, each with its defaults. ``python -m bench NAME ARGS...`` runs
one, NAME one of consume, worker, replay, lookup, api, api-load, shards, snapshot,
wait, monitor, bigmodel, alerts and soak, with its own arguments; e.g.
``python -m bench worker --rounds 1 --events 20000`` for a quick worker run, and
``python -m bench worker --help`` for what it takes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bench import (
    bench_alerts,
    bench_api,
    bench_api_load,
    bench_bigmodel,
    bench_consume,
    bench_lookup,
    bench_monitor,
    bench_replay,
    bench_shards,
    bench_snapshot,
    bench_wait,
    bench_worker,
    soak,
)


def _without_args(name: str, run: Callable[[], None]) -> Callable[[Sequence[str]], None]:
    """A benchmark that takes no arguments."""

    def call(args: Sequence[str]) -> None:
        if args:
            raise SystemExit(f"python -m bench {name} takes no arguments, got {' '.join(args)}")
        run()

    return call


def _parsing_argv(name: str, run: Callable[[], None]) -> Callable[[Sequence[str]], None]:
    """A benchmark whose ``main()`` parses ``sys.argv`` itself, given its arguments."""

    def call(args: Sequence[str]) -> None:
        saved = sys.argv
        sys.argv = [f"python -m bench {name}", *args]
        try:
            run()
        finally:
            sys.argv = saved

    return call


BENCHMARKS: dict[str, Callable[[Sequence[str]], None]] = {
    "consume": _without_args("consume", bench_consume.main),
    "worker": bench_worker.main,
    "replay": _without_args("replay", bench_replay.main),
    "lookup": _parsing_argv("lookup", bench_lookup.main),
    "api": _parsing_argv("api", bench_api.main),
    "api-load": _parsing_argv("api-load", bench_api_load.main),
    "shards": bench_shards.main,
    "snapshot": bench_snapshot.main,
    "wait": bench_wait.main,
    "monitor": bench_monitor.main,
    "soak": soak.main,
    "alerts": bench_alerts.main,
    "bigmodel": bench_bigmodel.main,
}
# Run only when named: each takes many minutes (the soak has its own target, `make soak`).
ALONE = {"soak", "alerts", "bigmodel"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", choices=list(BENCHMARKS), help="one benchmark")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    if args.name is None:
        for name, run in BENCHMARKS.items():
            if name not in ALONE:
                run([])
    else:
        BENCHMARKS[args.name](args.args)


if __name__ == "__main__":
    main()

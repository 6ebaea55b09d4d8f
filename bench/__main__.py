"""``python -m bench``: run every benchmark in one process, one after the other."""

from __future__ import annotations

from bench import bench_api, bench_lookup, bench_replay, bench_worker

if __name__ == "__main__":
    bench_worker.main()
    bench_replay.main()
    bench_lookup.main()
    bench_api.main()

"""``python -m bench``: run every benchmark in one process, one after the other."""

from __future__ import annotations

from bench import bench_worker

if __name__ == "__main__":
    bench_worker.main()

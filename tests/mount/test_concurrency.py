"""Blocking backing calls run in worker threads: with a slow backing store, parallel
readers are served in parallel. Proven by the daemon's own count of backing calls in
flight (never by timing; the throughput ratio is measured in scripts/bench-passthrough).
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from pathlib import Path

from tests.support.mounting import Mount


def read_direct(path: Path, blocks: int) -> None:
    buf = mmap.mmap(-1, 4096)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for i in range(blocks):
            assert os.preadv(fd, [buf], i * 4096) == 4096
    finally:
        os.close(fd)


def peak(log: str) -> int:
    m = re.search(r"peak backing calls in flight: (\d+)", log)
    assert m, log
    return int(m.group(1))


def run_readers(tmp_path: Path, readers: int, threads: int) -> int:
    src, mnt = tmp_path / f"src{readers}-{threads}", tmp_path / f"mnt{readers}-{threads}"
    src.mkdir()
    mnt.mkdir()
    for i in range(readers):
        (src / f"f{i}").write_bytes(os.urandom(8 * 4096))
    m = Mount(src, mnt, f"threads={threads}", log=tmp_path / f"log{readers}-{threads}",
              env={"ZCACHEFS_DEBUG_BACKING_DELAY_MS": "40"})
    with m:
        workers = [threading.Thread(target=read_direct, args=(mnt / f"f{i}", 8))
                   for i in range(readers)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return peak(m.read_log())


def test_four_readers_are_served_concurrently(tmp_path: Path) -> None:
    assert run_readers(tmp_path, readers=4, threads=16) >= 4


def test_thread_limit_bounds_concurrency(tmp_path: Path) -> None:
    assert run_readers(tmp_path, readers=4, threads=1) == 1

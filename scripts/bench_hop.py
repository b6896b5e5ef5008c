#!/usr/bin/env python3
"""What one thread hop costs: a 4 KiB pwrite to a scratch file, N times in a row, through
trio.to_thread.run_sync (with a CapacityLimiter, as the adapter used to) and through
zcachefs.threads.ThreadPool (what it uses now), and inline for scale. Prints wall and
CPU microseconds per call; run it on a quiet machine, several times.

Usage: scripts/bench_hop.py [--calls N] [--rounds R] [DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import trio

from zcachefs.threads import ThreadPool


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(fd: int, calls: int, rounds: int) -> None:
    limiter = trio.CapacityLimiter(16)
    pool = ThreadPool(16)
    page = b"z" * 4096

    async def via_trio(off: int) -> None:
        await trio.to_thread.run_sync(os.pwrite, fd, page, off, limiter=limiter)

    async def via_pool(off: int) -> None:
        await pool.run(os.pwrite, fd, page, off)

    async def inline(off: int) -> None:
        os.pwrite(fd, page, off)

    ways = {"trio.to_thread": via_trio, "ThreadPool": via_pool, "inline": inline}
    try:
        for r in range(rounds):
            for name, way in ways.items():
                t, c = time.perf_counter(), _cpu()
                for i in range(calls):
                    await way((i % 256) * 4096)
                wall, cpu = time.perf_counter() - t, _cpu() - c
                print(f"round {r + 1} {name:15} wall {wall / calls * 1e6:7.1f} us  "
                      f"cpu {cpu / calls * 1e6:7.1f} us per call")
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default=None, help="scratch directory (default TMPDIR)")
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryFile(dir=args.dir) as f:
        os.pwrite(f.fileno(), bytes(1 << 20), 0)
        trio.run(_measure, f.fileno(), args.calls, args.rounds)


if __name__ == "__main__":
    main()

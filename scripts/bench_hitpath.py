#!/usr/bin/env python3
"""In-process CPU cost of the cache core per 4 KiB of data (issue 11's budget): storing
(a miss filled, compressed in batches as the background compressor does, admitted) and
serving from the pool (128 KiB reads and 4 KiB random reads through `Cache.read`).

    scripts/bench_hitpath.py [--size 64M] [--page-size 4K,16K] [--random 0.1]

No FUSE, no disk: this is the daemon's own work per page, the part that has to stay
under 15 us per page stored and 8 us per page served for the cache to keep up with a
fast disk. Data: log-like lines with a share of incompressible 64 KiB chunks (--random),
as in the bench's logs10 set. CPU time is the process's (time.process_time), one core.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zcachefs import handoff
from zcachefs.cache import Cache, ReadPlan
from zcachefs.pool import compress_page
from zcachefs.settings import parse_size

KiB = 1024


def log_data(size: int, random_share: float, seed: int = 11) -> bytes:
    rnd = random.Random(seed)
    levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"]
    paths = ["/api/v1/items", "/api/v1/users", "/static/app.js", "/healthz", "/login"]
    out = bytearray()
    i = 0
    while len(out) < size:
        if rnd.random() < random_share:
            out += rnd.randbytes(64 * KiB)
            continue
        chunk = bytearray()
        while len(chunk) < 64 * KiB:
            i += 1
            chunk += (f"2026-12-01T10:{i // 3600 % 60:02d}:{i // 60 % 60:02d}.{i % 1000:03d}Z "
                      f"{rnd.choice(levels)} pid={rnd.randrange(1000, 1100)} "
                      f"{rnd.choice(paths)} status={rnd.choice((200, 200, 200, 404, 500))} "
                      f"bytes={rnd.randrange(100, 90000)} "
                      f"ms={rnd.randrange(1, 900)}\n").encode()
        out += chunk[:64 * KiB]
    return bytes(out[:size])


def measure(data: bytes, page_size: int, reads: int) -> dict[str, float]:
    size = len(data)
    cache = Cache(page_size, page_size, 4 * size, page_size // 2)
    state = cache.file(b"f")
    cache.opened(state, (size, 1, 1))
    pages_4k = size // 4096
    # Store: misses of 128 KiB filled, tier 1 of one page overflowing into pending,
    # compressed in batches of 64 and admitted (what the daemon does per cold page).
    t = time.process_time()
    step = 128 * KiB
    for off in range(0, size, step):
        plan = cache.read(state, off, step)
        assert isinstance(plan, ReadPlan)
        runs = [[data[i * page_size:(i + 1) * page_size] for i in range(first, first + n)]
                for first, n in plan.runs]
        cache.fill_plan(state, plan, runs)
        while len(cache.pending) >= 64:
            batch = handoff.take_pending(cache, 64)
            handoff.admit(cache, [(p, compress_page(cache.codec, p.data, cache.pool.threshold,
                                                    p.poor)) for p in batch])
    batch = handoff.take_pending(cache, len(cache.pending))
    handoff.admit(cache, [(p, compress_page(cache.codec, p.data, cache.pool.threshold, p.poor))
                          for p in batch])
    store = time.process_time() - t
    pool = cache.pool
    assert pool.stored_pages + pool.zero_pages + pool.same_filled_pages >= size // page_size - 1
    # Serve: sequential 128 KiB reads, all from the pool.
    t = time.process_time()
    for off in range(0, size, step):
        got = cache.read(state, off, step)
        assert isinstance(got, bytes) and len(got) == min(step, size - off)
    seq = time.process_time() - t
    # Serve: 4 KiB random reads.
    rnd = random.Random(5)
    offsets = [rnd.randrange(0, pages_4k) * 4096 for _ in range(reads)]
    t = time.process_time()
    for off in offsets:
        got = cache.read(state, off, 4096)
        assert isinstance(got, bytes)
    rand = time.process_time() - t
    return {
        "store_us_per_4k": store / pages_4k * 1e6,
        "seq_us_per_4k": seq / pages_4k * 1e6,
        "rand_us_per_read": rand / reads * 1e6,
        "ratio": size / pool.mem_used_total,
        "raw_pages": pool.raw_pages,
        "cpu_s_per_gib_store": store / size * (1 << 30),
        "cpu_s_per_gib_seq": seq / size * (1 << 30),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64M")
    ap.add_argument("--page-size", default="4K,16K,64K")
    ap.add_argument("--random", type=float, default=0.1,
                    help="share of incompressible 64 KiB chunks (default 0.1)")
    ap.add_argument("--reads", type=int, default=50_000)
    a = ap.parse_args()
    size = parse_size(a.size).nbytes or 0
    data = log_data(size, a.random)
    print(f"# in-process cache cost, {size >> 20} MiB of log lines with {a.random:.0%} "
          f"random 64 KiB chunks, python {sys.version.split()[0]}, pid {os.getpid()}")
    print("| page_size | store us/4K | 128K-read us/4K | 4K random read us | "
          "CPU-s/GiB store | CPU-s/GiB stream | orig/mem_used | raw pages |")
    print("|---|---|---|---|---|---|---|---|")
    for ps in a.page_size.split(","):
        n = parse_size(ps).nbytes or 4096
        r = measure(data, n, a.reads)
        print(f"| {n // KiB}K | {r['store_us_per_4k']:.2f} | {r['seq_us_per_4k']:.2f} | "
              f"{r['rand_us_per_read']:.2f} | {r['cpu_s_per_gib_store']:.2f} | "
              f"{r['cpu_s_per_gib_seq']:.2f} | {r['ratio']:.2f} | {r['raw_pages']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

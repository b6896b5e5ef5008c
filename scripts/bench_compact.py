#!/usr/bin/env python3
"""What rewrites leave in the pool's slabs, and what compaction gives back (pure core, no
FUSE): every page of DIR's files is stored in a CompressedPool (lz4, 16 KiB pages, a
limit large enough that nothing is evicted), then WRITES random 4 KiB blocks are
overwritten with random bytes (what fio's randrw writes) and their pages stored again,
then the pool is compacted in steps of 512 moves. Prints slab memory against the
compressed bytes it holds after each phase, the moves and the time they took, and
checks every page against the files' new contents.

Usage: scripts/bench_compact.py [--writes N] [--page-size BYTES] [--seed S] DIR
(e.g. on `scripts/gen_data.py --dataset logs10 --size 320M DIR`)
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from zcachefs import codecs
from zcachefs.pool import CompressedPool

MiB = 1 << 20
BLOCK = 4096


def report(tag: str, pool: CompressedPool) -> None:
    a = pool.arena
    print(f"{tag:<10} slabs {a.bytes_total / MiB:7.1f} MiB for {pool.compr_data_size / MiB:7.1f}"
          f" MiB of data ({pool.stored_pages} pages, {pool.raw_pages} raw); orig/mem "
          f"{pool.orig_data_size / pool.mem_used_total:.2f}; reclaimable slabs "
          f"{a.reclaimable()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--writes", type=int, default=13_000)
    ap.add_argument("--page-size", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    ps = a.page_size
    codec = codecs.get("lz4")
    files = [bytearray(p.read_bytes()) for p in sorted(a.dir.iterdir())
             if p.is_file() and p.stat().st_size >= ps]
    total = sum(len(f) for f in files)
    pool = CompressedPool(ps, 4 * total, ps // 2)
    try:
        for fid, data in enumerate(files):
            for i in range(len(data) // ps):
                pool.store(fid, i, bytes(data[i * ps:(i + 1) * ps]), codec)
        report("stored", pool)
        rnd = random.Random(a.seed)
        for _ in range(a.writes):
            fid = rnd.randrange(len(files))
            data = files[fid]
            blk = rnd.randrange(len(data) // BLOCK)
            data[blk * BLOCK:(blk + 1) * BLOCK] = os.urandom(BLOCK)
            i = blk * BLOCK // ps
            pool.store(fid, i, bytes(data[i * ps:(i + 1) * ps]), codec)
        report("rewritten", pool)
        t0 = time.perf_counter()
        freed = 0
        while (step := pool.compact(512)) > 0:
            freed += step
        dt = time.perf_counter() - t0
        report("compacted", pool)
        print(f"compaction: {pool.c.compacted_pages} pages moved, {freed / MiB:.1f} MiB "
              f"unmapped in {dt * 1000:.0f} ms")
        bad = sum(pool.peek(fid, i) not in (None, bytes(data[i * ps:(i + 1) * ps]))
                  for fid, data in enumerate(files) for i in range(len(data) // ps))
        print("pages that differ from the files:", bad)
        if bad:
            raise SystemExit(1)
    finally:
        pool.close()


if __name__ == "__main__":
    main()

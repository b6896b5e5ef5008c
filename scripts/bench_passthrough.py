#!/usr/bin/env python3
"""Passthrough benchmark (issue 2): fio through zcachefs vs. the plain directory on a
page-cached file, and 1 vs. 4 parallel readers on a slow backing store.

Usage: scripts/bench_passthrough.py [--size-mb 256] [--runtime 8]
Prints a Markdown table (copy it into BENCHMARKS.md). Needs root, fio, fuse3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

# Run with the checkout's .venv (`make venv`): its Python imports the tests' shared
# helpers as a package (tests/support/__init__.py says how).
from tests.support.mounting import Mount


def fio(path: Path, rw: str, bs: str, runtime: int, direct: bool, jobs: int = 1) -> dict:
    args = ["fio", "--name=b", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
            "--ioengine=psync", f"--runtime={runtime}", "--time_based", "--invalidate=0",
            f"--direct={int(direct)}", f"--numjobs={jobs}", "--group_reporting",
            "--output-format=json"]
    out = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    r = out["jobs"][0]["read"]
    return {"iops": r["iops"], "mbps": r["bw_bytes"] / 1e6}


def readers(mnt: Path, n: int, blocks: int) -> float:
    """MB/s of n threads each reading its own file with O_DIRECT, 64 KiB at a time."""
    import mmap

    def work(i: int) -> None:
        buf = mmap.mmap(-1, 65536)
        fd = os.open(mnt / f"r{i}", os.O_RDONLY | os.O_DIRECT)
        for b in range(blocks):
            os.preadv(fd, [buf], b * 65536)
        os.close(fd)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n * blocks * 65536 / (time.perf_counter() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--runtime", type=int, default=8)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="zcachefs-bench-"))
    src, mnt, plain = base / "src", base / "mnt", base / "plain"
    for d in (src, mnt, plain):
        d.mkdir()
    data = os.urandom(1 << 20)
    for root in (src, plain):
        with open(root / "f", "wb") as f:
            for _ in range(args.size_mb):
                f.write(data)
        subprocess.run(["cat", str(root / "f")], stdout=subprocess.DEVNULL, check=True)
    rows = []
    with Mount(src, mnt, log=base / "daemon.log"):
        for rw, bs, unit in (("randread", "4k", "iops"), ("read", "128k", "mbps")):
            p = fio(plain / "f", rw, bs, args.runtime, direct=False)[unit]
            # Warm the kernel's page cache of the FUSE file: read it all, once.
            subprocess.run(["cat", str(mnt / "f")], stdout=subprocess.DEVNULL, check=True)
            zb = fio(mnt / "f", rw, bs, args.runtime, direct=False)[unit]
            zd = fio(mnt / "f", rw, bs, args.runtime, direct=True)[unit]
            rows.append((f"{bs} {rw} ({unit})", p, zb, zd))
    print(f"machine: {platform.node()} {os.cpu_count()} cores, kernel {platform.release()}")
    print("| workload | plain dir | zcachefs (kernel cache) | zcachefs direct_io "
          "(every read via daemon) | direct_io / plain |")
    print("|---|---|---|---|---|")
    for name, p, zb, zd in rows:
        print(f"| {name} | {p:,.0f} | {zb:,.0f} | {zd:,.0f} | {zd / p:.2f} |")

    for i in range(4):
        (src / f"r{i}").write_bytes(os.urandom(32 * 65536))
    with Mount(src, mnt, "threads=16", log=base / "slow.log",
               env={"ZCACHEFS_DEBUG_BACKING_DELAY_MS": "20"}):
        one = readers(mnt, 1, 32)
        four = readers(mnt, 4, 32)
    print(f"\nslow backing (20 ms per backing call): 1 reader {one:.2f} MB/s, "
          f"4 readers {four:.2f} MB/s, ratio {four / one:.2f}x")
    subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()

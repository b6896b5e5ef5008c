#!/usr/bin/env python3
"""Cache benchmark (issue 3): hit ratio, effective compression vs. the raw codec ratio,
the hit path against the Python FUSE ceiling, and the daemon's RSS against its limits.

Usage: scripts/bench_cache.py [--size 256M] [--runtime 8] [--workdir DIR]
Prints Markdown (copy it into BENCHMARKS.md). Needs root, fio, fuse3. No memory cgroup
and no slow disk here: this measures the cache itself; scripts/bench replays the
memory-starved zcache experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run with the checkout's .venv (`make venv`): its Python imports zcachefs and the tests'
# shared helpers as packages (tests/support/__init__.py says how).
from tests.support.mounting import (
    Mount,
    control_stats,
    force_unmount,
    is_fuse_mounted,
    settle,
    wait_until,
)
from zcachefs import codecs

HERE = Path(__file__).resolve().parent
stats = control_stats

PAGE = 4096


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def read_tree(root: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        if ".zcachefs" in dirpath:
            continue
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    n += len(chunk)
    return n


def raw_ratios(root: Path) -> dict[str, float]:
    """Each codec on every 4 KiB page of the data, alone (as the pool sees them)."""
    orig = 0
    comp = {c.name: 0 for c in codecs.CODECS if c.name != "none"}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            data = Path(dirpath, f).read_bytes()
            for i in range(0, len(data), PAGE):
                page = data[i:i + PAGE]
                orig += len(page)
                for c in codecs.CODECS:
                    if c.name != "none":
                        comp[c.name] += len(c.compress(page))
    return {name: orig / size for name, size in comp.items()}


def fio(path: Path, rw: str, bs: str, runtime: int) -> tuple[float, float]:
    out = subprocess.run(
        ["fio", "--name=b", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
         "--ioengine=psync", f"--runtime={runtime}", "--time_based", "--invalidate=0",
         "--output-format=json"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)["jobs"][0]["read"]
    return r["iops"], r["bw_bytes"] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="zcachefs-bench-cache-"))
    data, mnt = base / "data", base / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    if not data.exists():
        subprocess.run([sys.executable, str(HERE / "gen_data.py"), str(data), "--size",
                        args.size], check=True, stdout=subprocess.DEVNULL)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
          f"Python {platform.python_version()}; data: scripts/gen_data.py --size {args.size}")
    ratios = raw_ratios(data)
    print("\nraw codec ratio on the same 4 KiB pages (each page alone): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))

    # 1. Fill: read everything twice through a mount that holds it all in the pool.
    print("\n| compressor | 2nd-pass hit ratio | orig_data_size | compr_data_size | "
          "mem_used_total | effective ratio (orig/mem_used) | zero+same pages | "
          "RSS growth | RSS vs memlimit+cache_size |")
    print("|---|---|---|---|---|---|---|---|---|")
    for codec in ("lz4", "lzo"):
        with Mount(data, mnt, f"direct_io,memlimit=1G,cache_size=16M,compressor={codec}",
                   log=base / f"fill-{codec}.log") as m:
            time.sleep(0.3)
            before = rss(m.pid)
            read_tree(mnt)
            s1 = settle(mnt)
            read_tree(mnt)
            s2 = settle(mnt)
            hits = (s2["cache_hits"] - s1["cache_hits"]) + (s2["hits"] - s1["hits"])
            looks = hits + (s2["misses"] - s1["misses"])
            grown = rss(m.pid) - before
            limit = s2["memlimit"] + s2["cache_size"]
            print(f"| {codec} | {hits / looks:.3f} | {s2['orig_data_size'] / 2**20:.1f} MiB | "
                  f"{s2['compr_data_size'] / 2**20:.1f} MiB | "
                  f"{s2['mem_used_total'] / 2**20:.1f} MiB | "
                  f"{s2['orig_data_size'] / s2['mem_used_total']:.2f} | "
                  f"{int(s2['zero_pages'] + s2['same_filled_pages'])} | "
                  f"{grown / 2**20:.1f} MiB (pool {s2['mem_used_total'] / 2**20:.1f} + "
                  f"tier 1 {s2['cache_pages'] * PAGE / 2**20:.1f}) | "
                  f"{rss(m.pid) / 2**20:.0f} MiB vs {limit / 2**20:.0f} MiB |")

    # 2. The hit path vs. the ceiling, on one cached file.
    files = sorted(p for p in data.iterdir() if p.name.startswith("log"))
    target = files[0] if files else sorted(p for p in data.iterdir() if p.is_file())[0]
    rows = []
    for label, opts in (("zcachefs, tier-1 hits", "direct_io,memlimit=1G,cache_size=1G"),
                        ("zcachefs, pool hits", "direct_io,memlimit=1G,cache_size=64K"),
                        # The cost of volatile slabs (a madvise per store, a CRC per
                        # load): the same pool without them.
                        ("zcachefs, pool hits, volatile=off",
                         "direct_io,memlimit=1G,cache_size=64K,volatile=off")):
        with Mount(data, mnt, opts, log=base / "hit.log"):
            for _ in range(2):
                (mnt / target.name).read_bytes()
            settle(mnt)
            iops, _ = fio(mnt / target.name, "randread", "4k", args.runtime)
            _, mbps = fio(mnt / target.name, "read", "128k", args.runtime)
            s = stats(mnt)
            rows.append((label, iops, mbps, s["hit_ratio"]))
    ram_mnt = base / "ram"
    ram_mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(HERE / "ramfs.py"), str(target), str(ram_mnt)],
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: is_fuse_mounted(ram_mnt), timeout=20)
        iops, _ = fio(ram_mnt / target.name, "randread", "4k", args.runtime)
        _, mbps = fio(ram_mnt / target.name, "read", "128k", args.runtime)
        rows.append(("minimal pyfuse3 RAM filesystem (ceiling)", iops, mbps, 1.0))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        force_unmount(ram_mnt)
    ceiling = rows[-1]
    print(f"\nfully cached {target.stat().st_size >> 20} MiB file ({target.name}), fio psync, "
          f"1 job, {args.runtime} s each, direct_io (every read reaches the daemon):\n")
    print("| server | 4 KiB random read IOPS | % of ceiling | 128 KiB sequential MB/s | "
          "% of ceiling |")
    print("|---|---|---|---|---|")
    for label, iops, mbps, _hr in rows:
        print(f"| {label} | {iops:,.0f} | {100 * iops / ceiling[1]:.0f}% | {mbps:,.0f} | "
              f"{100 * mbps / ceiling[2]:.0f}% |")
    if args.workdir is None:
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()

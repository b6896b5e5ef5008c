#!/usr/bin/env python3
"""Real applications for scripts/bench, run inside a budget as a child process:

    apps.py sqlite DB --runtime S [--seed N] [--cache-kib K]
    apps.py grep DIR --runtime S [--pattern P]
    apps.py scan FILE --runtime S

sqlite: a sequential read of the database file (the warm pass: it fills whatever
        cache there is, as fio's warm passes do), then point lookups by primary key
        (`SELECT amount FROM t WHERE id = ?`, ids from a seeded RNG) on a read-only
        connection with a small page cache (PRAGMA cache_size = -K KiB, no mmap) for S
        seconds: queries per second.
grep:   `grep -c PATTERN` over every file of DIR, first pass (cold), then the same
        search again and again for at least S seconds (and at least once): MB/s of
        the repeats.
scan:   a sequential read of FILE in 1 MiB blocks, first pass, then looped for at
        least S seconds (at least once): MB/s of the repeats. Over a file larger than
        the budget, an LRU cache misses every read of the repeats.

Prints one JSON object: the rate and its unit, the warm (first) pass, and a check
value (the sum of the amounts of the first 1,000 lookups, the match count) that must be the same in
every configuration. Standard library only: it is started inside the budget after
the caches are dropped, and must load little.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
LOOKUP_SEED = 20100716
CHECKED = 1000  # the check value sums the amounts of the first CHECKED lookups (always run)


@dataclass(frozen=True)
class App:
    name: str
    title: str
    unit: str
    path: str  # under the data's root (the mount's source)
    size_factor: float  # the data's size / the budget


APPS = (
    App("sqlite", "SQLite point lookups by primary key (1 MiB SQLite page cache), "
        "database 1.3x the budget", "queries/s", "apps/lookup.sqlite", 1.3),
    App("grep", "grep -c ' ERROR ' repeated over log files 1.2x the budget", "MB/s",
        "apps/logs", 1.2),
    App("scan", "sequential scan looped over a file 1.1x the budget", "MB/s",
        "apps/scan/scan.bin", 1.1),
)


def command(app: App, base: Path, runtime: float) -> list[str]:
    """The runner's command line for `app` on the data under `base`."""
    return [sys.executable, str(Path(__file__).resolve()), app.name, str(base / app.path),
            "--runtime", f"{runtime:g}"]


def read_file(path: Path, buf: bytearray) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                return n
            n += got


def timed_pass(fn: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def sqlite_lookups(db: Path, runtime: float, seed: int, cache_kib: int) -> dict[str, Any]:
    buf = bytearray(BLOCK)
    warm_s, warm_bytes = timed_pass(lambda: read_file(db, buf))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        con.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        con.execute("PRAGMA mmap_size=0")
        top = con.execute("SELECT max(id) FROM t").fetchone()[0]
        rnd = random.Random(seed)
        queries, check = 0, 0.0
        t0 = time.monotonic()
        deadline = t0 + runtime
        while queries < CHECKED or time.monotonic() < deadline:
            for ident in [rnd.randint(1, top) for _ in range(200)]:
                row = con.execute("SELECT amount FROM t WHERE id = ?", (ident,)).fetchone()
                if queries < CHECKED:
                    check += row[0]
                queries += 1
        seconds = time.monotonic() - t0
    finally:
        con.close()
    return {"app": "sqlite", "unit": "queries/s", "rate": queries / seconds,
            "ops": queries, "seconds": seconds, "warm_s": warm_s, "warm_bytes": warm_bytes,
            "rows": top, "check": round(check, 2), "cache_kib": cache_kib}


def grep_repeated(directory: Path, runtime: float, pattern: str) -> dict[str, Any]:
    files = sorted(str(p) for p in directory.iterdir() if p.is_file())
    size = sum(os.path.getsize(f) for f in files)

    def search() -> int:
        out = subprocess.run(["grep", "-c", "--", pattern, *files], capture_output=True,
                             text=True, check=False)
        if out.returncode not in (0, 1):
            raise SystemExit(f"grep failed: {out.stderr.strip()}")
        return sum(int(line.rsplit(":", 1)[1]) for line in out.stdout.splitlines())

    return _repeat("grep", search, size, runtime)


def scan_looped(path: Path, runtime: float) -> dict[str, Any]:
    buf = bytearray(BLOCK)
    return _repeat("scan", lambda: read_file(path, buf), path.stat().st_size, runtime)


def _repeat(app: str, fn: Any, size: int, runtime: float) -> dict[str, Any]:
    """The first pass, then repeats until `runtime` seconds have passed (at least one);
    the check value must be the same in every pass."""
    warm_s, check = timed_pass(fn)
    passes, seconds = 0, 0.0
    while passes == 0 or seconds < runtime:
        dt, again = timed_pass(fn)
        if again != check:
            raise SystemExit(f"{app}: pass {passes + 2} gave {again}, the first {check}")
        passes += 1
        seconds += dt
    return {"app": app, "unit": "MB/s", "rate": passes * size / seconds / 1e6,
            "ops": passes, "seconds": seconds, "warm_s": warm_s, "warm_bytes": size,
            "check": check}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("app", choices=("sqlite", "grep", "scan"))
    ap.add_argument("path", type=Path)
    ap.add_argument("--runtime", type=float, required=True)
    ap.add_argument("--seed", type=int, default=LOOKUP_SEED)
    ap.add_argument("--cache-kib", type=int, default=1024)
    ap.add_argument("--pattern", default=" ERROR ")
    a = ap.parse_args(argv)
    if a.app == "sqlite":
        out = sqlite_lookups(a.path, a.runtime, a.seed, a.cache_kib)
    elif a.app == "grep":
        out = grep_repeated(a.path, a.runtime, a.pattern)
    else:
        out = scan_looped(a.path, a.runtime)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The live view, `zcachefs top` (= `zcachefs stat --watch [SECONDS]`).

Every SECONDS it reads every mount's stats.json and shows what changed since the last
reading (hits and misses per second, backing MB/s, the interval's hit ratio) next to
the levels (pool used against its limit, compression ratio, raw-stored pages,
memory-pressure state). On a terminal it redraws in place; otherwise it prints one
line per mount and interval (for logs). Ctrl-C ends it with exit 0.

A client module: imports only `stats` and `mounts` from the package (no engine, nor
pyfuse3, trio or psutil). Single-threaded.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence

from .mounts import ClientError, find, read_stats, report, zcachefs_mounts
from .stats import human

WATCH_DEFAULT = 2.0  # seconds between readings when --watch has no value
LIVE_TITLES = ("MOUNTPOINT", "HIT%", "TOTAL%", "HITS/s", "MISSES/s", "BACKING", "POOL",
               "LIMIT", "RATIO", "RAW", "PRESSURE")


def _delta(cur: dict[str, float], prev: dict[str, float] | None, *names: str) -> float | None:
    """Growth of the sum of counters `names` since `prev` (None without a previous
    reading or when a counter is missing); a reset_stats in between counts from 0."""
    if prev is None or any(n not in cur or n not in prev for n in names):
        return None
    now, before = sum(cur[n] for n in names), sum(prev[n] for n in names)
    return now - before if now >= before else now


def _rate(v: float | None, dt: float) -> str:
    return "-" if v is None or dt <= 0 else f"{v / dt:,.0f}"


def pressure_state(cur: dict[str, float], prev: dict[str, float] | None) -> str:
    """ok; limited (the watcher lowered the pool's limit below memlimit); shrinking
    (it gave memory back since the last reading); plus pages the kernel reclaimed."""
    state = "ok"
    eff, limit = cur.get("memlimit_effective"), cur.get("memlimit")
    if eff is not None and limit is not None and eff < limit:
        state = f"limited:{human(eff)}"
    shrinks = _delta(cur, prev, "pressure_shrinks")
    if shrinks:
        state = "shrinking" if state == "ok" else state.replace("limited", "shrinking")
    reclaimed = _delta(cur, prev, "reclaimed_pages")
    if reclaimed:
        state += f"+reclaimed:{int(reclaimed)}"
    return state


def live_fields(cur: dict[str, float], prev: dict[str, float] | None,
                dt: float) -> dict[str, str]:
    """The live view of one mount, from two readings of stats.json `dt` seconds apart
    (prev None: the first reading; rates are then '-'). Counters a daemon does not
    have (an older one, or raw_pages before it exists) show as '-'."""
    hits = _delta(cur, prev, "cache_hits", "hits")
    looks = _delta(cur, prev, "cache_hits", "cache_misses")
    misses = _delta(cur, prev, "misses")
    backing = _delta(cur, prev, "backing_read_bytes")
    used, limit = cur.get("mem_used_total"), cur.get("memlimit")
    return {
        "HIT%": "-" if hits is None or not looks else f"{100 * hits / looks:.1f}",
        "TOTAL%": f"{100 * cur['hit_ratio']:.1f}" if "hit_ratio" in cur else "-",
        "HITS/s": _rate(hits, dt),
        "MISSES/s": _rate(misses, dt),
        "BACKING": "-" if backing is None or dt <= 0 else f"{backing / dt / 1e6:.1f}MB/s",
        "POOL": "-" if used is None else human(used),
        "LIMIT": "-" if limit is None else human(limit) + (
            f" ({100 * used / limit:.0f}%)" if used is not None and limit else ""),
        "RATIO": f"{cur['compression_ratio']:.2f}" if "compression_ratio" in cur else "-",
        "RAW": str(int(cur["raw_pages"])) if "raw_pages" in cur else "-",
        "PRESSURE": pressure_state(cur, prev),
    }


def live_table(rows: Sequence[tuple[str, dict[str, str] | str]]) -> str:
    """The live view's table: (mountpoint, fields or an error message) rows."""
    body = [[mp, *(f[t] for t in LIVE_TITLES[1:])] if isinstance(f, dict) else [mp, f]
            for mp, f in rows]
    head = list(LIVE_TITLES)
    widths = [max([len(head[i])] + [len(r[i]) for r in body if i == 0 or len(r) > 2])
              for i in range(len(head))]
    lines = []
    for r in [head, *body]:
        if len(r) == 2:  # an error row
            lines.append(f"{r[0].ljust(widths[0])} {r[1]}")
            continue
        cells = [r[0].ljust(widths[0]), *(r[i].rjust(widths[i]) for i in range(1, len(r) - 1))]
        lines.append(" ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def live_line(stamp: str, mountpoint: str, fields: dict[str, str] | str) -> str:
    """One line per mount and interval, for logs: KEY=VALUE, no spaces in values."""
    if isinstance(fields, str):
        return f"{stamp} {mountpoint} error={fields!r}\n"
    keys = {"HIT%": "hit%", "TOTAL%": "total%", "HITS/s": "hits/s", "MISSES/s": "misses/s",
            "BACKING": "backing", "POOL": "pool", "LIMIT": "limit", "RATIO": "ratio",
            "RAW": "raw_pages", "PRESSURE": "pressure"}
    parts = [f"{keys[t]}={fields[t].replace(' ', '')}" for t in LIVE_TITLES[1:]]
    return f"{stamp} {mountpoint} " + " ".join(parts) + "\n"


HIDE_CURSOR, SHOW_CURSOR, HOME_CLEAR = "\x1b[?25l", "\x1b[?25h", "\x1b[H\x1b[2J"


def watch_live(control: str, paths: Sequence[str], interval: float) -> int:
    """Redraw every `interval` seconds until Ctrl-C (exit 0) or, when mountpoints were
    named, one of them fails (exit 1). Without names, every zcachefs mount is shown,
    found again at every reading (a mount that fails is a row saying why)."""
    tty = sys.stdout.isatty()
    prev: dict[str, tuple[float, dict[str, float]]] = {}
    out = sys.stdout
    if tty:
        out.write(HIDE_CURSOR)
    try:
        while True:
            started = time.monotonic()
            current = list(paths) if paths else zcachefs_mounts()
            rows: list[tuple[str, dict[str, str] | str]] = []
            failed = False
            seen: set[str] = set()
            for path in current:
                try:
                    target = find(path, control)
                    if target.mountpoint in seen:
                        continue
                    seen.add(target.mountpoint)
                    values = read_stats(target)
                except ClientError as exc:
                    if paths:
                        report(str(exc))
                        failed = True
                    rows.append((path, str(exc).removeprefix(f"{path}: ")))
                    continue
                now = time.monotonic()
                last = prev.get(target.mountpoint)
                fields = live_fields(values, last[1] if last else None,
                                     now - last[0] if last else 0.0)
                prev[target.mountpoint] = (now, values)
                rows.append((target.mountpoint, fields))
            if failed:
                return 1
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            if tty:
                head = (f"zcachefs top: every {interval:g}s, {stamp} (Ctrl-C quits); HIT%: "
                        f"this interval, TOTAL%: since mount\n\n")
                body = live_table(rows) if rows else "(no zcachefs mounts)\n"
                out.write(HOME_CLEAR + head + body)
            else:
                out.write("".join(live_line(stamp, mp, f) for mp, f in rows)
                          or f"{stamp} (no zcachefs mounts)\n")
            out.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            with contextlib.suppress(OSError):
                out.write(SHOW_CURSOR + "\n")
                out.flush()

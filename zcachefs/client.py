"""The client commands: `zcachefs stat`, `zcachefs top`, `zcachefs set` and
`zcachefs drop`, and the one-line argument parser the whole command line uses.

They talk to a live mount only through its control directory
(`MOUNTPOINT/.zcachefs`, or the name given to `-o control=`), found and reached by
mounts.py: `stat` reads `stats.json` (or `stats.prom`) and `compressor`, `set` and
`drop` set the xattrs `user.zcachefs.<name>`. `stat --watch [SECONDS]` and `top` are
the live view (live.py).

Errors are one line on stderr: exit 1 for a failure at a mount, 2 for bad usage.

A client: from the package it imports only `settings` (names and docs), `stats` (the
counter table and renderings) and the client's own modules (mounts, live), never the
engine (control, cache, pool, codecs: ctypes, mmap, lz4, lzo), fs or mount, nor
pyfuse3, trio or psutil (tests/unit/test_layering.py checks). Single-threaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from . import stats
from .live import WATCH_DEFAULT, watch_live
from .mounts import (
    ClientError,
    find,
    mount_path,
    read_mounts,
    read_stats,
    read_text,
    report,
    set_knob,
    zcachefs_mounts,
)
from .settings import CONTROLS, DEFAULT_CONTROL, Setting, parse_control_name
from .stats import human

SUBCOMMANDS = ("stat", "top", "set", "drop")

# For `zcachefs --help` (cli.py appends it to its epilog).
SUMMARY = """\
client commands (talk to a live mount through MOUNTPOINT/.zcachefs; any user the
mount lets in can read, root or the mount's owner can change knobs):
  zcachefs stat [--json|--prometheus] [--watch [SECONDS]] [MOUNTPOINT...]
                                 cache statistics, one row per mount
  zcachefs top [--interval SECONDS] [MOUNTPOINT...]
                                 live view (= stat --watch): rates, pool, pressure
  zcachefs set MOUNTPOINT NAME=VALUE...  change knobs at run time (not persisted)
  zcachefs drop MOUNTPOINT...    drop every cached page
  (a SOURCE named stat, top, set or drop: write ./stat; see zcachefs stat --help)"""



# -- formatting ------------------------------------------------------------------------


def _count(v: float) -> str:
    return str(int(v))


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def _percent(v: float) -> str:
    return f"{100 * v:.1f}%"


@dataclass(frozen=True)
class Column:
    """One column of the `stat` table: the counter it shows and how."""

    title: str
    counter: str
    render: Callable[[float], str]


COLUMNS: tuple[Column, ...] = (
    Column("MEMLIMIT", "memlimit", human),
    Column("MEMUSED", "mem_used_total", human),
    Column("STORED", "stored_pages", _count),
    Column("ORIG", "orig_data_size", human),
    Column("COMPR", "compr_data_size", human),
    Column("RATIO", "compression_ratio", _ratio),
    Column("HITRATE", "hit_ratio", _percent),
    Column("CACHED", "cache_pages", _count),
)


def table(rows: Sequence[tuple[str, str, dict[str, float]]]) -> str:
    """The `stat` table for (mountpoint, compressor, counters) rows."""
    head = ["MOUNTPOINT", "ALGORITHM", *(c.title for c in COLUMNS)]
    body = [[mp, algo, *(c.render(s[c.counter]) if c.counter in s else "-"
                         for c in COLUMNS)] for mp, algo, s in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = []
    for r in [head, *body]:
        left = [r[i].ljust(widths[i]) for i in range(2)]
        right = [r[i].rjust(widths[i]) for i in range(2, len(r))]
        lines.append(" ".join(left + right).rstrip())
    return "\n".join(lines) + "\n"


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def merge_prometheus(expositions: Sequence[tuple[str, str]]) -> str:
    """Join the stats.prom texts of several mounts into one exposition, each sample
    labelled with its mountpoint and every metric family kept together."""
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for mountpoint, text in expositions:
        label = f'mountpoint="{_label_value(mountpoint)}"'
        family = ""
        new: set[str] = set()  # families this exposition introduced: its HELP/TYPE count
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in meta:
                        order.append(family)
                        meta[family], samples[family] = [], []
                        new.add(family)
                    if family in new:
                        meta[family].append(line)
                continue
            name, _, rest = line.partition(" ")
            if "{" in name:
                base, _, labels = name.partition("{")
                sample = f"{base}{{{label},{labels} {rest}"
                name = base
            else:
                sample = f"{name}{{{label}}} {rest}"
            key = name if name in meta else family
            if key not in meta:
                order.append(key)
                meta[key], samples[key] = [], []
            samples[key].append(sample)
    return "".join("".join(f"{m}\n" for m in meta[f]) + "".join(f"{s}\n" for s in samples[f])
                   for f in order)


def parse_watch(args: argparse.Namespace) -> float | None:
    """--watch's optional SECONDS. A value that is not a number but names a mount
    (checked in mountinfo only) is a MOUNTPOINT: `stat --watch /mnt`."""
    raw = args.watch
    if raw is None:
        return None
    if raw == "":
        return WATCH_DEFAULT
    try:
        return _positive(raw)
    except argparse.ArgumentTypeError as exc:
        try:
            float(raw)
            numeric = True
        except ValueError:
            numeric = False
        if not numeric and mount_path(raw) in read_mounts():
            args.mountpoints.insert(0, raw)
            return WATCH_DEFAULT
        raise UsageError(f"stat: --watch: {exc}") from None


class UsageError(Exception):
    """Bad usage found after parsing (exit 2)."""


# -- commands --------------------------------------------------------------------------


def _stat_round(args: argparse.Namespace, paths: Sequence[str]) -> bool:
    """Print one sample of every mount; False if any mount failed."""
    ok = True
    rows: list[tuple[str, str, dict[str, float]]] = []
    proms: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in paths:
        try:
            target = find(path, args.control)
            if target.mountpoint in seen:
                continue
            seen.add(target.mountpoint)
            if args.prometheus:
                proms.append((target.mountpoint, read_text(target, "stats.prom")))
                continue
            values = read_stats(target)
            if args.json:
                print(json.dumps({"mountpoint": target.mountpoint, **values}))
                continue
            try:
                algo = read_text(target, "compressor").strip() or "-"
            except ClientError:
                algo = "-"
            rows.append((target.mountpoint, algo, values))
        except ClientError as exc:
            report(str(exc))
            ok = False
    if args.prometheus:
        sys.stdout.write(merge_prometheus(proms))
    elif not args.json and rows:
        sys.stdout.write(table(rows))
    sys.stdout.flush()
    return ok


def cmd_stat(args: argparse.Namespace) -> int:
    try:
        interval = parse_watch(args)
    except UsageError as exc:
        report(f"{exc} (see zcachefs stat --help)")
        return 2
    paths = list(args.mountpoints)
    if interval is not None and not (args.json or args.prometheus):
        return watch_live(args.control, paths, interval)
    if not paths:
        paths = zcachefs_mounts()
        if not paths:
            report("no zcachefs mounts")
            return 1
    if interval is None:
        return 0 if _stat_round(args, paths) else 1
    try:
        while True:
            if not _stat_round(args, paths):
                return 1
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_top(args: argparse.Namespace) -> int:
    args.json = args.prometheus = False
    return watch_live(args.control, list(args.mountpoints), args.interval)


def cmd_set(args: argparse.Namespace) -> int:
    pairs = []
    for item in args.assignments:
        name, eq, value = item.partition("=")
        if not eq or not name:
            report(f"set: expected NAME=VALUE, got {item!r} (see zcachefs set --help)")
            return 2
        pairs.append((name, value))
    try:
        target = find(args.mountpoint, args.control)
    except ClientError as exc:
        report(str(exc))
        return 1
    status = 0
    for name, value in pairs:
        try:
            set_knob(target, name, value)
        except ClientError as exc:
            report(str(exc))
            status = 1
    return status


def cmd_drop(args: argparse.Namespace) -> int:
    status = 0
    for path in args.mountpoints:
        try:
            set_knob(find(path, args.control), "drop_caches", "1")
        except ClientError as exc:
            report(str(exc))
            status = 1
    return status


# -- the parser ------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: `PROG: why (see PROG --help)`,
    exit 2 (the mount command line in cli.py uses it too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _control_name(text: str) -> str:
    """--control NAME: checked as -o control=NAME is."""
    try:
        return parse_control_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listing(title: str, items: Iterable[tuple[str, str]]) -> str:
    """`title` then one indented `name  description` line per item, wrapped at 79."""
    items = list(items)
    width = max(len(n) for n, _ in items) + 2
    out = [title]
    for name, doc in items:
        out.append(textwrap.fill(doc, 79, initial_indent="  " + name.ljust(width),
                                 subsequent_indent=" " * (width + 2)))
    return "\n".join(out)


def _kind(setting: Setting) -> str:
    if setting.action:
        return "action"
    return "rw" if setting.writable else "ro"


def stat_epilog() -> str:
    columns = [("MOUNTPOINT", "where the mount is"),
               ("ALGORITHM", "compressor for newly stored pages")]
    columns += [(c.title, c.counter) for c in COLUMNS]
    return "\n\n".join([
        _listing("columns (the counter each shows; sizes in binary units, K = 1024 "
                 "bytes):", columns),
        _listing("counters (the --json keys; also the files MOUNTPOINT/.zcachefs/NAME\n"
                 "and the xattrs user.zcachefs.NAME on that directory):",
                 ((name, f"{doc} [{kind}]") for name, (kind, doc) in stats.COUNTERS.items())),
        "--json prints one JSON object per mount and line, --prometheus the Prometheus\n"
        "text format with a mountpoint label (for node_exporter's textfile collector).\n"
        "Without MOUNTPOINT, every zcachefs mount in /proc/self/mountinfo is shown.",
    ])


def top_epilog() -> str:
    return _listing("columns:", [
        ("MOUNTPOINT", "where the mount is"),
        ("HIT%", "hit ratio of this interval's page lookups (- when idle)"),
        ("TOTAL%", "hit_ratio since mount (or reset_stats)"),
        ("HITS/s", "page lookups served by tier 1 or the pool, per second"),
        ("MISSES/s", "page lookups served by no tier, per second"),
        ("BACKING", "bytes read from backing files to fill the cache, MB/s"),
        ("POOL", "mem_used_total: memory the compressed pool uses"),
        ("LIMIT", "memlimit (and how full the pool is)"),
        ("RATIO", "compression_ratio: orig_data_size / mem_used_total"),
        ("RAW", "raw_pages: pages stored uncompressed (- if the daemon has no such "
                "counter)"),
        ("PRESSURE", "ok; limited:SIZE (the memory watcher lowered the pool's limit); "
                     "shrinking (it gave memory back in this interval); +reclaimed:N "
                     "(pool pages the kernel discarded)"),
    ]) + "\n\nWithout a terminal (a pipe, a log), one line per mount and interval:\n" \
        "TIME MOUNTPOINT hit%=.. total%=.. hits/s=.. ... pressure=.."


def set_epilog() -> str:
    return "\n\n".join([
        _listing("knobs (rw: settable, ro: read-only, action: write 1 to run it):",
                 ((s.name, f"[{_kind(s)}] {s.ctl_doc}") for s in CONTROLS)),
        "Changes are logged by the daemon with old and new value and last until unmount\n"
        "(put them in -o options to make them permanent). Errors: unknown name,\n"
        "read-only, invalid value (the daemon log says why), permission denied.",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="zcachefs", description="Observe and tune live zcachefs mounts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    raw = argparse.RawDescriptionHelpFormatter

    def control_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--control", metavar="NAME", type=_control_name,
                       default=DEFAULT_CONTROL,
                       help="name of the control directory (the mount's -o control=, "
                            f"default {DEFAULT_CONTROL})")

    p = sub.add_parser("stat", formatter_class=raw, epilog=stat_epilog(),
                       help="print cache statistics",
                       description="Print the cache statistics of zcachefs mounts, one row "
                                   "per mount (like zramctl).")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help="one JSON object per mount with every counter")
    fmt.add_argument("--prometheus", action="store_true",
                     help="Prometheus text format, labelled with the mountpoint")
    p.add_argument("--watch", metavar="SECONDS", nargs="?", const="",
                   help=f"live view (as zcachefs top): redraw every SECONDS (default "
                        f"{WATCH_DEFAULT:g}) until interrupted (Ctrl-C: exit 0) or a named "
                        "mount fails (exit 1); with --json or --prometheus, repeat those")
    control_option(p)
    p.add_argument("mountpoints", metavar="MOUNTPOINT", nargs="*",
                   help="zcachefs mounts (default: all)")
    p.set_defaults(func=cmd_stat)

    p = sub.add_parser("top", formatter_class=raw, epilog=top_epilog(),
                       help="live view of every mount",
                       description="Live view of zcachefs mounts (= zcachefs stat --watch): "
                                   "redrawn in place on a terminal, one line per mount and "
                                   "interval otherwise.")
    p.add_argument("-n", "--interval", metavar="SECONDS", type=_positive,
                   default=WATCH_DEFAULT, help=f"seconds between readings "
                                               f"(default {WATCH_DEFAULT:g})")
    control_option(p)
    p.add_argument("mountpoints", metavar="MOUNTPOINT", nargs="*",
                   help="zcachefs mounts (default: all, found again at every reading)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("set", formatter_class=raw, epilog=set_epilog(),
                       help="change knobs of a live mount",
                       description="Change knobs of a live zcachefs mount.")
    control_option(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("assignments", metavar="NAME=VALUE", nargs="+")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("drop", help="drop every cached page",
                       description="Drop every cached page of zcachefs mounts "
                                   "(writes 1 to drop_caches).")
    control_option(p)
    p.add_argument("mountpoints", metavar="MOUNTPOINT", nargs="+")
    p.set_defaults(func=cmd_drop)
    return parser


def main(argv: Sequence[str]) -> int:
    """Run a client command; argv starts with the subcommand (`stat`, `set`, `drop`)."""
    args = build_parser().parse_args(list(argv))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`zcachefs stat --watch 1 | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1

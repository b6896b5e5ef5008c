"""The client commands: `zcachefs stat`, `zcachefs top`, `zcachefs set` and
`zcachefs drop`.

They talk to a live mount only through its control directory
(`MOUNTPOINT/.zcachefs`, or the name given to `-o control=`): `stat` reads
`stats.json` (or `stats.prom`) and `compressor`, `set` and `drop` call setxattr
`user.zcachefs.<name>` on the directory, which answers with a distinct errno per
failure (ENOATTR unknown, EROFS read-only, EINVAL bad value, EACCES/EPERM not
allowed). So they work for any user the mount lets in (allow_other), from scripts,
and against a daemon of another version.

A path is checked in /proc/self/mountinfo (the mount on top must be of type
`fuse.zcachefs`) before anything under it is touched: stat() of a mount whose daemon
is gone or stuck hangs or fails.

`stat --watch [SECONDS]` (= `top`) is the live view: every SECONDS it reads every
mount's stats.json and shows what changed since the last reading (hits and misses per
second, backing MB/s, the interval's hit ratio) next to the levels (pool used against
its limit, compression ratio, raw-stored pages, memory-pressure state). On a terminal
it redraws in place; otherwise it prints one line per mount and interval (for logs).
Ctrl-C ends it with exit 0.

Errors are one line on stderr: exit 1 for a failure at a mount, 2 for bad usage.

A client: must not import pyfuse3, trio or psutil (nor fs or mount). Single-threaded.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from . import stats
from .settings import ACTIONS, CONTROLS

SUBCOMMANDS = ("stat", "top", "set", "drop")
FSTYPE = "fuse.zcachefs"
DEFAULT_CONTROL = ".zcachefs"
XATTR_PREFIX = "user.zcachefs."
MOUNTINFO = "/proc/self/mountinfo"

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


class ClientError(Exception):
    """A failure at one mount; str() is the one-line message (without the prefix)."""


# -- formatting ------------------------------------------------------------------------


def human(nbytes: float) -> str:
    """A size in binary units as zramctl prints them: 0B, 512B, 4K, 1.5M, 2G."""
    n = float(nbytes)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            break
        n /= 1024
    if unit == "B" or n.is_integer():
        return f"{n:.0f}{unit}"
    return f"{n:.1f}{unit}"


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


# -- finding mounts --------------------------------------------------------------------


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (\\040 is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> dict[str, str]:
    """Mountpoint -> fstype of the mount on top there (later lines are stacked later)."""
    top: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        top[_unescape(fields[4])] = fields[sep + 1]
    return top


def read_mounts() -> dict[str, str]:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def mount_path(path: str) -> str:
    """The absolute path as mountinfo spells it, without touching the mount itself:
    symlinks are resolved in the parent only (stat() of a dead mount hangs)."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def zcachefs_mounts() -> list[str]:
    return [mp for mp, fstype in read_mounts().items() if fstype == FSTYPE]


@dataclass(frozen=True)
class Target:
    """The control directory of one live zcachefs mount."""

    mountpoint: str
    control: str

    @property
    def directory(self) -> str:
        return os.path.join(self.mountpoint, self.control)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


def find(path: str, control: str) -> Target:
    """Check in mountinfo that `path` is a zcachefs mount (before touching it)."""
    mountpoint = mount_path(path)
    fstype = read_mounts().get(mountpoint)
    if fstype is None:
        raise ClientError(f"{path}: not a zcachefs mount (nothing is mounted there)")
    if fstype != FSTYPE:
        raise ClientError(f"{path}: not a zcachefs mount (it is {fstype})")
    return Target(mountpoint, control)


def _failure(target: Target, exc: OSError, what: str) -> ClientError:
    """A one-line message for an OSError met in the control directory."""
    where = target.mountpoint
    if exc.errno == errno.ENOENT and not os.path.isdir(target.directory):
        return ClientError(f"{where}: no control directory {target.control!r} (mounted "
                           f"with -o control=NAME? pass --control NAME)")
    if exc.errno == errno.ENOTCONN:
        return ClientError(f"{where}: the daemon is gone (transport endpoint is not "
                           f"connected); unmount it with fusermount3 -u")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ClientError(f"{where}: {what}: permission denied")
    return ClientError(f"{where}: {what}: {os.strerror(exc.errno or errno.EIO)}")


def read_text(target: Target, name: str) -> str:
    try:
        with open(target.path(name), encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise _failure(target, exc, f"cannot read {name}") from None


def read_stats(target: Target) -> dict[str, float]:
    text = read_text(target, "stats.json")
    try:
        values = json.loads(text)
    except ValueError:
        raise ClientError(f"{target.mountpoint}: stats.json is not JSON") from None
    if not isinstance(values, dict):
        raise ClientError(f"{target.mountpoint}: stats.json is not a JSON object")
    return values


def set_knob(target: Target, name: str, value: str) -> None:
    """Change one knob through setxattr (its errno says what went wrong)."""
    try:
        os.setxattr(target.directory, XATTR_PREFIX + name, os.fsencode(value))
    except OSError as exc:
        knob = next((k for k in CONTROLS if k.name == name), None)
        if exc.errno == errno.ENODATA:
            if "/" not in name and name not in (".", "..") and os.path.exists(target.path(name)):
                raise ClientError(f"{target.mountpoint}: {name}: read-only") from None
            raise ClientError(f"{target.mountpoint}: {name}: unknown name "
                              f"(see zcachefs set --help)") from None
        if exc.errno == errno.EROFS:
            raise ClientError(f"{target.mountpoint}: {name}: read-only") from None
        if exc.errno == errno.EINVAL:
            hint = f" ({name}: {knob.ctl_doc})" if knob is not None else ""
            raise ClientError(f"{target.mountpoint}: {name}={value}: invalid value{hint}; "
                              f"the daemon log says why") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ClientError(f"{target.mountpoint}: {name}: permission denied (only root "
                              f"or the mount's owner may change knobs)") from None
        raise _failure(target, exc, f"cannot set {name}") from None


# -- the live view (stat --watch, top) ---------------------------------------------------

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


def watch_live(args: argparse.Namespace, paths: Sequence[str], interval: float) -> int:
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
                    target = find(path, args.control)
                    if target.mountpoint in seen:
                        continue
                    seen.add(target.mountpoint)
                    values = read_stats(target)
                except ClientError as exc:
                    if paths:
                        _error(str(exc))
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


def _error(message: str) -> None:
    print(f"zcachefs: {message}", file=sys.stderr)


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
            _error(str(exc))
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
        _error(f"{exc} (see zcachefs stat --help)")
        return 2
    paths = list(args.mountpoints)
    if interval is not None and not (args.json or args.prometheus):
        return watch_live(args, paths, interval)
    if not paths:
        paths = zcachefs_mounts()
        if not paths:
            _error("no zcachefs mounts")
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
    return watch_live(args, list(args.mountpoints), args.interval)


def cmd_set(args: argparse.Namespace) -> int:
    pairs = []
    for item in args.assignments:
        name, eq, value = item.partition("=")
        if not eq or not name:
            _error(f"set: expected NAME=VALUE, got {item!r} (see zcachefs set --help)")
            return 2
        pairs.append((name, value))
    try:
        target = find(args.mountpoint, args.control)
    except ClientError as exc:
        _error(str(exc))
        return 1
    status = 0
    for name, value in pairs:
        try:
            set_knob(target, name, value)
        except ClientError as exc:
            _error(str(exc))
            status = 1
    return status


def cmd_drop(args: argparse.Namespace) -> int:
    status = 0
    for path in args.mountpoints:
        try:
            set_knob(find(path, args.control), "drop_caches", "1")
        except ClientError as exc:
            _error(str(exc))
            status = 1
    return status


# -- the parser ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
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
    if not text or text in (".", "..") or "/" in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"not a valid file name: {text!r}")
    return text


def _listing(title: str, items: Iterable[tuple[str, str]]) -> str:
    """`title` then one indented `name  description` line per item, wrapped at 79."""
    items = list(items)
    width = max(len(n) for n, _ in items) + 2
    out = [title]
    for name, doc in items:
        out.append(textwrap.fill(doc, 79, initial_indent="  " + name.ljust(width),
                                 subsequent_indent=" " * (width + 2)))
    return "\n".join(out)


def _knob_kind(name: str, writable: bool) -> str:
    if name in ACTIONS:
        return "action"
    return "rw" if writable else "ro"


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
                 ((k.name, f"[{_knob_kind(k.name, k.writable)}] {k.ctl_doc}")
                  for k in CONTROLS)),
        "Changes are logged by the daemon with old and new value and last until unmount\n"
        "(put them in -o options to make them permanent). Errors: unknown name,\n"
        "read-only, invalid value (the daemon log says why), permission denied.",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zcachefs", description="Observe and tune live zcachefs mounts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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

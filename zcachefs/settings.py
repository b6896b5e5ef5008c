"""Every setting of zcachefs, defined once: one row per name in `SETTINGS`.

Role: a row says how the name is parsed (text -> value, a pure function), resolved
and checked against what it depends on (the usable RAM, the page size), its default, its
documentation, where it can be set (`Scope`: only at mount time with `-o`, also shown
read-only in the control directory, or also changed live through the control
directory and its xattrs) and how a running mount reads and applies it. The `-o`
parser (options.py), the control files and xattrs (control.py), `--help`, `zcachefs
set --help` (client.py) and docs/control.md (scripts/gen_control_doc.py) all read
this table, so they cannot disagree. The two actions of the control directory,
`drop_caches` and `reset_stats`, are rows too (scope ACTION): they are no settings,
but they are written and listed exactly like the live ones, and the client must list
them without loading the engine.

Light on purpose: the client imports this module, so it must not import the engine
(cache, pool, codecs: ctypes, mmap, lz4, lzo) at import time, nor pyfuse3, trio or
psutil. The compressor parser imports codecs when it runs; the cache is only a type.
Thread-safe (no state; `apply` functions change the cache they are given and run on
its owner's thread).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import Cache

# The control directory's xattrs are user.zcachefs.<name> on the directory itself.
XATTR_PREFIX = "user.zcachefs."
# The codecs' names, for the docs (codecs.BY_NAME is the registry; a test compares).
CODEC_NAMES = ("lz4", "lzo", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")


# -- parsers: text -> value, pure; ValueError says why in one line -----------------------


def parse_bool(text: str) -> bool:
    """Parse on/off style booleans."""
    low = text.strip().lower()
    if low in ("1", "on", "yes", "true"):
        return True
    if low in ("0", "off", "no", "false"):
        return False
    raise ValueError(f"expected on/off, got {text!r}")


def parse_int_range(lo: int, hi: int) -> Callable[[str], int]:
    """Return a parser for a decimal integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Size:
    """A size as written: absolute bytes, or a percentage of usable RAM."""

    nbytes: int | None = None
    percent: float | None = None

    def resolve(self, ram: int) -> int:
        if self.percent is not None:
            return int(ram * self.percent / 100)
        assert self.nbytes is not None
        return self.nbytes


def parse_size(text: str) -> Size:
    """Parse `4096`, `64K`, `512M`, `1.5G`, `2GiB` or `10%` (of usable RAM)."""
    raw = text.strip()
    low = raw.lower()
    if low.endswith("%"):
        try:
            pct = float(low[:-1])
        except ValueError:
            raise ValueError(f"expected a size like 512M or 10%, got {text!r}") from None
        if not 0 <= pct <= 100:
            raise ValueError(f"a percentage must be between 0 and 100, got {text!r}")
        return Size(percent=pct)
    for suffix in ("ib", "b"):
        if low.endswith(suffix) and len(low) > len(suffix):
            low = low[: -len(suffix)]
            break
    unit = low[-1:] if low[-1:] in _UNITS and low[-1:] else ""
    number = low[:-1] if unit else low
    try:
        if "_" in number:
            raise ValueError
        value = float(number) if "." in number else int(number, 10)
    except ValueError:
        raise ValueError(f"expected a size like 512M or 10%, got {text!r}") from None
    try:
        nbytes = int(value * _UNITS[unit])
    except (OverflowError, ValueError):  # 1e999 is inf, and int(inf) overflows
        raise ValueError(f"size {text!r} is too large") from None
    if value < 0 or nbytes < 0 or not nbytes == nbytes:
        raise ValueError(f"a size cannot be negative, got {text!r}")
    if nbytes > 1 << 50:
        raise ValueError(f"size {text!r} is too large")
    return Size(nbytes=nbytes)


def parse_page_size(text: str) -> int:
    """A power of two from 4 KiB to 64 KiB."""
    size = parse_size(text)
    n = size.nbytes
    if n is None or n < 4096 or n > 65536 or n & (n - 1):
        raise ValueError(f"page_size must be a power of two from 4K to 64K, got {text!r}")
    return n


def parse_percent(text: str) -> int:
    raw = text.strip()
    raw = raw[:-1] if raw.endswith("%") else raw
    if not raw.isdigit():
        raise ValueError(f"expected a percentage from 1 to 100, got {text!r}")
    return parse_int_range(1, 100)(raw)


def parse_compressor(text: str) -> str:
    from . import codecs  # only when a value is parsed: the client never loads lz4/lzo

    return codecs.get(text).name


def parse_control_name(text: str) -> str:
    """A file name for the control directory (-o control=, the client's --control)."""
    name = text.strip()
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise ValueError(f"not a valid file name: {text!r}")
    return name


def _seconds_between(text: str, low: float, high: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected seconds, got {text!r}") from None
    if not low <= value <= high:  # NaN fails this test too
        raise ValueError(f"must be between {low:g} and {high:g} seconds, got {text!r}")
    return value


def parse_seconds(text: str) -> float:
    """Parse a non-negative number of seconds (a kernel cache timeout)."""
    return _seconds_between(text, 0.0, 86400.0)


def parse_interval(text: str) -> float:
    """Parse a polling interval: 0.01 to 60 seconds (0 would make a task spin)."""
    return _seconds_between(text, 0.01, 60.0)


def parse_level(text: str) -> str:
    low = text.strip().lower()
    if low not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return low


def parse_action(text: str) -> bool:
    """1 runs the action; 0 (what the file reads) does nothing, so a saved
    `getfattr -d` can be restored with `setfattr --restore`."""
    value = text.strip()
    if value not in ("0", "1"):
        raise ValueError("write 1 to run the action (0 does nothing)")
    return value == "1"


# -- checks: a parsed value against what it depends on -----------------------------------
# A size may depend on the usable RAM (a percentage is of it) and then on the page size
# in force; `Setting.of_ram` and `Setting.of_page` turn the parsed value into bytes and
# check it. The -o parser runs every of_ram check before any of_page one.


def ram_bytes(size: Size, ram: int) -> int:
    """Bytes, at most the usable RAM (a percentage is of it)."""
    n = size.resolve(ram)
    if n > ram:
        raise ValueError(f"{n} bytes is more than the usable RAM ({ram} bytes)")
    return n


def whole_page(n: int, page_size: int) -> int:
    """At least one page (tier 1 holds whole pages)."""
    if n < page_size:
        raise ValueError(f"must be at least one page ({page_size} bytes)")
    return n


def page_bytes(size: Size | None, page_size: int) -> int:
    """Bytes of a page (a percentage is of the page); None, the default: half a page."""
    if size is None:
        return page_size // 2
    n = size.resolve(page_size)
    if not 0 < n <= page_size:
        raise ValueError(f"must be between 1 and page_size ({page_size})")
    return n


# -- the table --------------------------------------------------------------------------


class Scope(enum.Enum):
    """Where a name can be set, and whether the control directory shows it."""

    MOUNT = "mount"      # -o only
    SHOWN = "shown"      # -o; a read-only file in the control directory
    LIVE = "live"        # -o; also written at run time through the control directory
    RUNTIME = "runtime"  # only through the control directory (not an -o option)
    ACTION = "action"    # control directory only: write 1 to run it; reads 0


def _set_memlimit(cache: Cache, n: int) -> None:
    cache.pool.set_memlimit(n)


def _set_threshold(cache: Cache, n: int) -> None:
    cache.pool.set_threshold(n)


def _set_accept(cache: Cache, n: int) -> None:
    cache.pool.set_accept_threshold_percent(n)


def _log_level(cache: Cache) -> str:
    return logging.getLevelName(logging.getLogger().level).lower()


def _set_log_level(cache: Cache, level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def _drop(cache: Cache, run: bool) -> None:
    if run:
        cache.drop_all()


def _reset(cache: Cache, run: bool) -> None:
    if run:
        cache.reset_stats()


@dataclass(frozen=True)
class Setting:
    """One name: how it is parsed, checked, documented, set and applied."""

    name: str
    parse: Callable[[str], Any]  # text -> value; ValueError says why
    default: Any                 # as parse gives it (threshold None: half a page)
    doc: str                     # the -o line of --help ("" if not an -o option)
    scope: Scope = Scope.MOUNT
    of_ram: Callable[[Any, int], Any] | None = None   # (value, usable RAM) -> bytes
    of_page: Callable[[Any, int], Any] | None = None  # (value, page size) -> checked
    ctl_doc: str = ""            # the control directory's line (set --help, control.md)
    get: Callable[[Cache], Any] | None = None            # its value in a running mount
    apply: Callable[[Cache, Any], None] | None = None    # change a running mount
    flag: bool = False           # an -o flag: accepted without "=value" (means "on")

    def check(self, value: Any, ram: int, page_size: int) -> Any:
        """The parsed `value` as it is used: resolved and checked (ValueError if not)."""
        if self.of_ram is not None:
            value = self.of_ram(value, ram)
        if self.of_page is not None:
            value = self.of_page(value, page_size)
        return value

    @property
    def option(self) -> bool:
        """Accepted in -o and in the options file."""
        return self.scope in (Scope.MOUNT, Scope.SHOWN, Scope.LIVE)

    @property
    def listed(self) -> bool:
        """A file (and an xattr) in the control directory."""
        return self.scope is not Scope.MOUNT

    @property
    def writable(self) -> bool:
        """Written through the control directory at run time."""
        return self.scope in (Scope.LIVE, Scope.RUNTIME, Scope.ACTION)

    @property
    def action(self) -> bool:
        return self.scope is Scope.ACTION


SETTINGS: tuple[Setting, ...] = (
    Setting("memlimit", parse_size, Size(percent=10.0),
            "memory limit of the compressed pool (K/M/G or N% of usable RAM; "
            "default 10%, as zcache)", Scope.LIVE, ram_bytes, None,
            "memory limit of the compressed pool in bytes (K/M/G, N% of RAM)",
            lambda cache: cache.pool.memlimit, _set_memlimit),
    # 8 MiB: with the kernel's page cache in use, tier 1 is a staging buffer for pages
    # on their way to the pool (a larger one only holds a second copy of what the
    # kernel keeps); give it more with direct_io, where it is the only uncompressed tier.
    Setting("cache_size", parse_size, Size(nbytes=8 << 20),
            "size of the uncompressed tier-1 page cache (K/M/G or N% of usable RAM); "
            "a staging buffer by default, the hot cache with direct_io", Scope.LIVE,
            ram_bytes, whole_page, "tier-1 page cache size in bytes (K/M/G, N% of RAM)",
            lambda cache: cache.configured * cache.page_size,
            lambda cache, n: cache.set_cache_size(n)),
    # 16 KiB, the compression unit: on log data lz4 compresses it to 4.07:1 against
    # 3.04:1 for 4 KiB, stores it for 10.8 us of CPU per 4 KiB (4 KiB pages: 20.9) and
    # streams it for 2.4 us per 4 KiB (4.3); a 4 KiB random read pays 8.3 us instead of
    # 5.2 (scripts/bench_hitpath.py, BENCHMARKS.md).
    Setting("page_size", parse_page_size, 16384,
            "cache page size, the compression unit: a power of two from 4K to 64K",
            Scope.SHOWN, ctl_doc="cache page size in bytes (set at mount time)",
            get=lambda cache: cache.page_size),
    Setting("compressor", parse_compressor, "lz4",
            "codec for the pool: lz4, lzo (LZO1X-1) or none", Scope.LIVE,
            ctl_doc="codec for newly stored pages: " + ", ".join(CODEC_NAMES),
            get=lambda cache: cache.codec.name,
            apply=lambda cache, name: cache.set_compressor(name)),
    Setting("threshold", parse_size, None,
            "a page that compresses to more bytes is stored as it is (raw), in free room "
            "only (bytes; default half a page)", Scope.LIVE, None, page_bytes,
            "pages compressing to more bytes are stored raw (free room only)",
            lambda cache: cache.pool.threshold, _set_threshold),
    Setting("accept_threshold_percent", parse_percent, 90,
            "once the pool is full, accept pages again only below this % of memlimit",
            Scope.LIVE, ctl_doc="after the pool fills, accept again below this % of memlimit",
            get=lambda cache: cache.pool.accept_threshold_percent, apply=_set_accept),
    Setting("direct_io", parse_bool, False,
            "serve reads only from the daemon (no kernel page cache); breaks mmap",
            flag=True),
    # Off by default: libfuse's FUSE_CAP_AUTO_INVAL_DATA made the kernel drop a file's
    # whole page cache after every write through the mount (the next read's GETATTR
    # shows a new mtime): randrw's reads went from 3 us page-cache hits to 226 us daemon
    # round trips (256 MiB file, no budget; BENCHMARKS.md). Needs the patched pyfuse3.
    Setting("auto_inval_data", parse_bool, False,
            "let the kernel drop a file's cached pages whenever its mtime changes, even "
            "by the mount's own writes (on/off; off needs zcachefs's pyfuse3 build, "
            "see README)"),
    Setting("pressure", parse_bool, True,
            "shrink the pool and tier 1 when the system or the daemon's cgroup runs "
            "short of memory (on/off)"),
    Setting("volatile", parse_bool, True,
            "while memory is short, make the pool's slabs MADV_FREE so the kernel can "
            "take them back at once (a discarded page is a miss, never wrong data); "
            "off: only eviction gives memory back (on/off)"),
    Setting("min_free", parse_size, Size(percent=5.0),
            "memory to keep available (system MemAvailable and cgroup headroom); below "
            "it the caches give memory back", of_ram=ram_bytes),
    Setting("pressure_psi", parse_int_range(0, 100), 10,
            "also shrink while PSI memory 'some avg10' is at least this % (0: ignore PSI)"),
    Setting("pressure_interval", parse_interval, 0.2,
            "seconds between memory-pressure checks (0.01 to 60)"),
    Setting("control", parse_control_name, ".zcachefs",
            "name of the virtual control directory in the mount's root"),
    # 50 us: on the bench host the next request of a reader that is served from memory
    # comes 10-20 us after the reply; sleeping in trio and waking for it cost ~30 us of
    # every round trip (ramfs.py: 18.6-19.8k IOPS without, 44.7-44.8k with; BENCHMARKS.md).
    Setting("poll_spin", parse_int_range(0, 10000), 50,
            "microseconds the request loop polls for the next request before it sleeps, "
            "when requests have been coming that fast (0: off; needs zcachefs's pyfuse3 "
            "build and 2 or more CPUs)"),
    Setting("threads", parse_int_range(1, 1024), 16,
            "worker threads for blocking backing-store calls (at most this many run at once)"),
    Setting("attr_timeout", parse_seconds, 1.0,
            "seconds the kernel may cache attributes (changes made outside the mount "
            "show up after this)"),
    Setting("entry_timeout", parse_seconds, 1.0,
            "seconds the kernel may cache name lookups"),
    # SQLite stats <db>-journal and <db>-wal before every read transaction: uncached,
    # each failed lookup was a round trip and a worker-thread hop (SQLite lookups ran at
    # 0.25x of plain in the bench). libfuse's high-level API has the same option.
    Setting("negative_timeout", parse_seconds, 1.0,
            "seconds the kernel may cache that a name does not exist (a file created "
            "outside the mount shows up after this; 0: ask every time)"),
    Setting("debug", parse_bool, False, "log at debug level (also --debug)", flag=True),
    Setting("log_level", parse_level, None, "", Scope.RUNTIME,
            ctl_doc="daemon log level: " + ", ".join(LOG_LEVELS),
            get=_log_level, apply=_set_log_level),
    Setting("drop_caches", parse_action, False, "", Scope.ACTION,
            ctl_doc="write 1: drop every page from both tiers", get=lambda cache: 0,
            apply=_drop),
    Setting("reset_stats", parse_action, False, "", Scope.ACTION,
            ctl_doc="write 1: zero the event counters", get=lambda cache: 0, apply=_reset),
)
BY_NAME = {s.name: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}  # for the core's signatures

# The -o options, in the table's order (--help lists them so).
OPTIONS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.option)
# The control directory's settings: the live -o ones, then the read-only one, then
# those that exist only at run time, then the actions (its listing, `zcachefs set
# --help` and docs/control.md use this order).
_LISTING_ORDER = (Scope.LIVE, Scope.SHOWN, Scope.RUNTIME, Scope.ACTION)
CONTROLS: tuple[Setting, ...] = tuple(
    s for scope in _LISTING_ORDER for s in SETTINGS if s.scope is scope)
ACTIONS: tuple[str, ...] = tuple(s.name for s in CONTROLS if s.action)
DEFAULT_CONTROL: str = BY_NAME["control"].default

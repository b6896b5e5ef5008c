"""Mount option parsing: the `-o a,b=c` strings of the command line and of fstab.

Role: turn option strings into one frozen `MountOptions` value, or raise `OptionError`
with a one-line message. Every zcachefs option is one row of `OPTIONS` (name, parser,
default, doc); `--help` and the README read the same table.

Pure core: must not import pyfuse3, trio or psutil. No I/O. Thread-safe (no state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class OptionError(ValueError):
    """A malformed or unknown option; str() is the one-line message for the user."""


# Flags that mount(8) and fstab use for their own purposes. They reach us through
# mount.fuse3 and mean nothing to the daemon, so they are accepted and dropped
# (S3QL does the same).
GENERIC_FLAGS = frozenset(
    {"defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser",
     "owner", "group", "rw", "nodelalloc"}
)

# Options handed to libfuse / the kernel unchanged (libfuse's mount.c option table).
FUSE_FLAGS = frozenset(
    {"allow_other", "allow_root", "default_permissions", "ro", "auto_unmount",
     "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async", "dirsync",
     "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
     "lazytime", "nolazytime", "blkdev"}
)
FUSE_VALUED = frozenset({"fsname", "subtype", "max_read", "blksize", "context",
                         "fscontext", "defcontext", "rootcontext"})


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
    from . import codecs

    return codecs.get(text).name


def parse_control_name(text: str) -> str:
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


@dataclass(frozen=True)
class OptionSpec:
    """One zcachefs mount option."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    flag: bool = False  # accepted without "=value" (means "on")


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("memlimit", parse_size, Size(percent=10.0),
               "memory limit of the compressed pool (K/M/G or N% of usable RAM; "
               "default 10%, as zcache)"),
    # 8 MiB: with the kernel's page cache in use, tier 1 is a staging buffer for pages
    # on their way to the pool (a larger one only holds a second copy of what the
    # kernel keeps); give it more with direct_io, where it is the only uncompressed tier.
    OptionSpec("cache_size", parse_size, Size(nbytes=8 << 20),
               "size of the uncompressed tier-1 page cache (K/M/G or N% of usable RAM); "
               "a staging buffer by default, the hot cache with direct_io"),
    # 16 KiB, the compression unit: on log data lz4 compresses it to 4.07:1 against
    # 3.04:1 for 4 KiB, stores it for 10.8 us of CPU per 4 KiB (4 KiB pages: 20.9) and
    # streams it for 2.4 us per 4 KiB (4.3); a 4 KiB random read pays 8.3 us instead of
    # 5.2 (scripts/bench_hitpath.py, BENCHMARKS.md).
    OptionSpec("page_size", parse_page_size, 16384,
               "cache page size, the compression unit: a power of two from 4K to 64K"),
    OptionSpec("compressor", parse_compressor, "lz4",
               "codec for the pool: lz4, lzo (LZO1X-1) or none"),
    OptionSpec("threshold", parse_size, None,
               "a page that compresses to more bytes is stored as it is (raw), in free room "
               "only (bytes; default half a page)"),
    OptionSpec("accept_threshold_percent", parse_percent, 90,
               "once the pool is full, accept pages again only below this % of memlimit"),
    OptionSpec("direct_io", parse_bool, False,
               "serve reads only from the daemon (no kernel page cache); breaks mmap",
               flag=True),
    OptionSpec("pressure", parse_bool, True,
               "shrink the pool and tier 1 when the system or the daemon's cgroup runs "
               "short of memory (on/off)"),
    OptionSpec("volatile", parse_bool, True,
               "while memory is short, make the pool's slabs MADV_FREE so the kernel can "
               "take them back at once (a discarded page is a miss, never wrong data); "
               "off: only eviction gives memory back (on/off)"),
    OptionSpec("min_free", parse_size, Size(percent=5.0),
               "memory to keep available (system MemAvailable and cgroup headroom); below "
               "it the caches give memory back"),
    OptionSpec("pressure_psi", parse_int_range(0, 100), 10,
               "also shrink while PSI memory 'some avg10' is at least this % (0: ignore PSI)"),
    OptionSpec("pressure_interval", parse_interval, 0.2,
               "seconds between memory-pressure checks (0.01 to 60)"),
    OptionSpec("control", parse_control_name, ".zcachefs",
               "name of the virtual control directory in the mount's root"),
    OptionSpec("threads", parse_int_range(1, 1024), 16,
               "worker threads for blocking backing-store calls (trio CapacityLimiter size)"),
    OptionSpec("attr_timeout", parse_seconds, 1.0,
               "seconds the kernel may cache attributes (changes made outside the mount "
               "show up after this)"),
    OptionSpec("entry_timeout", parse_seconds, 1.0,
               "seconds the kernel may cache name lookups"),
    # SQLite stats <db>-journal and <db>-wal before every read transaction: uncached,
    # each failed lookup was a round trip and a worker-thread hop (SQLite lookups ran at
    # 0.25x of plain in the bench). libfuse's high-level API has the same option.
    OptionSpec("negative_timeout", parse_seconds, 1.0,
               "seconds the kernel may cache that a name does not exist (a file created "
               "outside the mount shows up after this; 0: ask every time)"),
    OptionSpec("debug", parse_bool, False, "log at debug level (also --debug)", flag=True),
)
OPTION_BY_NAME = {spec.name: spec for spec in OPTIONS}


@dataclass(frozen=True)
class MountOptions:
    """Everything a mount needs to know, parsed and validated (sizes in bytes)."""

    memlimit: int = 0
    cache_size: int = 8 << 20
    page_size: int = 16384
    compressor: str = "lz4"
    threshold: int = 8192
    accept_threshold_percent: int = 90
    direct_io: bool = False
    pressure: bool = True
    volatile: bool = True
    min_free: int = 0
    pressure_psi: int = 10
    pressure_interval: float = 0.2
    control: str = ".zcachefs"
    threads: int = 16
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    negative_timeout: float = 1.0
    debug: bool = False
    # Options passed through to libfuse, e.g. {"allow_other", "fsname=/srv"}.
    fuse: frozenset[str] = field(default_factory=frozenset)

    @property
    def allow_other(self) -> bool:
        return "allow_other" in self.fuse

    @property
    def default_permissions(self) -> bool:
        return "default_permissions" in self.fuse

    @property
    def read_only(self) -> bool:
        return "ro" in self.fuse


def split_options(groups: Iterable[str]) -> list[str]:
    """Split `-o` arguments on commas, dropping empty items (fstab allows `a,,b`)."""
    return [item.strip() for group in groups for item in group.split(",") if item.strip()]


def read_options_file(text: str) -> list[str]:
    """Options from a config file: one `name[=value]` per line (commas allowed too),
    blank lines and `#` comments ignored. The names are those of `-o`."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def parse_options(groups: Iterable[str], ram: int = 1 << 30) -> MountOptions:
    """Parse the `-o` groups of a command line into MountOptions (or raise OptionError).

    `ram` is the memory the daemon can really use (percentages are of it)."""
    values: dict[str, Any] = {}
    fuse: set[str] = set()
    for item in split_options(groups):
        name, eq, raw = item.partition("=")
        name = name.strip()
        if name in GENERIC_FLAGS or name.startswith(("x-", "comment=")) or name == "comment":
            continue
        if name in FUSE_FLAGS and not eq:
            fuse.add(name)
            continue
        if name in FUSE_VALUED:
            if not eq or not raw:
                raise OptionError(f"option '{name}' needs a value")
            if name in ("max_read", "blksize"):
                try:
                    parse_int_range(1, 1 << 30)(raw)
                except ValueError as exc:
                    raise OptionError(f"bad value for option '{name}': {exc}") from None
            fuse.add(f"{name}={raw}")
            continue
        spec = OPTION_BY_NAME.get(name)
        if spec is None:
            raise OptionError(f"unknown option '{_printable(name)}'")
        if not eq:
            if not spec.flag:
                raise OptionError(f"option '{name}' needs a value ({spec.doc})")
            raw = "on"
        try:
            values[name] = spec.parse(raw)
        except ValueError as exc:
            raise OptionError(f"bad value for option '{name}': {exc}") from None
    if "allow_other" in fuse:
        # Other users must get the kernel's permission checks (S3QL, mergerfs do this).
        fuse.add("default_permissions")
    page_size = values.get("page_size", OPTION_BY_NAME["page_size"].default)
    for name in ("memlimit", "cache_size", "min_free"):
        size = values.get(name, OPTION_BY_NAME[name].default)
        nbytes = size.resolve(ram)
        if nbytes > ram:
            raise OptionError(f"bad value for option '{name}': {nbytes} bytes is more than "
                              f"the usable RAM ({ram} bytes)")
        values[name] = nbytes
    if values["cache_size"] < page_size:
        raise OptionError(f"bad value for option 'cache_size': must be at least one page "
                          f"({page_size} bytes)")
    threshold = values.pop("threshold", None)
    if threshold is None:
        values["threshold"] = page_size // 2
    else:
        nbytes = threshold.resolve(page_size)  # a percentage here is of the page
        if not 0 < nbytes <= page_size:
            raise OptionError(f"bad value for option 'threshold': must be between 1 and "
                              f"page_size ({page_size}) bytes")
        values["threshold"] = nbytes
    return dataclasses.replace(MountOptions(), fuse=frozenset(fuse), **values)


def _printable(text: str, limit: int = 60) -> str:
    """Shorten and escape user input for a one-line error message."""
    shown = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "..."


def options_help() -> str:
    """The zcachefs -o options as help text (used by --help and the README)."""
    lines = []
    for spec in OPTIONS:
        default = spec.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        elif isinstance(default, Size):
            default = f"{default.percent:g}%" if default.percent is not None else (
                f"{(default.nbytes or 0) >> 20}M")
        elif default is None:
            default = "page/2"
        lines.append(f"  {spec.name + '=' + str(default):<30} {spec.doc}")
    return "\n".join(lines)

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


def parse_seconds(text: str) -> float:
    """Parse a non-negative number of seconds (a kernel cache timeout)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected seconds, got {text!r}") from None
    if not 0.0 <= value <= 86400.0:  # NaN fails this test too
        raise ValueError(f"must be between 0 and 86400 seconds, got {text!r}")
    return value


@dataclass(frozen=True)
class OptionSpec:
    """One zcachefs mount option."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    flag: bool = False  # accepted without "=value" (means "on")


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("threads", parse_int_range(1, 1024), 16,
               "worker threads for blocking backing-store calls (trio CapacityLimiter size)"),
    OptionSpec("attr_timeout", parse_seconds, 1.0,
               "seconds the kernel may cache attributes (changes made outside the mount "
               "show up after this)"),
    OptionSpec("entry_timeout", parse_seconds, 1.0,
               "seconds the kernel may cache name lookups"),
    OptionSpec("debug", parse_bool, False, "log at debug level (also --debug)", flag=True),
)
OPTION_BY_NAME = {spec.name: spec for spec in OPTIONS}


@dataclass(frozen=True)
class MountOptions:
    """Everything a mount needs to know, parsed and validated."""

    threads: int = 16
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
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


def parse_options(groups: Iterable[str]) -> MountOptions:
    """Parse the `-o` groups of a command line into MountOptions (or raise OptionError)."""
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
    if "ro" in fuse and "rw" in fuse:  # pragma: no cover - rw is a generic flag
        fuse.discard("rw")
    return dataclasses.replace(MountOptions(), fuse=frozenset(fuse), **values)


def _printable(text: str, limit: int = 60) -> str:
    """Shorten and escape user input for a one-line error message."""
    shown = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "..."


def options_help() -> str:
    """The zcachefs -o options as help text (used by --help and the README)."""
    lines = []
    for spec in OPTIONS:
        default = "off" if spec.default is False else spec.default
        lines.append(f"  {spec.name}={default!s:<8} {spec.doc}")
    return "\n".join(lines)

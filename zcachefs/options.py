"""Mount option strings: the `-o a,b=c` groups of the command line, fstab and the
options file, turned into one frozen `MountOptions` value.

Role: split the groups, drop mount(8)'s own flags, pass libfuse's through, and parse
and check every zcachefs option with its row in `settings.SETTINGS` (the one table of
names, parsers, checks, defaults and docs); a bad one raises `OptionError` with a
one-line message. `options_help()` renders the table for `--help`.

Pure core: must not import pyfuse3, trio or psutil. No I/O. Thread-safe (no state).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .settings import OPTIONS, Setting, Size, parse_int_range


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


@dataclass(frozen=True, kw_only=True)
class MountOptions:
    """Everything a mount needs to know, parsed and checked (sizes in bytes). One field
    per -o option of `settings.OPTIONS` (a test checks); their defaults are the table's,
    filled in by `parse_options` (`parse_options([])` is the default mount)."""

    memlimit: int
    cache_size: int
    page_size: int
    compressor: str
    threshold: int
    accept_threshold_percent: int
    direct_io: bool
    auto_inval_data: bool
    pressure: bool
    volatile: bool
    min_free: int
    pressure_psi: int
    pressure_interval: float
    control: str
    poll_spin: int
    threads: int
    attr_timeout: float
    entry_timeout: float
    negative_timeout: float
    debug: bool
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


_BY_NAME: dict[str, Setting] = {spec.name: spec for spec in OPTIONS}
_PAGE_SIZE = _BY_NAME["page_size"]
# The -o message for a bad threshold has always ended in "bytes" (the control file's
# message, logged by the daemon, has not); both are kept as users know them.
_UNIT_AFTER = {"threshold": " bytes"}


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
        spec = _BY_NAME.get(name)
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
    page_size = values.get("page_size", _PAGE_SIZE.default)
    # Sizes against the RAM first, then against the page (so the first of several bad
    # values is reported); the defaults go through the same checks.
    for stage in ("of_ram", "of_page"):
        for spec in OPTIONS:
            check = getattr(spec, stage)
            if check is None:
                continue
            try:
                values[spec.name] = check(values.get(spec.name, spec.default),
                                          ram if stage == "of_ram" else page_size)
            except ValueError as exc:
                raise OptionError(f"bad value for option '{spec.name}': {exc}"
                                  f"{_UNIT_AFTER.get(spec.name, '')}") from None
    for spec in OPTIONS:
        values.setdefault(spec.name, spec.default)
    return MountOptions(fuse=frozenset(fuse), **values)


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

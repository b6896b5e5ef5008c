"""Live zcachefs mounts as the client sees them: found in /proc/self/mountinfo, read
and changed only through their control directory.

A path is checked in /proc/self/mountinfo (the mount on top must be of type
`fuse.zcachefs`) before anything under it is touched: stat() of a mount whose daemon
is gone or stuck hangs or fails. Reads open the control files (`stats.json`,
`stats.prom`, `compressor`); changes call setxattr `user.zcachefs.<name>` on the
directory, which answers with a distinct errno per failure (ENOATTR unknown, EROFS
read-only, EINVAL bad value, EACCES/EPERM not allowed). So this works for any user the
mount lets in (allow_other), from scripts, and against a daemon of another version.
Every failure is a `ClientError` whose str() is one line.

A client module: imports only `settings` from the package (no engine: cache, pool,
codecs), nor pyfuse3, trio or psutil. Single-threaded.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from dataclasses import dataclass

from .settings import BY_NAME, XATTR_PREFIX

FSTYPE = "fuse.zcachefs"
MOUNTINFO = "/proc/self/mountinfo"


class ClientError(Exception):
    """A failure at one mount; str() is the one-line message (without the prefix)."""


def report(message: str) -> None:
    """A one-line error on stderr, prefixed as every zcachefs message is."""
    print(f"zcachefs: {message}", file=sys.stderr)


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
        setting = BY_NAME.get(name)
        if exc.errno == errno.ENODATA:
            if "/" not in name and name not in (".", "..") and os.path.exists(target.path(name)):
                raise ClientError(f"{target.mountpoint}: {name}: read-only") from None
            raise ClientError(f"{target.mountpoint}: {name}: unknown name "
                              f"(see zcachefs set --help)") from None
        if exc.errno == errno.EROFS:
            raise ClientError(f"{target.mountpoint}: {name}: read-only") from None
        if exc.errno == errno.EINVAL:
            hint = f" ({name}: {setting.ctl_doc})" if setting is not None and setting.listed \
                else ""
            raise ClientError(f"{target.mountpoint}: {name}={value}: invalid value{hint}; "
                              f"the daemon log says why") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ClientError(f"{target.mountpoint}: {name}: permission denied (only root "
                              f"or the mount's owner may change knobs)") from None
        raise _failure(target, exc, f"cannot set {name}") from None

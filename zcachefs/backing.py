"""The backing directory: fd-relative system calls the Python standard library lacks.

Role: every call zcachefs makes on SOURCE goes through an O_PATH descriptor of the
inode it concerns (or of its parent directory) and never through a path that could
loop back into the mount, so SOURCE may be the mountpoint itself. The few calls that
need AT_EMPTY_PATH or flags the os module does not offer (renameat2, fchownat,
per-thread credentials) are made through ctypes here.

Caller identity: when the daemon runs as root, each blocking call runs in a worker
thread that first takes the caller's fsuid, fsgid and supplementary groups. Those are
per-thread on Linux (the raw syscalls, not glibc's process-wide setgroups), so the
backing filesystem itself does every permission check, ACLs and sticky bits included,
and new files get the right owner.

Must not import pyfuse3, trio or psutil. Functions are thread-safe; `as_caller` changes
only the calling thread's credentials and restores them before returning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# Raw syscall numbers for per-thread setgroups (glibc's wrapper changes every thread).
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "ppc64le": 81, "s390x": 206,
                  "riscv64": 159}.get(platform.machine())

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def proc_path(fd: int) -> str:
    """The /proc magic link that reopens an O_PATH descriptor."""
    return f"/proc/self/fd/{fd}"


def renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE support."""
    if flags == 0:
        os.rename(old, new, src_dir_fd=olddir, dst_dir_fd=newdir)
        return
    _check(_libc.renameat2(olddir, old, newdir, new, ctypes.c_uint(flags)), "renameat2")


def fchown_path(fd: int, uid: int, gid: int) -> None:
    """chown an O_PATH descriptor without following a symlink (-1 leaves a field)."""
    _check(_libc.fchownat(fd, b"", ctypes.c_uint(uid & 0xFFFFFFFF),
                          ctypes.c_uint(gid & 0xFFFFFFFF),
                          AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), "fchownat")


def read_link(fd: int) -> bytes:
    """readlink of an O_PATH descriptor of a symlink."""
    return os.fsencode(os.readlink("", dir_fd=fd))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: the ids the kernel reported for one request."""

    uid: int
    gid: int
    pid: int


def can_switch_credentials() -> bool:
    """True when this process may act as other users (it runs as root)."""
    return os.geteuid() == 0 and _SYS_SETGROUPS is not None


def supplementary_groups(pid: int) -> list[int]:
    """The caller's supplementary groups, from /proc/PID/status (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except OSError:
        pass
    return []


@contextmanager
def as_caller(caller: Caller) -> Iterator[None]:
    """Run the body with the caller's filesystem credentials (this thread only)."""
    if caller.uid == 0:
        yield
        return
    groups = supplementary_groups(caller.pid)
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _check(_libc.syscall(_SYS_SETGROUPS, len(groups), arr), "setgroups")
    _libc.setfsgid(caller.gid)
    _libc.setfsuid(caller.uid)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        _libc.syscall(_SYS_SETGROUPS, 0, None)


def call_as(caller: Caller | None, fn: Callable[..., T], *args: object) -> T:
    """Call fn(*args) with the caller's credentials (None: the daemon's own)."""
    if caller is None or caller.uid == 0:
        return fn(*args)
    with as_caller(caller):
        return fn(*args)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed: one O_PATH fd is held per known inode."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if os.geteuid() == 0:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = max(hard, int(f.read()))
        except (OSError, ValueError):
            pass
    for limit in (target, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def is_enosys(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)

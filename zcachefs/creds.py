"""Caller credentials: run a blocking call with the filesystem ids of whoever asked.

When the daemon runs as root, each blocking call on SOURCE runs in a worker thread that
first takes the caller's fsuid, fsgid and supplementary groups. Those are per-thread on
Linux (the raw syscalls, not glibc's process-wide setgroups), so the backing filesystem
itself does every permission check, ACLs and sticky bits included, and new files get
the right owner. `as_daemon` steps back to root inside a caller's call, for the one
request the kernel makes in a caller's name that the caller may not do itself
(`drops_privileges_only`).

Must not import pyfuse3, trio or psutil. Thread-safe: `as_caller` and `as_daemon`
change only the calling thread's credentials and restore them before returning.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from . import _libc

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: the ids the kernel reported for one request."""

    uid: int
    gid: int
    pid: int


def can_switch_credentials() -> bool:
    """True when this process may act as other users (it runs as root)."""
    return os.geteuid() == 0 and _libc.HAVE_THREAD_SETGROUPS


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
    _libc.setgroups_thread(supplementary_groups(caller.pid))
    _libc.setfsgid(caller.gid)
    _libc.setfsuid(caller.uid)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        with contextlib.suppress(OSError):
            _libc.setgroups_thread([])


@contextmanager
def as_daemon() -> Iterator[None]:
    """Run the body with the daemon's own (root) filesystem ids, inside `as_caller`."""
    uid = _libc.setfsuid(0)
    gid = _libc.setfsgid(0)
    try:
        yield
    finally:
        _libc.setfsgid(gid)
        _libc.setfsuid(uid)


def call_as(caller: Caller | None, fn: Callable[..., T], *args: object) -> T:
    """Call fn(*args) with the caller's credentials (None: the daemon's own)."""
    if caller is None or caller.uid == 0:
        return fn(*args)
    with as_caller(caller):
        return fn(*args)


_SUID_SGID = stat_mod.S_ISUID | stat_mod.S_ISGID


def drops_privileges_only(current: int, new: int) -> bool:
    """True when chmod(current -> new) clears setuid and/or setgid and changes nothing
    else (or nothing at all).

    This is what the kernel asks of a FUSE filesystem before a write, truncate or
    chown by a process without CAP_FSETID (fuse_setattr turns ATTR_KILL_SUID/SGID into
    a mode change, sent with the writer's ids, and libfuse does not enable
    FUSE_HANDLE_KILLPRIV for pyfuse3): ext4 clears the bits for a non-owner writer, so
    we must too, and the caller's own chmod would fail with EPERM. Under
    default_permissions a non-owner's chmod(2) never reaches the daemon (the kernel
    refuses it), so such a request can only be the kernel's."""
    return new & ~_SUID_SGID == current & ~_SUID_SGID and new & _SUID_SGID & ~current == 0

"""The virtual control directory, `MOUNTPOINT/<control>` (default `.zcachefs`).

Role: its node ids, attributes, lookups, open handles, the reads and writes of its
files, and the xattr names `user.zcachefs.<name>` on it, all fed by `control.Controls`.
It never reaches SOURCE. The adapter (fs) asks `owns(nodeid)` / `owns_handle(fh)` once
per request and hands the request here.

A refusal is raised as `Refused` (an OSError with the errno; `fs` turns it into
FUSEError); a rejected control write is logged here. Node ids: CONTROL_BASE for the directory,
then one per name of `Controls.names()`, in that order. Handles: DIR_FH for the
directory, FH_BASE and up for its open files (real descriptors are far below).

May import pyfuse3 for its attribute and file-info value types only (EntryAttributes,
FileInfo, ENOATTR); must not import trio or psutil, and must not raise FUSEError.
Not thread-safe: trio thread only; nothing here awaits.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pyfuse3

from .control import ControlError, Controls
from .inodes import CONTROL_BASE, ROOT_NODEID
from .settings import XATTR_PREFIX

# Rejected writes are logged under the adapter's logger name, as before ctldir was split
# out of fs: the lines users see (and filter on) are unchanged.
log = logging.getLogger("zcachefs.fs")

DIR = CONTROL_BASE  # the directory's node id
FH_BASE = 1 << 40  # control-file handles count from here (real fds are far below)
DIR_FH = FH_BASE - 1  # the directory's one handle


@dataclass(slots=True)
class CtlHandle:
    name: str
    content: bytes  # snapshot taken at open, so a sequential read is consistent


class Refused(OSError):
    """A request on the control directory refused with an errno (fs answers with it)."""


def _refuse(code: int) -> Refused:
    return Refused(code, os.strerror(code))


class ControlDir:
    """The control directory of one mount (see the module docstring)."""

    def __init__(self, controls: Controls, name: str, owner: int, started: int) -> None:
        self.controls = controls
        self.name = name.encode()  # its name in the mount's root
        self.names = Controls.names()
        self.owner = owner  # besides root, the one uid that may change a knob
        self.started = started  # its files' times (the mount's start)
        self.handles: dict[int, CtlHandle] = {}
        self._fh = itertools.count(FH_BASE)

    # -- which requests are ours ----------------------------------------------------

    def owns(self, nodeid: int) -> bool:
        """Is `nodeid` the control directory or one of its files?"""
        return DIR <= nodeid <= DIR + len(self.names)

    @staticmethod
    def owns_handle(fh: int) -> bool:
        """Is `fh` a handle of the control directory or of one of its files?"""
        return fh >= DIR_FH

    def shadows(self, parent: int, name: bytes) -> bool:
        """Is `name` in directory `parent` the control directory (it hides an entry of
        that name in SOURCE's root, which the mount can then not change)?"""
        return parent == ROOT_NODEID and name == self.name

    def hide(self, listed: list[bytes]) -> None:
        """Remove the shadowed entry from a listing of SOURCE's root."""
        if self.name in listed:
            listed.remove(self.name)

    # -- attributes and names ---------------------------------------------------------

    def attr(self, nodeid: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = cast(pyfuse3.InodeT, nodeid)
        if nodeid == DIR:
            a.st_mode = cast(pyfuse3.ModeT, stat_mod.S_IFDIR | 0o755)
            a.st_nlink = 2
        else:
            name = self.names[nodeid - DIR - 1]
            mode = 0o644 if Controls.writable(name) else 0o444
            a.st_mode = cast(pyfuse3.ModeT, stat_mod.S_IFREG | mode)
            a.st_nlink = 1
            a.st_size = 4096  # read with direct_io: the size is only a hint
        a.st_uid = self.owner
        a.st_gid = os.getegid()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.started
        a.attr_timeout = a.entry_timeout = 1.0
        return a

    def lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        """The control directory itself (`name` in the root), or one of its files."""
        if self.shadows(parent, name):
            return self.attr(DIR)
        if parent != DIR:
            raise _refuse(errno.EPERM)  # a control file is no directory
        try:
            i = self.names.index(name.decode())
        except (ValueError, UnicodeDecodeError):
            raise _refuse(errno.ENOENT) from None
        return self.attr(DIR + 1 + i)

    def setattr(self, nodeid: int, changes_owner_or_mode: bool) -> pyfuse3.EntryAttributes:
        """O_TRUNC of a control file (nothing to do); the rest is refused."""
        if nodeid == DIR or changes_owner_or_mode:
            raise _refuse(errno.EPERM)
        return self.attr(nodeid)

    def readdir(self, start: int,
                reply: Callable[[bytes, pyfuse3.EntryAttributes, int], bool]) -> None:
        """Hand the entries from offset `start` to `reply(name, attributes, next
        offset)` until it returns False (the kernel's buffer is full)."""
        for i in range(start, len(self.names)):
            if not reply(self.names[i].encode(), self.attr(DIR + 1 + i), i + 1):
                return

    # -- open files -----------------------------------------------------------------

    def opendir(self, nodeid: int) -> int:
        if nodeid != DIR:
            raise _refuse(errno.EPERM)
        return DIR_FH

    def open(self, nodeid: int, flags: int, uid: int) -> pyfuse3.FileInfo:
        """Open a control file; its content is read now (a consistent snapshot)."""
        if nodeid == DIR:
            raise _refuse(errno.EPERM)
        name = self.names[nodeid - DIR - 1]
        if flags & os.O_ACCMODE != os.O_RDONLY:
            if not Controls.writable(name):
                raise _refuse(errno.EACCES)
            if uid not in (0, self.owner):
                raise _refuse(errno.EACCES)
        fh = next(self._fh)
        content = self.controls.read(name).encode() if flags & os.O_ACCMODE != os.O_WRONLY \
            else b""
        self.handles[fh] = CtlHandle(name, content)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fh), direct_io=True,
                                keep_cache=False, nonseekable=False)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return self.handles[fh].content[off:off + size]

    def write(self, fh: int, buf: bytes) -> int:
        handle = self.handles[fh]
        try:
            self.controls.write(handle.name, buf)
        except ControlError as exc:
            if exc.errno != errno.EINVAL:  # read-only or unknown: not a file to write
                raise _refuse(errno.EACCES) from None
            log.warning("control: rejected write to %s: %s", handle.name, exc)
            raise _refuse(errno.EINVAL) from None
        return len(buf)

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # -- xattrs: user.zcachefs.<knob or counter> on the directory ----------------------

    def _xattr_key(self, nodeid: int, name: bytes) -> str:
        """The knob or counter an xattr name on the control directory refers to."""
        text = name.decode(errors="replace")
        if nodeid != DIR or not text.startswith(XATTR_PREFIX):
            raise _refuse(pyfuse3.ENOATTR)
        key = text[len(XATTR_PREFIX):]
        if "." in key or not Controls.exists(key):
            raise _refuse(pyfuse3.ENOATTR)
        return key

    def getxattr(self, nodeid: int, name: bytes) -> bytes:
        key = self._xattr_key(nodeid, name)
        return self.controls.read(key).rstrip("\n").encode()

    def setxattr(self, nodeid: int, name: bytes, value: bytes, uid: int) -> None:
        key = self._xattr_key(nodeid, name)
        if not Controls.writable(key):
            raise _refuse(errno.EROFS)
        if uid not in (0, self.owner):
            raise _refuse(errno.EPERM)
        try:
            self.controls.write(key, value)
        except ControlError as exc:
            log.warning("control: rejected %s%s: %s", XATTR_PREFIX, key, exc)
            raise _refuse(errno.EINVAL) from None

    def listxattr(self, nodeid: int) -> list[bytes]:
        if nodeid != DIR:
            return []
        return [f"{XATTR_PREFIX}{n}".encode() for n in self.names if "." not in n]

    def removexattr(self, nodeid: int) -> None:
        raise _refuse(errno.EPERM)

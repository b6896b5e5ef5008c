"""What the kernel is told about SOURCE's inodes: their attributes and lookup counts.

Role: turns what `backing` found (os.stat_result, backing.Found) into pyfuse3 entries,
and keeps the InodeTable's lookup counts in step with them: each entry handed to the
kernel is one lookup (`remember`), a forget drops them (`forget`), and a descriptor
the table hands back is closed here. It also makes the "." and ".." entries of a
listing and the negative entry (node id 0: ENOENT, remembered for a timeout). An
Inode's `told` is the (size, mtime_ns, ctime_ns) the kernel last got, so an open can
tell when the kernel's cached attributes are stale.

May import pyfuse3 for its value types only (EntryAttributes); must not import trio
or psutil, and must not raise FUSEError. Trio thread only (closing a descriptor does
not block).
"""

from __future__ import annotations

import os
import stat as stat_mod
from typing import cast

import pyfuse3

from .backing import Found
from .inodes import Inode, InodeTable


class Entries:
    """See the module docstring."""

    def __init__(self, inodes: InodeTable, attr_timeout: float, entry_timeout: float
                 ) -> None:
        self.inodes = inodes
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout

    def attr(self, inode: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = cast(pyfuse3.InodeT, inode.nodeid)
        a.st_mode = cast(pyfuse3.ModeT, st.st_mode)
        a.st_nlink = st.st_nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        a.attr_timeout = self.attr_timeout
        a.entry_timeout = self.entry_timeout
        inode.told = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return a

    def remember(self, found: Found, parent: Inode) -> pyfuse3.EntryAttributes:
        """Count one kernel lookup of the inode and return its attributes."""
        st = found.st
        inode, extra = self.inodes.remember(found.ref, st.st_dev, st.st_ino, st.st_mode)
        if extra is not None:
            os.close(extra)
        inode.cache_off = found.cache_off or parent.cache_off
        return self.attr(inode, st)

    def forget(self, nodeid: int, count: int) -> Inode | None:
        """Drop `count` lookups; returns the inode if the kernel knows it no more."""
        node = self.inodes.get(nodeid)
        fd = self.inodes.forget(nodeid, count)
        if fd is not None:
            os.close(fd)
        return node if node is not None and self.inodes.get(nodeid) is None else None

    def unsent(self, nodeid: int, rest: list[tuple[bytes, Found]]) -> None:
        """A listing's reply buffer is full: undo the lookup counted for the entry that
        did not fit (`remember`ed), and close what the entries after it hold."""
        self.forget(nodeid, 1)
        for _, found in rest:
            if found.ref.fd >= 0:
                os.close(found.ref.fd)

    def outdated(self, node: Inode, st: os.stat_result) -> bool:
        """Did the file change since the kernel last got its attributes (outside the
        mount, within attr_timeout)? If so they are recorded as told again."""
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if node.told is None or node.told == sig:
            return False
        node.told = sig
        return True

    def unlinked(self, st: os.stat_result | None) -> None:
        """A name went through the mount; if it was the file's last, mark the inode."""
        if st is not None and st.st_nlink <= 1:
            node = self.inodes.find(st.st_dev, st.st_ino)
            if node is not None:
                node.gone = True

    def dot(self, node: Inode, dots: int, which: int) -> pyfuse3.EntryAttributes:
        """Attributes for "." (0) and ".." (1, `dots`: the backing parent's st_ino) in a
        listing of `node`; only st_ino and the type are used."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = cast(pyfuse3.InodeT, node.nodeid if which == 0 or node is self.inodes.root
                        else dots)
        a.st_mode = cast(pyfuse3.ModeT, stat_mod.S_IFDIR)
        return a

    @staticmethod
    def negative(timeout: float) -> pyfuse3.EntryAttributes:
        """The kernel remembers for `timeout` that the name does not exist (node id 0
        means ENOENT with a timeout)."""
        absent = pyfuse3.EntryAttributes()
        absent.st_ino = cast(pyfuse3.InodeT, 0)
        absent.entry_timeout = timeout
        return absent

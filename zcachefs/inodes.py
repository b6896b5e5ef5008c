"""The inode table: FUSE node ids <-> backing inodes, with kernel lookup counts.

Role: each inode the kernel knows is one `Inode` with a `backing.Ref` that reaches the
backing inode: a file handle (name_to_handle_at) that a worker reopens for each call,
so a tree of any size costs no descriptors; or, where handles cannot be opened (a
non-root daemon, a filesystem mounted below SOURCE), a held O_PATH descriptor. Hard links resolve
to the same `Inode`. When the kernel's lookup count drops to zero (forget) the entry
goes and a held descriptor is handed back to the caller to close.

A file handle carries the inode's generation, so a deleted file whose inode number is
reused never matches the old `Inode`: the new file gets a fresh node id instead.

Node ids: the backing st_ino when the file is on SOURCE's filesystem (so `ls -i` shows
the same numbers as the plain directory), a synthetic id above 2**63 for files on other
filesystems mounted below SOURCE or on a clash; the root is always pyfuse3's
ROOT_INODE (1).

Must not import pyfuse3, trio or psutil; imports `backing` only for the `Ref` type; no
system calls (descriptors and handles are only stored and returned). Not thread-safe:
used from the trio thread only, never across an await.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .backing import Ref

ROOT_NODEID = 1
CONTROL_BASE = 1 << 62  # node ids from here on are the control files' (ctldir.py)
_SYNTHETIC_BASE = 1 << 63


@dataclass(eq=False, slots=True)
class Inode:
    """One backing inode known to the kernel."""

    nodeid: int
    ref: Ref
    dev: int
    ino: int
    mode: int  # file type bits only are relied upon (they never change)
    nlookup: int = 0
    # Per-file policy: user.zcachefs.cache=off on the inode itself or on the directory
    # it was (last) looked up in, or any directory above: bypass both cache tiers.
    cache_off: bool = False
    # (size, mtime_ns, ctime_ns) last sent to the kernel, which caches it attr_timeout.
    told: tuple[int, int, int] | None = None
    # Its last name was unlinked (or renamed over) through the mount: the kernel knows
    # the name is gone, so an open of it is a reopen (/proc/PID/fd), not a stale name.
    gone: bool = False

    @property
    def identity(self) -> bytes:
        """Names the backing file for its whole life (the handle carries the inode
        generation); (dev, ino) where the filesystem gives no handle."""
        return self.ref.handle or b"%d:%d" % (self.dev, self.ino)


class InodeTable:
    """Node id bookkeeping; see the module docstring."""

    def __init__(self, root: Ref, root_dev: int, root_ino: int, root_mode: int) -> None:
        self._by_id: dict[int, Inode] = {}
        self._by_key: dict[tuple[int, int], Inode] = {}
        self._root_dev = root_dev
        self._synthetic = itertools.count(_SYNTHETIC_BASE)
        node = Inode(ROOT_NODEID, root, root_dev, root_ino, root_mode, nlookup=1)
        self._by_id[ROOT_NODEID] = node
        self._by_key[(root_dev, root_ino)] = node
        self.root = node

    def __len__(self) -> int:
        return len(self._by_id)

    def __getitem__(self, nodeid: int) -> Inode:
        return self._by_id[nodeid]

    def get(self, nodeid: int) -> Inode | None:
        return self._by_id.get(nodeid)

    def remember(self, ref: Ref, dev: int, ino: int, mode: int) -> tuple[Inode, int | None]:
        """Count one lookup of the backing inode reached by `ref`.

        Returns the Inode and a held descriptor the caller must close (the new one when
        the inode was already known), or None.
        """
        known = self._by_key.get((dev, ino))
        if known is not None and known.ref.handle == ref.handle:
            known.nlookup += 1
            return known, (ref.fd if ref.fd >= 0 and ref.fd != known.ref.fd else None)
        # New, or the number now names another file (the old one was deleted while the
        # kernel still knows it): never let the two share a node id.
        nodeid = ino if dev == self._root_dev and ino > ROOT_NODEID else 0
        if nodeid == 0 or nodeid >= CONTROL_BASE or nodeid in self._by_id:
            nodeid = next(self._synthetic)
        inode = Inode(nodeid, ref, dev, ino, mode, nlookup=1)
        self._by_id[nodeid] = inode
        self._by_key[(dev, ino)] = inode
        return inode, None

    def find(self, dev: int, ino: int) -> Inode | None:
        """The inode the kernel knows for the backing (dev, ino), if any."""
        return self._by_key.get((dev, ino))

    def forget(self, nodeid: int, count: int) -> int | None:
        """Drop `count` lookups; returns a held descriptor to close when the entry goes."""
        inode = self._by_id.get(nodeid)
        if inode is None or inode.nodeid == ROOT_NODEID:
            return None
        inode.nlookup -= count
        if inode.nlookup > 0:
            return None
        del self._by_id[nodeid]
        if self._by_key.get((inode.dev, inode.ino)) is inode:
            del self._by_key[(inode.dev, inode.ino)]
        return inode.ref.fd if inode.ref.fd >= 0 else None

    def held_fds(self) -> list[int]:
        """Every descriptor held by the table (for shutdown)."""
        return [i.ref.fd for i in self._by_id.values() if i.ref.fd >= 0]

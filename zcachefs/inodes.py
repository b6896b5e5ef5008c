"""The inode table: FUSE node ids <-> backing inodes, with kernel lookup counts.

Role: each inode the kernel knows is one `Inode` holding an O_PATH descriptor of the
backing file. Holding it pins the backing inode, so its (st_dev, st_ino) cannot be
reused for another file while the kernel may still send requests for it; hard links
resolve to the same `Inode`. When the kernel's lookup count drops to zero (forget) the
entry goes and the descriptor is handed back to the caller to close.

Node ids: the backing st_ino when the file is on SOURCE's filesystem (so `ls -i` shows
the same numbers as the plain directory), a synthetic id above 2**63 for files on other
filesystems mounted below SOURCE or on a clash; the root is always pyfuse3's
ROOT_INODE (1).

Must not import pyfuse3, trio or psutil; no system calls (descriptors are only stored
and returned). Not thread-safe: used from the trio thread only, never across an await.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

ROOT_NODEID = 1
_SYNTHETIC_BASE = 1 << 63


@dataclass(eq=False, slots=True)
class Inode:
    """One backing inode known to the kernel."""

    nodeid: int
    fd: int  # O_PATH | O_NOFOLLOW descriptor of the backing inode
    dev: int
    ino: int
    mode: int  # file type bits only are relied upon (they never change)
    nlookup: int = 0
    # (size, mtime_ns, ctime_ns) seen at the last open; None after our own changes.
    # Matching at the next open means the kernel's page cache of the file is still good.
    sig: tuple[int, int, int] | None = None


class InodeTable:
    """Node id bookkeeping; see the module docstring."""

    def __init__(self, root_fd: int, root_dev: int, root_ino: int, root_mode: int) -> None:
        self._by_id: dict[int, Inode] = {}
        self._by_key: dict[tuple[int, int], Inode] = {}
        self._root_dev = root_dev
        self._synthetic = itertools.count(_SYNTHETIC_BASE)
        root = Inode(ROOT_NODEID, root_fd, root_dev, root_ino, root_mode, nlookup=1)
        self._by_id[ROOT_NODEID] = root
        self._by_key[(root_dev, root_ino)] = root
        self.root = root

    def __len__(self) -> int:
        return len(self._by_id)

    def __getitem__(self, nodeid: int) -> Inode:
        return self._by_id[nodeid]

    def get(self, nodeid: int) -> Inode | None:
        return self._by_id.get(nodeid)

    def remember(self, fd: int, dev: int, ino: int, mode: int) -> tuple[Inode, int | None]:
        """Count one lookup of the backing inode opened as `fd`.

        Returns the Inode and a descriptor the caller must close (the new `fd` when the
        inode was already known, else None).
        """
        inode = self._by_key.get((dev, ino))
        if inode is not None:
            inode.nlookup += 1
            return inode, fd
        nodeid = ino if dev == self._root_dev and ino > ROOT_NODEID else 0
        if nodeid == 0 or nodeid >= _SYNTHETIC_BASE or nodeid in self._by_id:
            nodeid = next(self._synthetic)
        inode = Inode(nodeid, fd, dev, ino, mode, nlookup=1)
        self._by_id[nodeid] = inode
        self._by_key[(dev, ino)] = inode
        return inode, None

    def forget(self, nodeid: int, count: int) -> int | None:
        """Drop `count` lookups; returns the descriptor to close when the entry goes."""
        inode = self._by_id.get(nodeid)
        if inode is None or inode.nodeid == ROOT_NODEID:
            return None
        inode.nlookup -= count
        if inode.nlookup > 0:
            return None
        del self._by_id[nodeid]
        del self._by_key[(inode.dev, inode.ino)]
        return inode.fd

    def all_fds(self) -> list[int]:
        """Every descriptor held (for shutdown)."""
        return [inode.fd for inode in self._by_id.values()]

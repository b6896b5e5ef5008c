"""The cache's per-file state: a `FileState` per backing file, its signature logic, and
the table that finds it by identity.

Each backing file has a `FileState`, found by an identity that cannot be reused for
another file while the state exists (the kernel file handle, which carries the inode
generation). Its `fid` keys its pages in every tier. `version` moves before and after
every change made through the mount (`changing`, `changed`), so a read that raced with
a change does not insert what it read; `sig` (size, mtime_ns, ctime_ns) detects
changes made outside the mount at the next open (close-to-open consistency; the cache
drops the pages then, `Cache.opened`).

Why a module of its own: a FileState outlives the pages it keys (an open file with
nothing cached) and the pages outlive the kernel's interest in the file (the
forgotten states), so the table of states has its own lifecycle rule: a state the
kernel forgot stays while pages or handles need it, and is swept a few per forget.
`Files` keeps that rule; it asks the cache only whether a fid still has pages, and
forgets the fid's poor-page set (`Cache.poor`) with the state. The page tiers, the
pool and the write path are not here.

Pure core: must not import pyfuse3, trio or psutil, nor cache (it is given the parts it
needs). Not thread-safe (trio thread only).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Sig = tuple[int, int, int]  # (size, mtime_ns, ctime_ns) of a backing file


@dataclass(slots=True)
class FileState:
    fid: int
    version: int = 0
    sig: Sig | None = None
    tail: int | None = None  # index of a cached page shorter than page_size
    size: int | None = None  # file size as last known (open, or our own change)
    opens: int = 0  # open handles through the mount

    def changing(self) -> tuple[int, Sig | None]:
        """Call before a change through the mount (write, truncate). Returns what to
        hand to `changed` afterwards: the version, and the signature the cache knew."""
        known = self.sig
        self.version += 1
        self.sig = None
        self.size = None
        return self.version, known

    def changed(self, token: tuple[int, Sig | None], before: Sig | None = None,
                after: Sig | None = None) -> bool:
        """Call after a change through the mount, with the file's signature just before
        and just after it (None: not known). True if the file is known as it is now: no
        other change through the mount overlapped ours, and the file was as the cache
        knew it before ours (NFS's weak cache consistency check: otherwise someone
        changed it outside meanwhile). Then its pages may be cached from the write and
        the next open keeps the cache; otherwise the next open drops the file."""
        version, known = token
        fresh = (self.version == version and after is not None and before is not None
                 and before == known)
        self.version += 1
        if fresh:
            self.sig = after
            self.size = after[0]  # type: ignore[index]
        else:
            self.sig = self.size = None  # an open since ours began set them
        return fresh


class Files:
    """The FileStates of one cache by identity, and those the kernel forgot while they
    still had pages or handles (dropped once those are gone: swept a few per forget,
    and by the background task). `has_pages(fid)` and `poor` are the cache's."""

    def __init__(self, has_pages: Callable[[int], bool], poor: dict[int, set[int]]) -> None:
        self._has_pages = has_pages
        self._poor = poor
        self._states: dict[bytes, FileState] = {}
        self._forgotten: dict[bytes, FileState] = {}
        self._fids = itertools.count(1)

    def get(self, identity: bytes) -> FileState:
        """The file's state, made (with a new fid) if there is none."""
        state = self._states.get(identity)
        if state is None:
            state = self._states[identity] = FileState(next(self._fids))
        elif self._forgotten:
            self._forgotten.pop(identity, None)  # the kernel knows the file again
        return state

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[FileState]:
        return iter(self._states.values())

    @property
    def forgotten_count(self) -> int:
        return len(self._forgotten)

    def forget(self, identity: bytes) -> None:
        """The kernel forgot the inode: drop its FileState unless pages or handles still
        need it (so a walk over millions of files does not keep a state per file)."""
        state = self._states.get(identity)
        if state is None:
            return
        if not state.opens and not self._has_pages(state.fid):
            del self._states[identity]
            self._forgotten.pop(identity, None)
            self._poor.pop(state.fid, None)
        else:
            self._forgotten[identity] = state
        # Two looked at per one added: the states kept for their pages stay bounded
        # by the pages cached, whatever the workload.
        self.sweep(2)

    def sweep(self, n: int) -> int:
        """Look at up to n forgotten states, oldest first; drop those whose pages and
        handles are all gone, move the others to the back. Returns how many dropped."""
        forgotten, has_pages, dropped = self._forgotten, self._has_pages, 0
        for identity in list(itertools.islice(forgotten, n)):
            state = forgotten.pop(identity)
            if state.opens or has_pages(state.fid):
                forgotten[identity] = state
            else:
                del self._states[identity]
                self._poor.pop(state.fid, None)
                dropped += 1
        return dropped

"""The two-tier cache of one mount: tier 1 (uncompressed LRU) over tier 2 (the pool).

Flow of a page: a read miss fills tier 1 from the backing file; tier 1 evicts its
least recently used pages into `pending`; a compressor (the adapter's background task,
or `compress_inline` under back-pressure) compresses them and admits them to the pool;
a pool hit is exclusive and moves the page back into tier 1, marked `promoted`, which
earns it a second chance the next time it reaches the pool.

Files: each backing file has a `FileState`, found by an identity that cannot be reused
for another file while the state exists (the kernel file handle, which carries the
inode generation). Its `fid` keys its pages. `version` moves before and after every
change made through the mount, so a read that raced with a change does not insert
what it read; `sig` (size, mtime_ns, ctime_ns) detects changes made outside the mount
at the next open (close-to-open consistency).

Invariants:
- a key is in at most one of tier1, pending, pool
- pages are never longer than page_size; a page shorter than page_size is the file's
  last page and is remembered in `FileState.tail`, so any size change drops it

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe (trio thread only).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from . import codecs
from .pagecache import Key, Tier
from .pool import Compressed, CompressedPool, compress_page

# Pages waiting for the background compressor before tier 1 compresses inline
# (back-pressure). 256 pages = 1 MiB at 4 KiB: enough for several 128 KiB batches.
MAX_PENDING = 256


@dataclass(slots=True)
class FileState:
    fid: int
    version: int = 0
    sig: tuple[int, int, int] | None = None
    tail: int | None = None  # index of a cached page shorter than page_size
    size: int | None = None  # file size at the last open; None after our own changes
    opens: int = 0  # open handles through the mount


@dataclass
class CacheCounters:
    """Tier-1 and backing counters (the pool keeps its own); reset by reset_stats."""

    cache_hits: int = 0
    cache_misses: int = 0
    backing_reads: int = 0
    backing_read_bytes: int = 0
    pressure_shrinks: int = 0


@dataclass(frozen=True, slots=True)
class PendingPage:
    key: Key
    data: bytes
    promoted: bool


class Cache:
    """See the module docstring."""

    def __init__(self, page_size: int, cache_size: int, memlimit: int, threshold: int,
                 compressor: str = codecs.DEFAULT, accept_threshold_percent: int = 90,
                 volatile: bool = True) -> None:
        self.page_size = page_size
        self.configured = max(1, cache_size // page_size)  # tier-1 pages, as configured
        self.capacity = self.configured  # in force (lower while under memory pressure)
        self.codec = codecs.get(compressor)
        self.tier1: Tier[bytes] = Tier()
        self.promoted: set[Key] = set()  # tier-1 keys that came from a pool hit
        self.pending: Tier[PendingPage] = Tier()
        self.pool = CompressedPool(page_size, memlimit, threshold, accept_threshold_percent,
                                   volatile)
        self.c = CacheCounters()
        self._files: dict[bytes, FileState] = {}
        # States the kernel forgot while they still had pages: dropped once those pages
        # are gone (swept a few per forget, and by the background task).
        self._forgotten: dict[bytes, FileState] = {}
        # Set by the adapter: how many inodes the kernel holds (the `inodes` gauge).
        self.inodes_known: Callable[[], int] = lambda: 0
        self._fids = itertools.count(1)

    # -- files ---------------------------------------------------------------------

    def file(self, identity: bytes) -> FileState:
        state = self._files.get(identity)
        if state is None:
            state = self._files[identity] = FileState(next(self._fids))
        elif self._forgotten:
            self._forgotten.pop(identity, None)  # the kernel knows the file again
        return state

    @property
    def file_count(self) -> int:
        return len(self._files)

    def has_pages(self, fid: int) -> bool:
        return (fid in self.tier1.by_file or fid in self.pending.by_file
                or fid in self.pool.files)

    def forget_file(self, identity: bytes) -> None:
        """The kernel forgot the inode: drop its FileState unless pages or handles still
        need it (so a walk over millions of files does not keep a state per file)."""
        state = self._files.get(identity)
        if state is None:
            return
        if not state.opens and not self.has_pages(state.fid):
            del self._files[identity]
            self._forgotten.pop(identity, None)
        else:
            self._forgotten[identity] = state
        # Two looked at per one added: the states kept for their pages stay bounded
        # by the pages cached, whatever the workload.
        self.sweep_forgotten(2)

    def sweep_forgotten(self, n: int) -> int:
        """Look at up to n forgotten states, oldest first; drop those whose pages and
        handles are all gone, move the others to the back. Returns how many dropped."""
        forgotten, dropped = self._forgotten, 0
        for identity in list(itertools.islice(forgotten, n)):
            state = forgotten.pop(identity)
            if state.opens or self.has_pages(state.fid):
                forgotten[identity] = state
            else:
                del self._files[identity]
                dropped += 1
        return dropped

    @property
    def forgotten_count(self) -> int:
        return len(self._forgotten)

    def opened(self, state: FileState, sig: tuple[int, int, int]) -> bool:
        """Record an open; drops the file's pages if it changed since the last one.
        Returns True when cached pages were kept."""
        state.size = sig[0]
        if state.sig == sig:
            return True
        if state.sig is not None or state.version:
            self.invalidate_file(state)
            state.version += 1  # a read that began before the change must not fill
        state.sig = sig
        return False

    def changing(self, state: FileState) -> None:
        """Call before and after a change through the mount (write, truncate)."""
        state.version += 1
        state.sig = None
        state.size = None

    # -- lookups -------------------------------------------------------------------

    def get(self, fid: int, index: int) -> bytes | None:
        """A page from any tier (a pool hit moves it to tier 1); None on a miss."""
        key = (fid, index)
        page = self.tier1.get(key)
        if page is not None:
            self.c.cache_hits += 1
            return page
        pend = self.pending.pop(key)
        if pend is not None:
            self.c.cache_hits += 1
            self._put(key, pend.data, pend.promoted)
            return pend.data
        self.c.cache_misses += 1
        if fid not in self.pool.files:
            self.pool.c.failed_gets += 1
            return None
        page = self.pool.load(fid, index)
        if page is not None:
            self._put(key, page, True)
        return page

    def fill(self, state: FileState, first: int, pages: list[bytes], version: int) -> None:
        """Insert pages read from the backing file at `version` (ignored if stale)."""
        if state.version != version:
            return
        ps = self.page_size
        fid = state.fid
        pending, pool = self.pending, self.pool
        for i, page in enumerate(pages):
            if not page:
                break
            if len(page) < ps:
                state.tail = first + i
            key = (fid, first + i)
            # A read from the first missing page may cover pages cached further on:
            # keep one copy (the fresh one) so a key stays in one tier only. Looked up
            # per page: _put may compress (and admit) pending pages inline.
            if pending.items:
                pending.pop(key)
            if key in pool.lru:
                pool.discard(fid, key[1])
            self._put(key, page, False)

    def _put(self, key: Key, page: bytes, promoted: bool) -> None:
        # Hot path (every miss and every pool hit): plain dict/set operations only.
        tier1 = self.tier1
        tier1.put(key, page)
        if promoted:
            self.promoted.add(key)
        if len(tier1.items) > self.capacity:
            self._overflow()

    def _overflow(self) -> None:
        """Move tier 1's least recently used pages past capacity to pending."""
        tier1, pending, promoted = self.tier1, self.pending, self.promoted
        items = tier1.items
        while len(items) > self.capacity:
            old, data = tier1.pop_oldest()
            was = old in promoted
            if was:
                promoted.discard(old)
            pending.put(old, PendingPage(old, data, was))
        if len(pending.items) > MAX_PENDING:
            self.compress_inline(len(pending.items) - MAX_PENDING)

    # -- compression ---------------------------------------------------------------

    def take_pending(self, n: int) -> list[PendingPage]:
        """The n oldest pages waiting for compression (they stay readable meanwhile)."""
        return [p for _, p in self.pending.oldest(n)]

    def admit(self, done: list[tuple[PendingPage, Compressed]]) -> None:
        """Admit compressed pages whose pending entry is still the same object (not
        read back or invalidated while the compressor ran)."""
        pool = self.pool
        for pend, comp in done:
            if self.pending.peek(pend.key) is pend:
                self.pending.pop(pend.key)
                pool.admit(pend.key[0], pend.key[1], comp, pend.promoted)

    def compress_inline(self, n: int) -> None:
        batch = self.take_pending(n)
        self.admit([(p, compress_page(self.codec, p.data, self.pool.threshold))
                    for p in batch])

    # -- invalidation --------------------------------------------------------------

    def _drop(self, fid: int, indexes: list[int]) -> None:
        for index in indexes:
            self.promoted.discard((fid, index))
        self.tier1.drop(fid, indexes)
        self.pending.drop(fid, indexes)
        self.pool.invalidate_pages(fid, indexes)

    def invalidate_file(self, state: FileState) -> None:
        fid = state.fid
        indexes = (self.tier1.pages_of(fid) | self.pending.pages_of(fid)
                   | set(self.pool.files.get(fid, ())))
        self._drop(fid, list(indexes))
        state.tail = None

    def invalidate_range(self, state: FileState, offset: int, length: int) -> None:
        """Drop the pages a write of `length` bytes at `offset` touches, and the tail."""
        ps = self.page_size
        first, last = offset // ps, (offset + max(length, 1) - 1) // ps
        indexes = self._present(state.fid, first, last)
        if state.tail is not None:
            indexes.add(state.tail)
            state.tail = None
        self._drop(state.fid, list(indexes))

    def truncate(self, state: FileState, size: int) -> None:
        """Drop pages at or past the new end of file (and the old tail page)."""
        first = size // self.page_size
        fid = state.fid
        indexes = {i for i in (self.tier1.pages_of(fid) | self.pending.pages_of(fid)
                               | set(self.pool.files.get(fid, ()))) if i >= first}
        if state.tail is not None:
            indexes.add(state.tail)
            state.tail = None
        self._drop(fid, list(indexes))

    def _present(self, fid: int, first: int, last: int) -> set[int]:
        if last - first < 64:
            return set(range(first, last + 1))
        return {i for i in (self.tier1.pages_of(fid) | self.pending.pages_of(fid)
                            | set(self.pool.files.get(fid, ()))) if first <= i <= last}

    def drop_all(self) -> None:
        self.tier1.clear()
        self.pending.clear()
        self.promoted.clear()
        self.pool.clear()
        for state in self._files.values():
            state.tail = None
        self.sweep_forgotten(len(self._forgotten))

    # -- knobs ---------------------------------------------------------------------

    def set_cache_size(self, nbytes: int) -> None:
        self.configured = self.capacity = max(1, nbytes // self.page_size)
        self._overflow()

    def drop_oldest(self, pages: int) -> int:
        """Under memory pressure: drop up to `pages` pages from pending and tier 1,
        oldest first, without compressing them, and shrink tier 1 to what is left."""
        dropped = 0
        for tier in (self.pending, self.tier1):
            while dropped < pages and len(tier):
                key, _ = tier.pop_oldest()
                self.promoted.discard(key)
                dropped += 1
        self.capacity = max(1, min(self.capacity, len(self.tier1)))
        return dropped

    def set_compressor(self, name: str) -> None:
        self.codec = codecs.get(name)

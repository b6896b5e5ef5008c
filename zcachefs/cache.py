"""The two-tier cache of one mount: tier 1 (uncompressed LRU) over tier 2 (the pool).

Flow of a page: a read miss fills tier 1 from the backing file (only the runs of pages
no tier holds); tier 1 evicts its least recently used pages into `pending`; a
compressor (`tasks.Compressor`, or `handoff.compress_inline` under back-pressure)
compresses them and admits them to the pool (handoff.py). A pool hit is not
exclusive: the pool keeps its copy, so a page served from the pool costs one
decompression and is never compressed again unless it changes. With the kernel's page
cache in use (the default) a pool hit is not put in tier 1 either: the kernel keeps
the page, and a third copy would only take memory from the pool. With `keep_hits`
(direct_io: the daemon is the only cache) a hit goes to tier 1 marked `stored`, and
leaves it again for free.

This module owns the tables (tier 1, pending, `stored`, `poor`, the pool) and what
touches them per page: lookups and the read geometry (`get`, `read`, `fill_plan`,
`fill`, the overflow into pending), invalidation, the counters and `statistics()`, and
the knobs. The rest of the cache is in three modules that take the Cache (or its
parts) explicitly: files.py (each backing file's `FileState`: its fid keys its pages,
its version and signature tell a read that raced with a change, and a change made
outside the mount), writes.py (writes and truncates through the mount: `peek`,
`fill_written`, `invalidate_range`, `truncate` here) and handoff.py (pending pages to
the compressor and into the pool).

Invariants:
- a key is in at most one of tier1, pending; a tier-1 key may also be in the pool
  only if it is in `stored` (the pool's copy holds the same bytes)
- pages are never longer than page_size; a page shorter than page_size is the file's
  last page and is remembered in `FileState.tail`, so any size change drops it
- a page index in `poor[fid]` did not compress below the threshold at its last try;
  it is stored raw without trying again until the page changes

Pure core: must not import pyfuse3, trio or psutil, nor writes (which imports it).
Not thread-safe (trio thread only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

from . import codecs, handoff
from .files import Files, FileState, Sig
from .handoff import PendingPage
from .pagecache import Key, Tier
from .pool import CompressedPool
from .settings import DEFAULTS

# Pages waiting for the background compressor before tier 1 compresses inline
# (back-pressure). 256 pages = 1 MiB at 4 KiB: enough for several 128 KiB batches.
MAX_PENDING = 256
# Compact the pool once this many of its slabs could be unmapped (4 x 256 KiB for a
# 1 GiB pool): fewer are not worth the sort of the partly empty slabs.
COMPACT_MIN_SLABS = 4


@dataclass
class CacheCounters:
    """Tier-1 and backing counters (the pool keeps its own); reset by reset_stats."""

    cache_hits: int = 0
    cache_misses: int = 0
    backing_reads: int = 0
    backing_read_bytes: int = 0
    backing_fallbacks: int = 0  # backing reads without RWF_DONTCACHE (fadvise instead)
    write_fills: int = 0  # pages written through the mount and cached from the write
    pressure_shrinks: int = 0


@dataclass(slots=True)
class ReadPlan:
    """A read the tiers could not answer whole: what they found, and the runs of
    missing pages to read from the backing file (`Cache.read` makes it,
    `Cache.fill_plan` completes it)."""

    off: int
    size: int
    first: int  # page index of found[0]
    found: list[bytes | None]  # per page of the request: the page, or None (missing)
    runs: list[tuple[int, int]]  # (first page, page count) of each missing run
    version: int  # the file's version when the lookup was made
    pages: int = field(default=0)  # pages the runs cover


class Cache:
    """See the module docstring."""

    def __init__(self, page_size: int, cache_size: int, memlimit: int, threshold: int,
                 compressor: str = DEFAULTS["compressor"],
                 accept_threshold_percent: int = DEFAULTS["accept_threshold_percent"],
                 volatile: bool = DEFAULTS["volatile"], keep_hits: bool = False,
                 store_raw: bool = True) -> None:
        self.page_size: int = page_size
        self.configured: int = max(1, cache_size // page_size)  # tier-1 pages, as configured
        self.capacity = self.configured  # in force (lower while under memory pressure)
        self.codec: codecs.Codec = codecs.get(compressor)
        self.keep_hits = keep_hits
        self.tier1: Tier[bytes] = Tier()
        self.stored: set[Key] = set()  # tier-1 keys whose pool copy is valid
        self.pending: Tier[PendingPage] = Tier()
        self.pool: CompressedPool = CompressedPool(
            page_size, memlimit, threshold, accept_threshold_percent, volatile, store_raw)
        self.poor: dict[int, set[int]] = {}  # fid -> pages that did not compress
        self.c = CacheCounters()
        self.files = Files(self.has_pages, self.poor)  # the FileStates, by identity
        # Set by the adapter: how many inodes the kernel holds (the `inodes` gauge).
        self.inodes_known: Callable[[], int] = lambda: 0

    def statistics(self) -> MappingProxyType[str, float]:
        """Every name of stats.COUNTERS, read at one instant (no await in between); a
        frozen mapping, in the table's order. stats.py renders it."""
        pool, pc, cc = self.pool, self.pool.c, self.c
        used = pool.mem_used_total
        lookups = cc.cache_hits + cc.cache_misses
        return MappingProxyType({
            "zero_pages": pool.zero_pages, "same_filled_pages": pool.same_filled_pages,
            "stored_pages": pool.stored_pages, "raw_pages": pool.raw_pages,
            "raw_data_size": pool.raw_data_size, "orig_data_size": pool.orig_data_size,
            "compr_data_size": pool.compr_data_size, "mem_used_total": used,
            "mem_used_max": max(pc.mem_used_max, used), "memlimit": pool.memlimit,
            "memlimit_effective": pool.limit, "pressure_shrinks": cc.pressure_shrinks,
            "cache_size": self.configured * self.page_size,
            "cache_pages": len(self.tier1) + len(self.pending),
            "cache_files": len(self.files), "inodes": self.inodes_known(),
            "hits": pc.succ_gets, "misses": pc.failed_gets,
            "cache_hits": cc.cache_hits, "cache_misses": cc.cache_misses,
            "puts": pc.puts, "invalidates": pc.invalidates, "evicted_pages": pc.evicted_pages,
            "reject_compress_poor": pc.reject_compress_poor,
            "reject_raw_full": pc.reject_raw_full, "reject_cold": pc.reject_cold,
            "raw_skips": pc.raw_skips, "pool_limit_hit": pc.pool_limit_hit,
            "reject_alloc_fail": pc.reject_alloc_fail, "reclaimed_pages": pc.reclaimed_pages,
            "compacted_pages": pc.compacted_pages,
            "backing_reads": cc.backing_reads, "backing_read_bytes": cc.backing_read_bytes,
            "backing_fallbacks": cc.backing_fallbacks, "write_fills": cc.write_fills,
            "hit_ratio": round((cc.cache_hits + pc.succ_gets) / lookups, 4) if lookups else 0.0,
            "compression_ratio": round(pool.orig_data_size / used, 4) if used else 0.0,
        })

    # -- files ---------------------------------------------------------------------

    def file(self, identity: bytes) -> FileState:
        """The file's state (files.Files.get): made, with a new fid, if there is none."""
        return self.files.get(identity)

    def has_pages(self, fid: int) -> bool:
        return (fid in self.tier1.by_file or fid in self.pending.by_file
                or fid in self.pool.files)

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

    def open_file(self, identity: bytes, sig: Sig, regular: bool, direct: bool,
                  policy_off: bool) -> tuple[FileState, bool, bool]:
        """An open through the mount: (the file's state, whether its cached pages were
        kept, whether its reads go through the tiers). O_DIRECT (`direct`) and the
        per-file policy (user.zcachefs.cache=off) bypass the tiers; the policy also
        drops the pages cached before it changed."""
        state = self.file(identity)
        keep = self.opened(state, sig)
        if policy_off and not direct:
            self.invalidate_file(state)
        return state, keep, not direct and not policy_off and regular

    # -- lookups -------------------------------------------------------------------

    def get(self, fid: int, index: int) -> bytes | None:
        """A page from any tier; None on a miss. A pool hit keeps the compressed copy
        (and goes to tier 1, marked stored, only with keep_hits)."""
        key = (fid, index)
        page = self.tier1.get(key)
        if page is not None:
            self.c.cache_hits += 1
            return page
        if self.pending.items:
            pend = self.pending.peek(key)
            if pend is not None:
                self.c.cache_hits += 1
                return pend.data
        self.c.cache_misses += 1
        page = self.pool.load(fid, index)
        if page is not None and self.keep_hits:
            self.stored.add(key)
            self._put(key, page)
        return page

    def read(self, state: FileState, off: int, size: int) -> bytes | ReadPlan:
        """Answer a read of `size` bytes at `off` from the tiers, or say which runs of
        pages are missing (a ReadPlan, completed by `fill_plan`). Never awaits."""
        ps = self.page_size
        end = off + size
        known = state.size
        if known is not None:  # known since open or our last change: EOF without I/O
            if off >= known:
                return b""
            if end > known:
                end = known
        first = off // ps
        last = (end - 1) // ps
        fid = state.fid
        start = off - first * ps
        get = self.get
        if first == last:  # one page: the 4 KiB random read
            page = get(fid, first)
            if page is not None:
                return page if start == 0 and size >= len(page) else page[start:start + size]
            return ReadPlan(off, size, first, [None], [(first, 1)], state.version, 1)
        found: list[bytes | None] = []
        complete = True
        for index in range(first, last + 1):
            page = get(fid, index)
            found.append(page)
            if page is None:
                complete = False
            elif len(page) < ps:  # the end of the file
                break
        if complete:
            return _cut(found, start, size)  # type: ignore[arg-type]
        runs: list[tuple[int, int]] = []
        run = -1
        for i, page in enumerate(found):
            if page is None:
                if run < 0:
                    run = i
            elif run >= 0:
                runs.append((first + run, i - run))
                run = -1
        if run >= 0:
            runs.append((first + run, len(found) - run))
        return ReadPlan(off, size, first, found, runs, state.version,
                        sum(n for _, n in runs))

    def byte_runs(self, plan: ReadPlan) -> list[tuple[int, int]]:
        """The (offset, length) in bytes of each run of missing pages of `plan`: what to
        read from the backing file (the pages read go to `fill_plan`)."""
        ps = self.page_size
        return [(first * ps, count * ps) for first, count in plan.runs]

    @property
    def has_pending(self) -> bool:
        """Pages wait for the compressor (the adapter then wakes it)."""
        return bool(self.pending.items)

    def fill_plan(self, state: FileState, plan: ReadPlan, runs: list[list[bytes]],
                  fallback: bool = False) -> bytes:
        """Complete a ReadPlan with the pages read for each of its runs (a run may be
        short at the end of the file): cache them unless the file changed meanwhile,
        and return the answer. `fallback`: the backing read could not use
        RWF_DONTCACHE (counted)."""
        c = self.c
        c.backing_reads += len(runs)
        if fallback:
            c.backing_fallbacks += len(runs)
        # The lookup counted one miss per missing page, as it should; the pages it
        # found after a gap were real hits.
        fresh = state.version == plan.version
        found, base = plan.found, plan.first
        for (first, _), pages in zip(plan.runs, runs, strict=True):
            for i, page in enumerate(pages):
                c.backing_read_bytes += len(page)
                found[first - base + i] = page
            if fresh and pages:
                self.fill(state, first, pages, plan.version)
        out: list[bytes] = []
        ps = self.page_size
        for got in found:
            if got is None:
                break
            out.append(got)
            if len(got) < ps:
                break
        return _cut(out, plan.off - base * ps, plan.size)

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
            index = first + i
            if len(page) < ps:
                state.tail = index
            key = (fid, index)
            # A concurrent miss of the same page may have cached it meanwhile: keep one
            # copy in tier 1 / pending (the fresh one); a pool copy holds the same bytes.
            if pending.items:
                pending.pop(key)
            if pool.contains(fid, index):
                self.stored.add(key)
            self._put(key, page)

    def fill_written(self, state: FileState, index: int, page: bytes) -> None:
        """Insert a page a write through the mount determined (writes.end_write), and
        count it in write_fills."""
        self.fill(state, index, [page], state.version)
        self.c.write_fills += 1

    def peek(self, fid: int, index: int) -> bytes | None:
        """A cached page from any tier, without counting a lookup (writes.begin_write)."""
        key = (fid, index)
        page = self.tier1.peek(key)
        if page is None:
            pend = self.pending.peek(key)
            page = pend.data if pend is not None else self.pool.peek(fid, index)
        return page

    def _put(self, key: Key, page: bytes) -> None:
        # Hot path (every miss): plain dict/set operations only.
        tier1 = self.tier1
        tier1.put(key, page)
        if len(tier1.items) > self.capacity:
            self._overflow()

    def _overflow(self) -> None:
        """Move tier 1's least recently used pages past capacity to pending (a page
        the pool already holds is simply dropped: that costs nothing)."""
        tier1, pending, stored, poor = self.tier1, self.pending, self.stored, self.poor
        items = tier1.items
        while len(items) > self.capacity:
            old, data = tier1.pop_oldest()
            if stored and old in stored:
                stored.discard(old)
                continue
            bad = poor.get(old[0])
            pending.put(old, PendingPage(old, data, bad is not None and old[1] in bad))
        if len(pending.items) > MAX_PENDING:
            handoff.compress_inline(self, len(pending.items) - MAX_PENDING)

    # -- the pool ------------------------------------------------------------------

    def shrink_pool(self, n: int) -> tuple[int, bool]:
        """One bounded step of keeping the pool in its limit: evict up to n entries if
        it is over it. Returns (entries evicted, whether another step may help): False
        when within the limit, or when nothing was left to look at (e.g. only slabs of
        same-size spares)."""
        pool = self.pool
        if not pool.needs_shrink:
            return 0, False
        evicted = pool.shrink(n)
        return evicted, bool(pool.last_scanned)

    @property
    def pool_frees(self) -> int:
        """Objects the pool's slabs have freed so far: compaction is due when it moves."""
        return self.pool.arena.frees

    def compact_pool(self, n: int) -> bool:
        """One bounded step (about n entries moved) of giving back the pool's partly
        empty slabs; True if another step may help."""
        pool = self.pool
        return pool.arena.reclaimable() >= COMPACT_MIN_SLABS and pool.compact(n) > 0

    def reset_stats(self) -> None:
        """Zero the event counters, the pool's too (gauges are levels and stay)."""
        self.c = CacheCounters()
        self.pool.reset_counters()

    def activity(self) -> int:
        """A number that moves whenever the cache serves a lookup or stores a page
        (for the heap trimmer: trim only after work)."""
        return self.c.cache_hits + self.c.cache_misses + self.pool.c.puts

    def close(self) -> None:
        """Release the pool's memory (at unmount; the cache is not used after)."""
        self.pool.close()

    # -- invalidation --------------------------------------------------------------

    def _drop(self, fid: int, indexes: list[int]) -> None:
        if self.stored:
            for index in indexes:
                self.stored.discard((fid, index))
        bad = self.poor.get(fid)
        if bad:
            bad.difference_update(indexes)
            if not bad:
                del self.poor[fid]
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
        """Drop the pages a write of `length` bytes at `offset` touches, and the short
        last page if the write may reach it or lengthen the file (ends past its start;
        a write before it changes neither it nor the size)."""
        ps = self.page_size
        first, last = offset // ps, (offset + max(length, 1) - 1) // ps
        indexes = self._present(state.fid, first, last)
        if state.tail is not None and offset + max(length, 1) > state.tail * ps:
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
        self.stored.clear()
        self.poor.clear()
        self.pool.clear()
        for state in self.files:
            state.tail = None
        self.files.sweep(self.files.forgotten_count)

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
                self.stored.discard(key)
                dropped += 1
        self.capacity = max(1, min(self.capacity, len(self.tier1)))
        return dropped

    def set_compressor(self, name: str) -> None:
        self.codec = codecs.get(name)

    # -- memory pressure (the pressure watcher's reactions; trio thread, no await) ----

    def give_back(self, pool_bytes: int, total_bytes: int) -> int:
        """Memory is short: cap the pool `pool_bytes` below what it holds (or its limit,
        if lower) and evict down to the cap at once; if that freed less than
        `total_bytes`, drop tier-1 pages for the rest (`drop_oldest`). Counts a
        pressure_shrink; returns the bytes the pool freed."""
        pool = self.pool
        used = pool.mem_used_total
        pool.set_pressure_cap(max(0, min(pool.limit, used) - pool_bytes))
        while pool.needs_shrink:
            pool.shrink(4096)
            if not pool.last_scanned:
                break
        excess = total_bytes - (used - pool.mem_used_total)
        if excess > 0:  # the pool alone was not enough: tier 1 gives way too
            self.drop_oldest(excess // self.page_size + 1)
        self.c.pressure_shrinks += 1
        return used - pool.mem_used_total

    def relax(self) -> bool:
        """Memory is plentiful again: raise the pool's pressure cap by an eighth of
        memlimit (at least 1 MiB; lifted once it reaches memlimit) and tier 1's capacity
        by an eighth of its configured size. True if this call lifted the cap."""
        pool = self.pool
        lifted = False
        if pool.pressure_cap is not None:
            cap = pool.pressure_cap + max(pool.memlimit // 8, 1 << 20)
            pool.set_pressure_cap(None if cap >= pool.memlimit else cap)
            lifted = pool.pressure_cap is None
        if self.capacity < self.configured:
            self.capacity = min(self.configured, self.capacity + max(1, self.configured // 8))
        return lifted


def _cut(pages: list[bytes], start: int, size: int) -> bytes:
    """The `size` bytes at `start` of the pages joined (no copy for a whole page)."""
    if not pages:
        return b""
    data = pages[0] if len(pages) == 1 else b"".join(pages)
    return data if start == 0 and size >= len(data) else data[start:start + size]

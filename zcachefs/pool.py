"""Tier 2: the compressed pool of one mount, keyed by (file id, page index).

The zcache design, finished: pages leaving tier 1 are compressed and kept if they
compress to at most `threshold` bytes; a page that does not is stored as it is (raw,
as zswap has done since 2025) unless `store_raw` is off. Pages filled with one byte
value (zero pages included) keep only that byte and are accepted even when the pool is
full. Loads are NOT exclusive: a hit decompresses and keeps the compressed copy (marked
referenced), so serving a page from the pool costs one decompression and no later
recompression. A newer store of a key replaces the older; invalidation drops it.

Memory: the size-classed slots of a `slabs.SlabArena` (empty slabs are unmapped; while
memory is short they are volatile: a page the kernel discarded is a miss, counted).

Limit and eviction (measurements in docs/design.md, "Cache invariants"): a store that
would pass the limit is refused and marks the pool full (pool_limit_hit); while full,
stores are refused until the shrinker has evicted down to `accept_threshold_percent` of
the limit (zswap's hysteresis). Eviction is CLOCK over the least-recently-stored order,
weighing bytes: of the `EVICT_WINDOW` oldest unreferenced entries the largest goes
first. Raw pages take only free room (below `accept_threshold_percent`, evicting
nothing) and are evicted first, so a raw page never pushes out the three or four
compressed pages its bytes could hold. `shrink()` works in bounded batches.

Admission near the limit (above `accept_threshold_percent`): only pages seen lately
(a key evicted or refused, remembered as a "ghost", as many as the pool has entries) may
take an older page's place; a page never seen is remembered and refused (`reject_cold`).
Under plain LRU or CLOCK a loop over more data than the pool never hits; here the pool
keeps a stable part of it, at the price of one extra miss per page of a new working set.

Invariants (checked by tests after every operation):
- mem_used_total == arena bytes (mapped slabs, slot rounding and free slots included)
  + ENTRY_OVERHEAD (the measured index cost) * (stored + same-filled entries)
- after a store returns True, mem_used_total <= limit (= memlimit, or the lower
  pressure cap; same-filled pages excepted: they cost only their index entry)
- a key is in `files` iff it is in `lru`

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe: one thread owns
a pool; compression may happen elsewhere (see `compress_page`); the pressure watcher's
OS thread may call `mark_lazy_free` only (rule 6 in docs/design.md).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from . import codecs
from .compress import RAW, Compressed, compress_page
from .settings import DEFAULTS
from .slabs import Slab, SlabArena, slab_size

# Bytes of index per stored page: the _Entry (slots object), its key tuple, one slot in
# the per-file dict and one OrderedDict node. Measured with tracemalloc on CPython 3.11
# (tests/unit/test_pool.py::test_entry_overhead_matches_tracemalloc checks it stays true).
ENTRY_OVERHEAD = 304
# Entries looked at per eviction (the victim is the largest unreferenced one among them).
# 8: a raw page at the head of the LRU is found among the oldest 8 pages, while the
# search stays a fixed ~2 us per eviction.
EVICT_WINDOW = 8
GHOSTS_MIN = 1024  # ghost keys kept however small the pool

class _Entry:
    __slots__ = ("codec", "length", "referenced", "size", "slab", "slot")

    def __init__(self, length: int, codec: int, slab: Slab | None, slot: int, size: int,
                 referenced: bool) -> None:
        self.length = length  # uncompressed bytes
        self.codec = codec  # 0: same-filled, `slot` holds the fill byte
        self.slab = slab
        self.slot = slot
        self.size = size  # compressed bytes
        self.referenced = referenced


@dataclass
class PoolCounters:
    """Event counters (zcache/zswap/cleancache names); reset by reset_stats."""

    puts: int = 0
    succ_gets: int = 0
    failed_gets: int = 0
    invalidates: int = 0
    evicted_pages: int = 0
    reject_compress_poor: int = 0
    reject_alloc_fail: int = 0
    pool_limit_hit: int = 0
    reclaimed_pages: int = 0
    raw_skips: int = 0  # known-poor pages stored raw without trying the codec again
    reject_raw_full: int = 0  # raw pages refused: no free room for them (see admit)
    reject_cold: int = 0  # new pages refused near the limit (not seen lately)
    compacted_pages: int = 0  # entries moved to unmap partly empty slabs (compact)
    mem_used_max: int = 0


class CompressedPool:
    """See the module docstring."""

    def __init__(self, page_size: int, memlimit: int, threshold: int,
                 accept_threshold_percent: int = DEFAULTS["accept_threshold_percent"],
                 volatile: bool = DEFAULTS["volatile"], store_raw: bool = True) -> None:
        self.page_size = page_size
        self.store_raw = store_raw  # keep pages that do not compress, as they are
        self.memlimit: int = memlimit  # as configured (the control knob)
        # Lower cap set by the memory-pressure watcher (None: no pressure). The pool
        # obeys min(memlimit, pressure_cap): it gives way to applications.
        self.pressure_cap: int | None = None
        self.threshold: int = threshold
        self.accept_threshold_percent: int = accept_threshold_percent
        self.arena = SlabArena(page_size, slab_bytes=slab_size(memlimit, page_size),
                               volatile=volatile)
        self.files: dict[int, dict[int, _Entry]] = {}
        self.lru: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        # The raw entries (also in lru), least recently stored first: evicted first.
        self.raw_lru: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        # Keys evicted or refused lately, oldest first (see admit): at most as many as
        # the pool holds entries (~100 bytes each, a third of an entry's index cost).
        self.ghosts: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.full = False
        self.last_scanned = 0  # entries the last shrink() looked at
        self.c = PoolCounters()
        # Gauges (what the pool holds now), as zcache's sysfs files report them.
        self.stored_pages = 0  # entries holding compressed data (not same-filled)
        self.zero_pages = 0
        self.same_filled_pages = 0
        self.orig_data_size = 0  # uncompressed bytes of stored pages (zero pages excluded)
        self.compr_data_size = 0  # compressed bytes of stored pages
        self.raw_pages = 0  # stored pages kept as they are (they did not compress)
        self.raw_data_size = 0  # their bytes (part of orig_ and compr_data_size)

    # -- accounting ----------------------------------------------------------------

    @property
    def mem_used_total(self) -> int:
        return self.arena.bytes_total + ENTRY_OVERHEAD * len(self.lru)

    @property
    def limit(self) -> int:
        """The limit in force: memlimit, or lower under memory pressure."""
        cap = self.pressure_cap
        return self.memlimit if cap is None or cap > self.memlimit else cap

    @property
    def accept_level(self) -> int:
        return self.limit * self.accept_threshold_percent // 100

    @property
    def needs_shrink(self) -> bool:
        return self.mem_used_total > (self.accept_level if self.full else self.limit)

    def _ghost(self, key: tuple[int, int]) -> None:
        """Remember a key that was evicted or refused (as many as the pool holds)."""
        ghosts = self.ghosts
        ghosts[key] = None
        if len(ghosts) > max(GHOSTS_MIN, len(self.lru)):
            ghosts.popitem(last=False)

    def _has_room(self, nbytes: int) -> bool:
        used = self.mem_used_total
        if self.full:
            if used + nbytes > self.accept_level:
                self.c.pool_limit_hit += 1  # every refusal counts, as in zswap
                return False
            self.full = False
        if used + nbytes > self.limit:
            self.full = True
            self.c.pool_limit_hit += 1
            return False
        return True

    def _leave_full(self) -> None:
        """After drops: accept stores again once usage is back under accept_level."""
        if self.full and self.mem_used_total <= self.accept_level:
            self.full = False

    # -- store / load --------------------------------------------------------------

    def admit(self, fid: int, index: int, comp: Compressed, referenced: bool = False) -> bool:
        """Store a compressed page (replacing any older copy); False if refused."""
        self.c.puts += 1
        key = (fid, index)
        if key in self.lru:
            self._drop(key)
        if comp.poor:
            if comp.tried:
                self.c.reject_compress_poor += 1
            else:
                self.c.raw_skips += 1
            if not self.store_raw:
                return False
        if comp.codec == 0:  # same-filled: only the index entry, accepted even if full
            entry = _Entry(comp.length, 0, None, comp.blob[0], 0, referenced)
            if comp.blob[0] == 0:
                self.zero_pages += 1
            else:
                self.same_filled_pages += 1
        else:
            size = len(comp.blob)
            arena = self.arena
            need = ENTRY_OVERHEAD + arena.cost(size)
            used = arena.bytes_total + ENTRY_OVERHEAD * len(self.lru)
            if self.full and used + need <= self.accept_level:
                self.full = False  # back under accept_level (after invalidations)
            if self.full or used + need > self.accept_level:
                if comp.poor:  # raw pages take only free room (module docstring)
                    self.c.reject_raw_full += 1
                    return False
                # Near the limit only a ghost may take an older page's place (module
                # docstring: Admission); a new key is only remembered.
                ghosts = self.ghosts
                if key not in ghosts:
                    self._ghost(key)
                    self.c.reject_cold += 1
                    return False
                if not self._has_room(need):
                    ghosts.move_to_end(key)  # still proven once room is made
                    return False
                del ghosts[key]
            try:
                slab, slot = arena.alloc(comp.blob, key)
            except OSError:  # no new mapping (vm.max_map_count, overcommit): not stored
                self.c.reject_alloc_fail += 1
                return False
            entry = _Entry(comp.length, comp.codec, slab, slot, size, referenced)
            self.stored_pages += 1
            self.orig_data_size += comp.length
            self.compr_data_size += size
            if comp.codec == RAW:
                self.raw_pages += 1
                self.raw_data_size += size
                self.raw_lru[key] = entry
        pages = self.files.get(fid)
        if pages is None:
            pages = self.files[fid] = {}
        pages[index] = entry
        self.lru[key] = entry
        used = self.arena.bytes_total + ENTRY_OVERHEAD * len(self.lru)
        if used > self.c.mem_used_max:
            self.c.mem_used_max = used
        return True

    def store(self, fid: int, index: int, page: bytes, codec: codecs.Codec,
              referenced: bool = False) -> bool:
        """Compress (here, on the calling thread) and admit one page."""
        return self.admit(fid, index, compress_page(codec, page, self.threshold), referenced)

    def load(self, fid: int, index: int) -> bytes | None:
        """Get a page, keeping its compressed copy (marked referenced: a second chance
        at eviction); None on a miss."""
        pages = self.files.get(fid)
        entry = pages.get(index) if pages is not None else None
        if entry is None:
            self.c.failed_gets += 1
            return None
        return self._load(fid, index, entry)

    def _load(self, fid: int, index: int, entry: _Entry) -> bytes | None:
        page = self._decode(entry)
        if page is None:  # reclaimed by the kernel, or damaged: never served
            if entry.slab is not None and self.arena.read(entry.slab, entry.slot,
                                                          entry.size) is None:
                self.c.reclaimed_pages += 1
            self._drop((fid, index))
            self.c.failed_gets += 1
            return None
        entry.referenced = True
        self.c.succ_gets += 1
        return page

    def _decode(self, entry: _Entry) -> bytes | None:
        """The page an entry holds; None if the kernel reclaimed part of it (slabs.py:
        Volatile slabs) or it does not decompress."""
        if entry.slab is None:
            return bytes((entry.slot,)) * entry.length
        blob = self.arena.read(entry.slab, entry.slot, entry.size)
        if blob is None or entry.codec == RAW:
            return blob
        try:
            return codecs.BY_ID[entry.codec].decompress(blob, entry.length)
        except codecs.CodecError:
            return None

    def peek(self, fid: int, index: int) -> bytes | None:
        """The page, if stored and intact, without counting a get or marking it."""
        pages = self.files.get(fid)
        entry = pages.get(index) if pages is not None else None
        return None if entry is None else self._decode(entry)

    def contains(self, fid: int, index: int) -> bool:
        pages = self.files.get(fid)
        return pages is not None and index in pages

    def _drop(self, key: tuple[int, int]) -> None:
        entry = self.lru.pop(key)
        pages = self.files[key[0]]
        del pages[key[1]]
        if not pages:
            del self.files[key[0]]
        if entry.slab is None:
            if entry.slot == 0:
                self.zero_pages -= 1
            else:
                self.same_filled_pages -= 1
        else:
            self.arena.free(entry.slab, entry.slot)
            self.stored_pages -= 1
            self.orig_data_size -= entry.length
            self.compr_data_size -= entry.size
            if entry.codec == RAW:
                self.raw_pages -= 1
                self.raw_data_size -= entry.size
                self.raw_lru.pop(key, None)

    # -- invalidation (cost proportional to the file's pages) ----------------------

    def invalidate_file(self, fid: int) -> int:
        return self.invalidate_pages(fid, list(self.files.get(fid, ())))

    def invalidate_pages(self, fid: int, indexes: list[int]) -> int:
        pages = self.files.get(fid)
        if not pages:
            return 0
        n = 0
        for index in indexes:
            if index in pages:
                self._drop((fid, index))
                n += 1
        self.c.invalidates += n
        return n

    def invalidate_from(self, fid: int, first: int) -> int:
        return self.invalidate_pages(fid, [i for i in self.files.get(fid, ()) if i >= first])

    # -- eviction -------------------------------------------------------------------

    def shrink(self, max_entries: int = 256) -> int:
        """Evict up to max_entries while over target: CLOCK over the least recently
        stored entries, weighing bytes (see the module docstring).

        Bounded work: at most 2 * max_entries entries are looked at, so a pool whose
        oldest pages were all hit before may evict nothing in one call; `last_scanned`
        tells the caller whether it made progress (clearing referenced bits is progress:
        the next call evicts them)."""
        if self.needs_shrink:
            self.arena.trim()  # empty spare slabs go first: they hold no page
            if self.arena.reclaimable():  # then the holes: room without evicting
                self.compact(max_entries)
        evicted = 0
        scanned = 0  # entries spared (second chance) or evicted
        lru, raws = self.lru, self.raw_lru
        budget = 2 * max_entries
        raw = self.page_size  # a slot this large holds a raw page: nothing frees more
        # Raw pages first (CLOCK among them): each frees a whole page of memory. Each is
        # looked at once per call: a referenced one keeps its second chance until the
        # next call, so a raw page just hit is not evicted before cold compressed ones.
        raw_turns = len(raws)
        while (raws and raw_turns and scanned < budget and evicted < max_entries
               and self.needs_shrink):
            key, entry = next(iter(raws.items()))
            raw_turns -= 1
            scanned += 1
            if entry.referenced:
                entry.referenced = False
                raws.move_to_end(key)
                lru.move_to_end(key)  # the second chance holds in the CLOCK below too
                continue
            self._drop(key)
            evicted += 1
            if self.arena.spares:
                self.arena.trim()
        while lru and scanned < budget and evicted < max_entries:
            if not self.needs_shrink:
                break
            victim: tuple[int, int] | None = None
            vsize = -1
            second: list[tuple[int, int]] = []
            candidates = 0
            for key, entry in lru.items():
                if entry.referenced:
                    entry.referenced = False
                    second.append(key)
                    scanned += 1
                    if scanned >= budget:
                        break
                    continue
                # The memory it frees: its slot (equal slots: the oldest goes).
                size = 0 if entry.slab is None else entry.slab.size
                if size > vsize:
                    victim, vsize = key, size
                    if size >= raw:
                        break
                candidates += 1
                if candidates >= EVICT_WINDOW:
                    break
            for key in second:
                lru.move_to_end(key)
            if victim is None:
                continue
            self._drop(victim)
            self._ghost(victim)
            scanned += 1
            evicted += 1
            if self.arena.spares:
                self.arena.trim()  # the eviction emptied a slab: unmap it before more
        self.last_scanned = scanned
        self.c.evicted_pages += evicted
        self._leave_full()
        return evicted

    def compact(self, max_moves: int = 256) -> int:
        """Give back the slabs that rewrites and evictions left partly empty, moving
        their entries into the free slots of fuller slabs of their class (bounded work:
        about max_moves entries); returns the bytes unmapped. The entries' data is not
        touched, only copied."""
        lru = self.lru
        moves = 0

        def moved(key: tuple[int, int], slab: Slab, slot: int) -> None:
            nonlocal moves
            entry = lru[key]
            entry.slab = slab
            entry.slot = slot
            moves += 1

        freed = self.arena.compact(max_moves, moved)
        self.c.compacted_pages += moves
        if freed:
            self._leave_full()
        return freed

    def drop_reclaimed(self, slabs: list[Slab] | None = None) -> int:
        """Drop every entry the kernel discarded part of (slabs.py: Volatile slabs), so
        that mem_used_total counts what the pool holds again; returns how many. Looks at
        `slabs` (default: all, or a batch between awaits; unmapped ones are skipped)."""
        arena = self.arena
        if not arena.lazy:
            return 0
        lru = self.lru
        lost = arena.discarded(list(arena.all) if slabs is None else slabs,
                               lambda key: lru[key].size)
        for key in lost:
            self._drop(key)
        self.c.reclaimed_pages += len(lost)
        if self.arena.spares:
            self.arena.trim()
        self._leave_full()
        return len(lost)

    # -- volatile slabs (what the pressure watcher may see and do) -------------------

    @property
    def can_volatile(self) -> bool:
        return self.arena.can_volatile  # volatile=on and the kernel has MADV_FREE

    @property
    def volatile(self) -> bool:
        return self.arena.volatile  # slots become lazy-free as they are written

    @property
    def lazy(self) -> bool:
        return self.arena.lazy  # some slab may hold lazy-free pages

    def slabs(self) -> list[Slab]:
        return list(self.arena.all)  # a snapshot, oldest first (for drop_reclaimed)

    def mark_lazy_free(self) -> int:
        """First aid (SlabArena.mark_lazy_free): the one call safe from another thread."""
        return self.arena.mark_lazy_free()

    def set_volatile(self, on: bool) -> None:
        """On (memory is short): let the kernel take pool pages itself, at once. Off: drop
        what it took, then make the rest ordinary memory (else it goes before page cache)."""
        if not on:
            self.drop_reclaimed()
        self.arena.set_volatile(on)

    # -- settings: a bad value raises ValueError and changes nothing -----------------

    def set_memlimit(self, memlimit: int) -> None:
        """Change the limit; lowering it makes `needs_shrink` true until shrunk."""
        _check("memlimit", memlimit, 0, None)
        self.memlimit = memlimit
        if self.mem_used_total > self.limit:
            self.full = True

    def set_pressure_cap(self, cap: int | None) -> None:
        """Cap the pool below memlimit while memory is short (None: no cap; 0: none)."""
        _check("pressure cap", 0 if cap is None else cap, 0, None)
        self.pressure_cap = cap
        if self.mem_used_total > self.limit:
            self.full = True

    def set_threshold(self, threshold: int) -> None:
        _check("threshold", threshold, 1, self.page_size)
        self.threshold = threshold

    def set_accept_threshold_percent(self, percent: int) -> None:
        _check("accept_threshold_percent", percent, 1, 100)
        self.accept_threshold_percent = percent

    def clear(self) -> int:
        """Drop every page (drop_caches) and unmap every slab."""
        n = len(self.lru)
        for key in list(self.lru):
            self._drop(key)
        self.arena.trim()
        self.raw_lru.clear()
        self.ghosts.clear()
        self.full = False
        return n

    def reset_counters(self) -> None:  # reset_stats: the event counters restart from 0
        self.c = PoolCounters(mem_used_max=self.mem_used_total)

    def close(self) -> None:
        self.files.clear()
        self.lru.clear()
        self.raw_lru.clear()
        self.arena.close()


def _check(name: str, value: int, low: int, high: int | None) -> None:
    """ValueError unless `value` is an int from `low` to `high` (None: no bound)."""
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer " + (f">= {low}" if high is None else
                         f"from {low} to {high}") + f", got {value!r}")

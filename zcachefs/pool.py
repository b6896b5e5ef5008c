"""Tier 2: the compressed pool of one mount, keyed by (file id, page index).

The zcache design, finished: pages leaving tier 1 are compressed and kept if they
compress to at most `threshold` bytes; a page that does not is stored as it is (raw,
as zswap has done since 2025) unless `store_raw` is off. Pages filled with one byte
value (zero pages included) keep only that byte and are accepted even when the pool is
full. Loads are NOT exclusive: a hit decompresses and keeps the compressed copy (marked
referenced), so serving a page from the pool costs one decompression and no later
recompression. A newer store of a key replaces the older; invalidation drops it.

Memory: compressed pages live in slabs (anonymous mmaps) split into slots of one size
class each, the zsmalloc idea: a slab whose last object goes is unmapped, so freed pool
memory returns to the operating system instead of fragmenting the malloc heap.

Volatile slabs: every slot is written with a CRC-32 of its bytes. While memory is
short (`set_volatile(True)`, called by the pressure watcher) every used page is marked
MADV_FREE, and so is every slot written meanwhile: the data stays, but the kernel may
discard those pages whenever it needs memory (they sit on the inactive file LRU, so
this works without swap), at reclaim speed, before any OOM kill: an application that
allocates faster than the daemon can evict (usemem) takes the pool's memory from the
kernel. A discarded page reads back as zeros; the checksum catches it at load, the
entry is dropped and counted (`reclaimed_pages`), and the page is read from the file
again. When the pressure is over (`set_volatile(False)`) the pages still resident are
written back one byte each, which makes them ordinary memory again: always volatile,
the pool would be discarded before the page cache it is meant to outlive (measured:
random reads in a 256 MiB budget at 0.71x of plain instead of 1.29x).

`mem_used_total` = mapped slab bytes (slot rounding and free slots included) + a
measured per-entry cost of the index (`ENTRY_OVERHEAD`).

Limit and eviction: a store that would pass `memlimit` is refused and marks the pool
full (pool_limit_hit); while full, stores are refused until the shrinker has evicted
down to `accept_threshold_percent` of the limit (zswap's hysteresis). Eviction is
CLOCK over the least-recently-stored order (a page hit since its last look gets a
second chance) and weighs bytes: of the `EVICT_WINDOW` oldest unreferenced entries the
largest goes first. Raw pages are weighed hardest: they take only free room (below
`accept_threshold_percent` of the limit, never evicting anything for themselves), and
they are evicted first (CLOCK among them), so a raw page never pushes out the three or
four compressed pages its bytes could hold; when the pool has room for both, both stay.
`shrink()` works in bounded batches so a caller never waits for a long shrink.

Admission near the limit (above `accept_threshold_percent`): only pages seen lately
(a key evicted or refused, remembered as a "ghost", as many as the pool has entries) may
take an older page's place; a page never seen is remembered and refused (`reject_cold`).
Under plain LRU or CLOCK a loop over more data than the pool holds never hits (each
page is evicted before the loop comes back to it); here the pool keeps a stable part
of the loop, as a frequency-aware cache would, at the price of one extra miss for a
page of a new working set once the pool is full.

Invariants (checked by tests after every operation):
- mem_used_total == arena bytes + ENTRY_OVERHEAD * (stored + same-filled entries)
- after a store returns True, mem_used_total <= limit (= memlimit, or the lower
  pressure cap; same-filled pages excepted: they cost only their index entry)
- a key is in `files` iff it is in `lru`

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe: one thread owns
a pool; compression may happen elsewhere (see `compress_page`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from . import codecs

# Bytes of index per stored page: the _Entry (slots object), its key tuple, one slot in
# the per-file dict and one OrderedDict node. Measured with tracemalloc on CPython 3.11
# (tests/test_pool.py::test_entry_overhead_matches_tracemalloc checks it stays true).
ENTRY_OVERHEAD = 304
# Entries looked at per eviction (the victim is the largest unreferenced one among them).
# 8: a raw page at the head of the LRU is found among the oldest 8 pages, while the
# search stays a fixed ~2 us per eviction.
EVICT_WINDOW = 8
GHOSTS_MIN = 1024  # ghost keys kept however small the pool
RAW = codecs.BY_NAME["none"].id  # entries stored as they are use the identity codec

SLAB_BYTES = 256 * 1024  # default slab; pools pick 64 KiB..1 MiB by memlimit (slab_size)
HEADER = 4  # per slot: CRC-32 of the compressed bytes, little-endian
_PAGE_MASK = mmap.PAGESIZE - 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_pages(buf: mmap.mmap) -> bytes:
    """mincore(2) of a mapping: one byte per page, bit 0 set if the page is in memory
    (for a lazy-free page: not yet discarded by the kernel)."""
    n = (len(buf) + _PAGE_MASK) // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(n)
    view = ctypes.c_char.from_buffer(buf)
    try:
        if _libc.mincore(ctypes.addressof(view), len(buf), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
    finally:
        del view  # release the buffer export, or the mmap can never be closed
    return vec.raw


def slab_size(memlimit: int, max_object: int) -> int:
    """About memlimit/256, a power of two from 64 KiB to 256 KiB, at least 16 objects.

    Small slabs waste less in partly filled size classes (32 classes x one partial slab:
    with 1 MiB slabs, 23 MiB of pages took 53 MiB in a 1 GiB pool; with 256 KiB, 37);
    256 KiB keeps a 10 GiB pool at 40,960 mappings, below vm.max_map_count (65,530)."""
    size = 64 * 1024
    while size < 1 << 18 and size * 256 < memlimit:
        size *= 2
    return max(size, 16 * max_object)


@dataclass(frozen=True, slots=True)
class Compressed:
    """The result of `compress_page` (computed anywhere, admitted by the pool)."""

    length: int  # uncompressed length of the page
    codec: int  # codec id, or 0 for a same-filled page
    blob: bytes  # compressed bytes; for a same-filled page, the one fill byte
    # Does not compress to the threshold: `blob` is the page itself (codec RAW), stored
    # raw when the pool allows it. `tried`: the codec ran (False: known poor, skipped).
    poor: bool = False
    tried: bool = True


def compress_page(codec: codecs.Codec, page: bytes, threshold: int,
                  known_poor: bool = False) -> Compressed:
    """Compress one page for the pool; a page known not to compress is not tried
    again. Thread-safe; releases the GIL in the codec."""
    first = page[:1]
    # Same-filled? Compare with a filled copy (a memset and a memcmp, ~0.5 us) only when
    # the first and last bytes agree; bytes.count would take ~9 us per 4 KiB page.
    if page and page[-1:] == first and page == first * len(page):
        return Compressed(len(page), 0, first)
    if known_poor:
        return Compressed(len(page), RAW, page, poor=True, tried=False)
    blob = codec.compress(page)
    if codec.id == RAW:
        return Compressed(len(page), RAW, blob)
    if len(blob) > threshold:
        return Compressed(len(page), RAW, page, poor=True)
    return Compressed(len(page), codec.id, blob)


class Slab:
    """One mapping cut into `nslots` slots of `size` bytes. Slots are handed out by a
    bump pointer, then from the list of returned ones: the list holds only slots that
    were freed, not one int per slot (that cost up to half the slab in Python objects)."""

    __slots__ = ("buf", "bump", "free", "keys", "lazy", "nslots", "size", "used")

    def __init__(self, size: int, nbytes: int) -> None:
        # Private anonymous memory: counted as the daemon's own (anon), not as shared.
        self.buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.size = size
        self.nslots = nbytes // size
        self.bump = 0  # slots below this have been handed out at least once
        self.free: list[int] = []  # returned slots below `bump`
        # Per slot below `bump`: the key of the entry in it (None: a free slot).
        self.keys: list[tuple[int, int] | None] = []
        self.used = 0
        # Some page may have been MADV_FREE since its slots were written: loads check
        # the slots' checksums. Never cleared (a page discarded while the pool is made
        # ordinary again still reads as zeros); slabs mapped later start clear.
        self.lazy = False

    @property
    def room(self) -> int:
        return self.nslots - self.used


class SlabArena:
    """Size-classed slots in anonymous mmaps; empty slabs are unmapped."""

    def __init__(self, max_object: int, granularity: int = 64,
                 slab_bytes: int = SLAB_BYTES, volatile: bool = True) -> None:
        self.granularity = granularity
        # See "Volatile slabs" in the module docstring. `volatile`: slots are handed to
        # the kernel as MADV_FREE when written (set while memory is short); `lazy`:
        # some pages may be lazy-free, so loads may find them discarded.
        self.can_volatile = volatile and hasattr(mmap, "MADV_FREE")
        self.volatile = False
        self.lazy = False
        self.slab_bytes = max(slab_bytes, 16 * max_object)  # 15 or more of the largest
        max_object += HEADER
        self.spares = 0  # empty slabs kept mapped (one per class at most)
        nclasses = (max_object + granularity - 1) // granularity
        # Per class: slabs with at least one free slot (dict as an ordered set).
        self._partial: list[dict[Slab, None]] = [{} for _ in range(nclasses)]
        self.all: dict[Slab, None] = {}  # every mapped slab, oldest first
        self.bytes_total = 0

    @property
    def slabs(self) -> int:
        return len(self.all)

    def cost(self, size: int) -> int:
        """Bytes the arena grows by to store an object of `size` bytes."""
        return 0 if self._partial[(size + HEADER - 1) // self.granularity] else self.slab_bytes

    def alloc(self, blob: bytes, key: tuple[int, int] | None = None) -> tuple[Slab, int]:
        """Store blob (and its checksum) in a free slot of its size class, remembering
        its owner's key; returns (slab, slot)."""
        cls = (len(blob) + HEADER - 1) // self.granularity
        partial = self._partial[cls]
        if partial:
            slab = next(reversed(partial))
            if not slab.used:
                self.spares -= 1
        else:
            slab = Slab((cls + 1) * self.granularity, self.slab_bytes)
            slab.lazy = self.volatile
            partial[slab] = None
            self.all[slab] = None
            self.bytes_total += self.slab_bytes
        if slab.free:
            slot = slab.free.pop()
            slab.keys[slot] = key
        else:
            slot = slab.bump
            slab.bump += 1
            slab.keys.append(key)
        slab.used += 1
        if slab.used == slab.nslots:
            del partial[slab]
        off = slot * slab.size
        end = off + HEADER + len(blob)
        buf = slab.buf
        buf[off:off + HEADER] = zlib.crc32(blob).to_bytes(HEADER, "little")
        buf[off + HEADER:end] = blob
        if self.volatile:
            start = off & ~_PAGE_MASK
            try:
                buf.madvise(mmap.MADV_FREE, start, ((end + _PAGE_MASK) & ~_PAGE_MASK) - start)
            except OSError:  # a kernel without MADV_FREE (< 4.5): plain anonymous memory
                self.volatile = self.can_volatile = False
        return slab, slot

    def set_volatile(self, on: bool) -> int:
        """on: mark every used page of every slab MADV_FREE (one call per slab), and
        new slots as they are written. off: stop, and make every page still resident
        ordinary memory again by writing one byte of it back (a written page is not
        discarded). Returns the pages touched or marked."""
        shift = mmap.PAGESIZE.bit_length() - 1
        n = 0
        if on:
            if not self.can_volatile:
                return 0
            self.volatile = self.lazy = True
            for slab in self.all:
                slab.lazy = True
                extent = (slab.bump * slab.size + _PAGE_MASK) & ~_PAGE_MASK
                if extent:
                    try:
                        slab.buf.madvise(mmap.MADV_FREE, 0, extent)
                    except OSError:
                        self.volatile = self.can_volatile = self.lazy = False
                        return n
                    n += extent >> shift
            return n
        self.volatile = False
        for slab in self.all:
            pages = ((slab.bump * slab.size + _PAGE_MASK) >> shift)
            if not pages:
                continue
            vec = resident_pages(slab.buf)
            buf = slab.buf
            for page in range(pages):
                if vec[page] & 1:
                    off = page << shift
                    buf[off] = buf[off]  # a write makes the page dirty: kept
                    n += 1
        self.lazy = False
        return n

    def read(self, slab: Slab, slot: int, length: int) -> bytes | None:
        """The blob stored in slot, or None if the kernel reclaimed part of it (its
        pages read back as zeros, so the checksum no longer matches). Only slabs that
        have been lazy-free pay for the checksum: the hit path of a pool that never
        met memory pressure is one slice."""
        off = slot * slab.size + HEADER
        buf = slab.buf
        blob = buf[off:off + length]
        if slab.lazy and zlib.crc32(blob) != int.from_bytes(buf[off - HEADER:off], "little"):
            return None
        return blob

    def free(self, slab: Slab, slot: int) -> None:
        partial = self._partial[(slab.size - 1) // self.granularity]
        was_full = slab.used == slab.nslots
        slab.used -= 1
        if slab.used == 0:
            if len(partial) > (0 if was_full else 1):
                # Empty, and its class has another slab with room: back to the OS.
                partial.pop(slab, None)
                del self.all[slab]
                slab.buf.close()
                self.bytes_total -= self.slab_bytes
                return
            slab.free.clear()  # empty: start again from the bump pointer
            slab.keys.clear()
            slab.bump = 0
            self.spares += 1
        else:
            slab.free.append(slot)
            slab.keys[slot] = None
        if was_full:
            partial[slab] = None

    def trim(self) -> int:
        """Unmap every empty slab (the spares kept against alloc/free churn)."""
        if not self.spares:
            return 0
        self.spares = 0
        freed = 0
        for partial in self._partial:
            for slab in [s for s in partial if s.used == 0]:
                del partial[slab]
                del self.all[slab]
                slab.buf.close()
                freed += self.slab_bytes
        self.bytes_total -= freed
        return freed

    def close(self) -> None:
        for slab in self.all:
            slab.buf.close()
        self.all.clear()
        for partial in self._partial:
            partial.clear()
        self.bytes_total = 0


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
    mem_used_max: int = 0


class CompressedPool:
    """See the module docstring."""

    def __init__(self, page_size: int, memlimit: int, threshold: int,
                 accept_threshold_percent: int = 90, volatile: bool = True,
                 store_raw: bool = True) -> None:
        self.page_size = page_size
        self.store_raw = store_raw  # keep pages that do not compress, as they are
        self.memlimit = memlimit  # as configured (the control knob)
        # Lower cap set by the memory-pressure watcher (None: no pressure). The pool
        # obeys min(memlimit, pressure_cap): it gives way to applications.
        self.pressure_cap: int | None = None
        self.threshold = threshold
        self.accept_threshold_percent = accept_threshold_percent
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
            need = ENTRY_OVERHEAD + (0 if arena._partial[(size + HEADER - 1)
                                                         // arena.granularity]
                                     else arena.slab_bytes)
            used = arena.bytes_total + ENTRY_OVERHEAD * len(self.lru)
            if self.full and used + need <= self.accept_level:
                self.full = False  # back under accept_level (after invalidations)
            if self.full or used + need > self.accept_level:
                if comp.poor:
                    # A raw page holds a quarter of what a compressed one does per
                    # byte: it takes only free room, never a compressed page's place.
                    self.c.reject_raw_full += 1
                    return False
                # Near the limit a page must prove itself first: one seen before
                # (evicted or refused recently: a ghost) may take an older page's
                # place; a new one is only remembered. A loop over more than the pool
                # then keeps a stable part of it instead of replacing all of it
                # before it comes round again (plain LRU/CLOCK: no hit at all).
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
        """The page an entry holds; None if the kernel reclaimed part of it (see
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
        pages = self.files.get(fid)
        if not pages:
            return 0
        n = 0
        for index in list(pages):
            self._drop((fid, index))
            n += 1
        self.c.invalidates += n
        return n

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

    def discard(self, fid: int, index: int) -> None:
        """Drop one page that a fresher copy replaces (not an invalidation)."""
        if (fid, index) in self.lru:
            self._drop((fid, index))

    def invalidate_from(self, fid: int, first: int) -> int:
        pages = self.files.get(fid)
        if not pages:
            return 0
        return self.invalidate_pages(fid, [i for i in pages if i >= first])

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

    def drop_reclaimed(self, slabs: list[Slab] | None = None) -> int:
        """Drop every entry the kernel discarded part of (see Volatile slabs), so that
        mem_used_total counts what the pool really holds again; returns how many.

        Looks at `slabs` (default: all; slabs unmapped since are skipped), one mincore
        call each (~3 us), and at the slots of a slab only when one of its used pages
        is gone: callers with a large pool pass the slabs in batches between awaits."""
        if not self.arena.lazy:
            return 0
        shift = mmap.PAGESIZE.bit_length() - 1
        lost: list[tuple[int, int]] = []
        for slab in list(self.arena.all) if slabs is None else slabs:
            if not slab.lazy or slab.buf.closed or not slab.used:
                continue
            size = slab.size
            vec = resident_pages(slab.buf)
            if all(b & 1 for b in vec[:((slab.bump * size - 1) >> shift) + 1]):
                continue
            for slot, key in enumerate(slab.keys):
                if key is None:
                    continue
                off = slot * size
                entry = self.lru[key]
                if not all(b & 1 for b in vec[off >> shift:
                                              ((off + HEADER + entry.size - 1) >> shift) + 1]):
                    lost.append(key)
        for key in lost:
            self._drop(key)
        self.c.reclaimed_pages += len(lost)
        if self.arena.spares:
            self.arena.trim()
        self._leave_full()
        return len(lost)

    def set_volatile(self, on: bool) -> None:
        """Memory is short (on): let the kernel take pool pages itself, at once. Over
        (off): drop what it took, then make the rest ordinary memory again, so that
        the kernel does not prefer discarding the pool to discarding page cache."""
        if not on:
            self.drop_reclaimed()
        self.arena.set_volatile(on)

    def set_memlimit(self, memlimit: int) -> None:
        """Change the limit; lowering it makes `needs_shrink` true until shrunk."""
        self.memlimit = memlimit
        if self.mem_used_total > self.limit:
            self.full = True

    def set_pressure_cap(self, cap: int | None) -> None:
        """Cap the pool below memlimit while the system is short of memory."""
        self.pressure_cap = cap
        if self.mem_used_total > self.limit:
            self.full = True

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

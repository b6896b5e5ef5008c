"""The slab allocator of the compressed pool: size-classed slots in anonymous mmaps.

The zsmalloc idea: compressed pages live in slabs (private anonymous mappings) cut into
slots of one size class each (64-byte steps); a slab whose last object goes is
unmapped (one empty spare per class is kept against churn), so freed pool memory
returns to the operating system instead of fragmenting the malloc heap. Slabs are
`slab_size` bytes: 64 KiB to 256 KiB by memlimit, and at least 16 of the largest
object. Compaction (`compact`) moves the objects of a class's emptiest slabs into the
free slots of its fuller ones and unmaps the emptied slabs: after churn (rewrites,
evictions) the holes otherwise stay mapped, counted in the limit, holding nothing.

Volatile slabs: every slot is written with a CRC-32 of its bytes (`HEADER`). While
memory is short (`set_volatile(True)`, called by the pressure watcher) every used page
is marked MADV_FREE, and so is every slot written meanwhile: the data stays, but the
kernel may discard those pages whenever it needs memory (they sit on the inactive file
LRU, so this works without swap), at reclaim speed, before any OOM kill: an
application that allocates faster than the daemon can evict (usemem) takes the pool's
memory from the kernel. A discarded page reads back as zeros; the checksum catches it
at `read` (only slabs that have been lazy-free pay for it), and `discarded` finds the
slots with mincore. When the pressure is over (`set_volatile(False)`) the pages still
resident are written back one byte each, which makes them ordinary memory again:
always volatile, the pool would be discarded before the page cache it is meant to
outlive (measured: random reads in a 256 MiB budget at 0.71x of plain instead of
1.29x).

Pure core: must not import pyfuse3, trio or psutil, nor the pool. Not thread-safe: the
pool's owner (the trio thread) calls everything, with ONE exception, `mark_lazy_free`,
which the pressure watcher's OS thread may call at any time (rule 6 in
docs/design.md). Whoever changes Slab or SlabArena keeps it safe: a slab's `lazy` is
set before its madvise and never cleared while it lives, and loads of a lazy slab
check checksums.
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Callable, Iterable

from . import _libc

# The default slab of an arena made directly; pools size theirs by memlimit (slab_size).
SLAB_BYTES = 256 * 1024
HEADER = 4  # per slot: CRC-32 of the compressed bytes, little-endian
_PAGE_MASK = mmap.PAGESIZE - 1


def resident_pages(buf: mmap.mmap) -> bytes:
    """mincore(2) of a mapping: one byte per page, bit 0 set if the page is in memory
    (for a lazy-free page: not yet discarded by the kernel)."""
    return _libc.mincore(buf)


def slab_size(memlimit: int, max_object: int) -> int:
    """About memlimit/256, a power of two from 64 KiB to 256 KiB, at least 16 objects.

    Small slabs waste less in partly filled size classes (32 classes x one partial slab:
    with 1 MiB slabs, 23 MiB of pages took 53 MiB in a 1 GiB pool; with 256 KiB, 37);
    256 KiB keeps a 10 GiB pool at 40,960 mappings, below vm.max_map_count (65,530)."""
    size = 64 * 1024
    while size < 1 << 18 and size * 256 < memlimit:
        size *= 2
    return max(size, 16 * max_object)


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
        # Per class: free slots in its mapped slabs (spares included), for `reclaimable`.
        self._free_slots = [0] * nclasses
        self.frees = 0  # objects freed since the arena was made (compaction is due)
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
            self._free_slots[cls] += slab.nslots
        slot = self._take(slab, cls, key)
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

    def _take(self, slab: Slab, cls: int, key: tuple[int, int] | None) -> int:
        """Hand out a free slot of `slab` (in class `cls`) to `key`."""
        if slab.free:
            slot = slab.free.pop()
            slab.keys[slot] = key
        else:
            slot = slab.bump
            slab.bump += 1
            slab.keys.append(key)
        slab.used += 1
        self._free_slots[cls] -= 1
        if slab.used == slab.nslots:
            del self._partial[cls][slab]
        return slot

    def _unmap(self, slab: Slab, cls: int) -> None:
        self._partial[cls].pop(slab, None)
        del self.all[slab]
        slab.buf.close()
        self.bytes_total -= self.slab_bytes
        self._free_slots[cls] -= slab.nslots

    def reclaimable(self) -> int:
        """Slabs `compact` could unmap now: per class, as many as its free slots fill
        (spares included; ~20 us for 257 classes)."""
        slab_bytes, gran = self.slab_bytes, self.granularity
        return sum(free // (slab_bytes // ((cls + 1) * gran))
                   for cls, free in enumerate(self._free_slots) if free)

    def compact(self, max_moves: int, moved: Callable[[tuple[int, int], Slab, int], None]
                ) -> int:
        """Empty the emptiest slabs of every class whose other slabs have room for
        their objects, moving each object (slot bytes and checksum as they are) and
        telling the owner `moved(key, slab, slot)`; emptied slabs are unmapped. At most
        about `max_moves` objects move (one slab is always finished). Returns the bytes
        unmapped. Not while volatile (a moved slot would have to be made lazy-free
        again); a lazy source makes its destinations lazy, so a page the kernel
        discarded before the move still fails its checksum after it (the flag is read
        after the copy: mark_lazy_free sets it before its madvise)."""
        if self.volatile:
            return 0
        freed = moves = 0
        for cls, partial in enumerate(self._partial):
            if len(partial) < 2:
                continue
            nslots = next(iter(partial)).nslots
            if self._free_slots[cls] < nslots:
                continue
            order = sorted(partial, key=lambda s: s.used)  # emptiest first
            free = self._free_slots[cls]
            lo, hi = 0, len(order) - 1
            while lo < hi and free >= nslots:
                src = order[lo]
                lo += 1
                if moves and moves + src.used > max_moves:
                    return freed
                size = src.size
                sbuf = src.buf
                for sslot, key in enumerate(src.keys):
                    if key is None:
                        continue
                    while order[hi].used == nslots:
                        hi -= 1
                    dst = order[hi]
                    dslot = self._take(dst, cls, key)
                    doff, soff = dslot * size, sslot * size
                    dst.buf[doff:doff + size] = sbuf[soff:soff + size]
                    if src.lazy:
                        dst.lazy = True
                    moved(key, dst, dslot)
                    moves += 1
                self._free_slots[cls] += src.used
                if not src.used:
                    self.spares -= 1
                src.used = 0
                self._unmap(src, cls)
                free -= nslots
                freed += self.slab_bytes
        return freed

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

    def mark_lazy_free(self) -> int:
        """First aid: make every used page of every slab lazy-free (MADV_FREE) without
        setting `volatile`; returns the slabs marked. The one method safe to call from
        another thread while the owner runs (rule 6 in docs/design.md), because it only
        (1) snapshots the slab set (list() of a dict is atomic under the GIL), (2) sets
        `lazy` on the arena and on each slab *before* its madvise, so a load from then
        on checks checksums (never cleared), (3) calls madvise, which holds the GIL, so
        a slab the owner unmaps meanwhile is either still mapped or raises ValueError
        (skipped), never reused memory. Not setting `volatile` matters: a slab being
        created meanwhile would miss its `lazy` flag while its later writes were made
        lazy-free. Slabs and slots written afterwards stay ordinary memory until the
        owner calls set_volatile(True)."""
        self.lazy = True
        marked = 0
        for slab in list(self.all):
            slab.lazy = True
            extent = (slab.bump * slab.size + _PAGE_MASK) & ~_PAGE_MASK
            if not extent:
                continue
            try:
                slab.buf.madvise(mmap.MADV_FREE, 0, min(extent, len(slab.buf)))
            except (ValueError, OSError):  # unmapped meanwhile (or no MADV_FREE)
                continue
            marked += 1
        return marked

    def discarded(self, slabs: Iterable[Slab], size_of: Callable[[tuple[int, int]], int]
                  ) -> list[tuple[int, int]]:
        """The keys of the objects in `slabs` that lost a page to the kernel (see
        Volatile slabs); `size_of(key)` is the length of the object stored for key.
        One mincore call per lazy slab still mapped (~3 us); its slots are looked at
        only when one of its used pages is gone."""
        shift = mmap.PAGESIZE.bit_length() - 1
        lost: list[tuple[int, int]] = []
        for slab in slabs:
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
                if not all(b & 1 for b in vec[off >> shift:
                                              ((off + HEADER + size_of(key) - 1) >> shift) + 1]):
                    lost.append(key)
        return lost

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
        cls = (slab.size - 1) // self.granularity
        partial = self._partial[cls]
        was_full = slab.used == slab.nslots
        slab.used -= 1
        self.frees += 1
        self._free_slots[cls] += 1
        if slab.used == 0:
            if len(partial) > (0 if was_full else 1):
                # Empty, and its class has another slab with room: back to the OS.
                self._unmap(slab, cls)
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
        for cls, partial in enumerate(self._partial):
            for slab in [s for s in partial if s.used == 0]:
                self._unmap(slab, cls)
                freed += self.slab_bytes
        return freed

    def close(self) -> None:
        for slab in self.all:
            slab.buf.close()
        self.all.clear()
        for partial in self._partial:
            partial.clear()
        self._free_slots = [0] * len(self._partial)
        self.bytes_total = 0

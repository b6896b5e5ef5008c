"""Unit tests of tier 2, the compressed pool (pure core: no FUSE, no trio)."""

from __future__ import annotations

import functools
import gc
import random
import tracemalloc
from collections import Counter, OrderedDict
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from zcachefs import codecs
from zcachefs import pool as pool_module
from zcachefs import slabs as slabs_module
from zcachefs.pool import ENTRY_OVERHEAD, CompressedPool, compress_page
from zcachefs.slabs import HEADER, SlabArena

PS = 4096
LZ4 = codecs.get("lz4")
LZO = codecs.get("lzo")
NONE = codecs.get("none")
MiB = 1 << 20


@functools.lru_cache(maxsize=4096)
def page(seed: int, prefix: int = 200, length: int = PS) -> bytes:
    """`prefix` random bytes, then zeros: lz4 makes ~prefix+29 bytes of it (prefix 200:
    229 bytes, slot class 256)."""
    prefix = min(prefix, length)
    return random.Random(seed).randbytes(prefix) + bytes(length - prefix)


def noise(seed: int, length: int = PS) -> bytes:
    return random.Random(seed).randbytes(length)


def take(pool: CompressedPool, fid: int, index: int) -> bytes | None:
    """Load a page and free its copy (what an exclusive get did): for tests about
    memory coming back."""
    got = pool.load(fid, index)
    pool.invalidate_pages(fid, [index])
    return got


def peek(pool: CompressedPool, key: tuple[int, int]) -> bytes:
    """Decode a stored page without counting a load."""
    e = pool.lru[key]
    if e.slab is None:
        return bytes((e.slot,)) * e.length
    blob = pool.arena.read(e.slab, e.slot, e.size)
    assert blob is not None
    return codecs.BY_ID[e.codec].decompress(blob, e.length)


def check_pool(pool: CompressedPool) -> None:
    """Every accounting invariant of the pool docstring, recomputed from the entries."""
    arena, lru = pool.arena, pool.lru
    assert pool.mem_used_total == arena.bytes_total + ENTRY_OVERHEAD * len(lru)
    assert arena.bytes_total == arena.slabs * arena.slab_bytes
    n = 0
    for fid, pages in pool.files.items():
        assert pages, "empty per-file dict left behind"
        for i, entry in pages.items():
            assert lru[(fid, i)] is entry
        n += len(pages)
    assert n == len(lru), "a key in lru but not in files"
    zero = same = orig = compr = raw = raw_bytes = 0
    slabs: dict[int, Any] = {}
    used: Counter[int] = Counter()
    slots = set()
    for key, e in lru.items():
        slab = e.slab
        if slab is not None:
            assert slab.keys[e.slot] == key, "a slot does not name its owner"
            assert slab in arena.all
        if slab is None:
            if e.slot == 0:
                zero += 1
            else:
                same += 1
            continue
        orig += e.length
        compr += e.size
        if e.codec == pool_module.RAW:
            raw += 1
            raw_bytes += e.size
        slabs[id(slab)] = slab
        used[id(slab)] += 1
        slots.add((id(slab), e.slot))
        assert e.size + HEADER <= slab.size
    assert set(pool.raw_lru) == {k for k, e in lru.items() if e.codec == pool_module.RAW}
    assert all(pool.raw_lru[k] is lru[k] for k in pool.raw_lru)
    stored = len(lru) - zero - same
    assert len(slots) == stored, "two entries share a slot"
    assert (pool.stored_pages, pool.zero_pages, pool.same_filled_pages) == (stored, zero, same)
    assert (pool.orig_data_size, pool.compr_data_size) == (orig, compr)
    assert (pool.raw_pages, pool.raw_data_size) == (raw, raw_bytes)
    for key, slab in slabs.items():
        assert not slab.buf.closed
        assert slab.used == used[key]
        assert len(set(slab.free)) == len(slab.free)
        assert all(slot < slab.bump for slot in slab.free)
        assert slab.room == slab.nslots - slab.used == len(slab.free) + slab.nslots - slab.bump
    # Every mapped slab is either in use or on a partial list (no leak), and the empty
    # ones on those lists are the spares.
    partial = {id(s): s for cls in arena._partial for s in cls}
    assert all(s.room for s in partial.values())
    assert len(slabs.keys() | partial.keys()) == arena.slabs
    assert sum(not s.used for s in partial.values()) == arena.spares
    free: Counter[int] = Counter()
    for s in arena.all:
        free[(s.size - 1) // arena.granularity] += s.nslots - s.used
    assert [free[c] for c in range(len(arena._free_slots))] == arena._free_slots


def store_proven(pool: CompressedPool, fid: int, index: int, data: bytes,
                 codec: codecs.Codec = LZ4) -> bool:
    """Store a page the way one that is read again is: if the pool refused it as new
    (near its limit, see ghost admission), the second offer is admitted."""
    cold = pool.c.reject_cold
    return pool.store(fid, index, data, codec) or (
        pool.c.reject_cold > cold and pool.store(fid, index, data, codec))


def fill_until_refused(pool: CompressedPool, fid: int = 1, limit: int = 100_000) -> int:
    """Store distinct same-class pages (each offered twice if refused as new) until the
    pool refuses one; returns how many fit."""
    for i in range(limit):
        if not store_proven(pool, fid, i, page(i)):
            return i
    raise AssertionError("the pool never filled")


# -- store / load ------------------------------------------------------------------

@pytest.mark.parametrize("codec", [LZ4, LZO, NONE], ids=lambda c: c.name)
def test_store_load_keeps_the_copy(codec: codecs.Codec) -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    data = page(1)
    assert pool.store(1, 5, data, codec)
    assert (pool.stored_pages, pool.orig_data_size) == (1, PS)
    assert pool.compr_data_size == len(codec.compress(data))
    check_pool(pool)
    used = pool.mem_used_total
    assert not pool.lru[(1, 5)].referenced
    assert pool.load(1, 5) == data
    assert pool.lru[(1, 5)].referenced  # a hit earns a second chance at eviction
    assert pool.load(1, 5) == data  # the hit kept the compressed copy
    assert pool.load(2, 5) is None
    assert (pool.c.puts, pool.c.succ_gets, pool.c.failed_gets) == (1, 2, 1)
    assert pool.mem_used_total == used and pool.stored_pages == 1
    pool.invalidate_pages(1, [5])
    assert pool.load(1, 5) is None  # after an invalidate a get must miss
    assert pool.files == {} and not pool.lru
    check_pool(pool)


def test_newer_put_replaces_older() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, page(1, 100), LZ4)
    assert pool.store(1, 0, page(2, 500), LZO)
    assert pool.stored_pages == 1 and len(pool.lru) == 1
    assert pool.compr_data_size == len(LZO.compress(page(2, 500)))
    check_pool(pool)
    assert pool.load(1, 0) == page(2, 500)


def test_newer_same_filled_put_replaces_compressed_and_back() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, page(1), LZ4)
    assert pool.store(1, 0, bytes(PS), LZ4)
    assert (pool.stored_pages, pool.zero_pages) == (0, 1)
    assert pool.store(1, 0, page(3), LZ4)
    assert (pool.stored_pages, pool.zero_pages) == (1, 0)
    check_pool(pool)
    assert pool.load(1, 0) == page(3)


def test_refused_newer_put_drops_the_older_copy() -> None:
    """A newer put always wins: if it is not kept, the older one must not come back."""
    pool = CompressedPool(PS, 8 * MiB, PS // 2, store_raw=False)
    assert pool.store(1, 0, page(1), LZ4)
    assert not pool.store(1, 0, noise(2), LZ4)  # compresses poorly, raw refused
    assert pool.load(1, 0) is None
    assert pool.store(1, 1, page(3), LZ4)
    pool.set_memlimit(0)  # full: the next compressed store is refused
    assert not pool.store(1, 1, page(4), LZ4)
    assert pool.load(1, 1) is None
    check_pool(pool)


def test_poor_pages_are_counted_not_stored_without_store_raw() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2, store_raw=False)
    assert not pool.store(1, 0, noise(1), LZ4)
    assert not pool.store(1, 1, page(2, 2100), LZ4)  # 2133 bytes > 2048
    assert pool.store(1, 2, page(3, 1800), LZ4)  # 1834 bytes
    assert pool.c.reject_compress_poor == 2 and pool.c.puts == 3
    assert pool.stored_pages == 1 and set(pool.lru) == {(1, 2)}
    assert pool.c.pool_limit_hit == 0
    check_pool(pool)


def test_poor_pages_are_stored_raw_and_served_byte_exact() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, noise(1), LZ4)
    assert pool.store(1, 1, page(2, 2100), LZ4)  # 2133 bytes > 2048: kept as it is
    assert pool.store(1, 2, page(3, 1800), LZ4)  # 1834 bytes: compressed
    assert pool.store(1, 3, noise(4, 3000), LZ4)  # a short (last) page, raw
    assert pool.c.reject_compress_poor == 3 and pool.c.puts == 4
    assert (pool.stored_pages, pool.raw_pages) == (4, 3)
    assert pool.raw_data_size == 2 * PS + 3000
    assert pool.lru[(1, 0)].codec == pool_module.RAW
    check_pool(pool)
    assert pool.load(1, 0) == noise(1)
    assert pool.load(1, 1) == page(2, 2100)
    assert pool.load(1, 2) == page(3, 1800)
    assert pool.load(1, 3) == noise(4, 3000)
    pool.invalidate_pages(1, [0, 3])
    assert (pool.raw_pages, pool.raw_data_size) == (1, PS)
    check_pool(pool)


@pytest.mark.parametrize("loop", [2, 4])
def test_a_loop_over_more_than_the_pool_still_hits(loop: int) -> None:
    """Plain LRU/CLOCK: 0 hits on a loop over more pages than the pool holds. With
    ghost admission the pool keeps a stable part of the loop."""
    pool = CompressedPool(PS, 2 * MiB, PS // 2)
    comp = compress_page(LZ4, page(1), PS // 2)
    n = 0
    while pool.admit(1, n, comp):
        n += 1
    pool.clear()
    total = loop * n
    for _ in range(3):
        hits = 0
        for i in range(total):
            if pool.load(1, i) is not None:
                hits += 1
            else:
                pool.admit(1, i, comp)
            while pool.needs_shrink:
                pool.shrink()
    assert hits / total >= 0.6 / loop  # the share of the loop the pool can hold, nearly
    assert pool.c.reject_cold > 0
    check_pool(pool)


def test_a_page_seen_before_is_admitted_near_the_limit() -> None:
    pool = CompressedPool(PS, 1 * MiB, PS // 2, accept_threshold_percent=50)
    comp = compress_page(LZ4, page(1), PS // 2)
    i = 0
    while pool.mem_used_total + ENTRY_OVERHEAD < pool.accept_level:
        assert pool.admit(1, i, comp)
        i += 1
    assert not pool.admit(2, 0, comp)  # new, above accept_level: remembered, refused
    assert pool.c.reject_cold == 1
    assert pool.admit(2, 0, comp)  # seen before: admitted (there is room below limit)
    check_pool(pool)


def test_raw_pages_take_only_free_room_and_leave_first() -> None:
    pool = CompressedPool(PS, 1 * MiB, PS // 2, accept_threshold_percent=80)
    i = 0
    while pool.store(1, i, noise(i), LZ4):  # raw, while there is free room
        i += 1
    raw = pool.raw_pages
    assert raw == i > 10
    # Refused for want of free room, below the limit: nothing was evicted for it.
    assert pool.c.reject_raw_full == 1 and pool.c.evicted_pages == 0 and not pool.full
    assert pool.mem_used_total <= pool.accept_level
    n = 0  # compressed pages seen twice (proven) fill the rest, to the limit
    while pool.store(2, n, page(n), LZ4) or pool.store(2, n, page(n), LZ4):
        n += 1
    assert n > 0 and pool.full
    while pool.needs_shrink:
        pool.shrink()
    # The shrink took raw pages only (they free the most memory per page lost).
    assert pool.raw_pages < raw
    assert pool.c.evicted_pages == raw - pool.raw_pages
    assert sum(1 for k in pool.lru if k[0] == 2) == n
    check_pool(pool)


def test_a_known_poor_page_is_not_compressed_again() -> None:
    comp = compress_page(LZ4, noise(1), PS // 2, known_poor=True)
    assert comp.poor and not comp.tried and comp.blob == noise(1)
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.admit(1, 0, comp)
    assert (pool.c.reject_compress_poor, pool.c.raw_skips, pool.raw_pages) == (0, 1, 1)
    assert pool.load(1, 0) == noise(1)
    # A known-poor page that is same-filled now is still recognised as such.
    assert compress_page(LZ4, bytes(PS), PS // 2, known_poor=True).codec == 0


def test_threshold_boundary() -> None:
    data = page(1, 500)
    size = len(LZ4.compress(data))
    assert not compress_page(LZ4, data, size).poor
    assert compress_page(LZ4, data, size - 1).poor
    pool = CompressedPool(PS, 8 * MiB, size, store_raw=False)
    assert pool.store(1, 0, data, LZ4)
    pool.threshold = size - 1
    assert not pool.store(1, 1, data, LZ4)


def test_none_codec_is_never_poor() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, noise(1), NONE)
    assert pool.compr_data_size == PS
    assert pool.load(1, 0) == noise(1)


@pytest.mark.parametrize(("fill", "length"), [(0, PS), (0, 100), (7, PS), (255, 1)])
def test_same_filled_pages_cost_no_data_memory(fill: int, length: int) -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    data = bytes((fill,)) * length
    assert pool.store(3, 9, data, LZ4)
    assert pool.arena.bytes_total == 0 and pool.arena.slabs == 0
    assert pool.mem_used_total == ENTRY_OVERHEAD
    assert (pool.zero_pages, pool.same_filled_pages) == ((1, 0) if fill == 0 else (0, 1))
    assert (pool.stored_pages, pool.orig_data_size, pool.compr_data_size) == (0, 0, 0)
    check_pool(pool)
    assert take(pool, 3, 9) == data
    assert (pool.zero_pages, pool.same_filled_pages, pool.mem_used_total) == (0, 0, 0)


def test_same_filled_pages_accepted_when_full() -> None:
    pool = CompressedPool(PS, 1 * MiB, PS // 2)
    n = fill_until_refused(pool)
    assert pool.full and pool.c.pool_limit_hit == 1
    assert not pool.store(2, 0, page(10**6), LZ4)
    assert pool.store(2, 1, bytes(PS), LZ4)
    assert pool.store(2, 2, b"\x01" * PS, LZ4)
    assert (pool.zero_pages, pool.same_filled_pages, pool.stored_pages) == (1, 1, n)
    check_pool(pool)


# -- eviction: LRU with second chance, hysteresis ----------------------------------

def lru_pool(n: int, referenced: Collection[int] = (), again: Collection[int] = ()
             ) -> CompressedPool:
    """n pages stored in order (then `again` re-stored), with a limit of 0: everything
    must go, so shrink's order is all that is left to see."""
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    for i in range(n):
        assert pool.store(1, i, page(i), LZ4, referenced=i in referenced)
    for i in again:
        assert pool.store(1, i, page(100 + i), LZ4)
    pool.set_memlimit(0)
    return pool


def test_shrink_evicts_least_recently_stored_first() -> None:
    pool = lru_pool(6, again=[1])  # re-stored: now the most recent
    assert pool.shrink(2) == 2
    assert list(pool.lru) == [(1, 3), (1, 4), (1, 5), (1, 1)]
    assert pool.shrink(3) == 3
    assert list(pool.lru) == [(1, 1)]
    assert pool.c.evicted_pages == 5
    check_pool(pool)


def test_referenced_entries_survive_one_pass() -> None:
    pool = lru_pool(5, referenced={0, 2})
    assert pool.shrink(3) == 3  # scans 0 (spared), 1, 2 (spared), 3, 4
    assert list(pool.lru) == [(1, 0), (1, 2)]
    assert not any(e.referenced for e in pool.lru.values())  # the chance is used up
    assert pool.shrink(1) == 1
    assert list(pool.lru) == [(1, 2)]
    check_pool(pool)


def test_shrink_works_in_bounded_batches() -> None:
    pool = lru_pool(50, referenced=set(range(50)))
    assert pool.shrink(10) == 0  # 2 * 10 scanned, all spared: never a long walk
    assert len(pool.lru) == 50
    assert sum(e.referenced for e in pool.lru.values()) == 30
    total = 0
    for _ in range(20):
        n = pool.shrink(10)
        assert n <= 10
        total += n
    assert total == 50 and not pool.lru


def test_shrink_stops_at_target() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    for i in range(10):
        pool.store(1, i, bytes(PS), LZ4)  # zero pages: ENTRY_OVERHEAD each
    pool.set_memlimit(4 * ENTRY_OVERHEAD)
    assert pool.full and pool.needs_shrink
    pool.shrink()
    # Full: shrink to accept_threshold_percent (90%) of the limit, oldest first.
    assert list(pool.lru) == [(1, 7), (1, 8), (1, 9)]
    assert not pool.needs_shrink and not pool.full
    assert pool.shrink() == 0


def test_hysteresis() -> None:
    """Once full, stores are refused until shrink gets under accept_threshold_percent."""
    pool = CompressedPool(PS, 1 * MiB, PS // 2, accept_threshold_percent=50)
    n = fill_until_refused(pool)
    assert n > 1000 and pool.full and pool.c.pool_limit_hit == 1
    assert pool.mem_used_total <= pool.memlimit
    assert pool.needs_shrink
    # Room for a page again, but still above 50%: refused (each refusal counts, zswap).
    assert pool.invalidate_pages(1, list(range(10))) == 10
    assert pool.mem_used_total + 256 + ENTRY_OVERHEAD < pool.memlimit
    assert pool.mem_used_total > pool.accept_level
    assert not store_proven(pool, 2, 0, page(10**6))  # even a page seen before
    assert pool.c.pool_limit_hit == 2
    while pool.needs_shrink:
        assert pool.shrink() > 0
    assert pool.mem_used_total <= pool.accept_level and not pool.full
    # The survivors are exactly the most recently stored pages.
    survivors = sorted(i for _, i in pool.lru)
    assert survivors == list(range(n - len(survivors), n))
    assert pool.store(2, 0, page(10**6), LZ4)
    check_pool(pool)


def test_set_memlimit_lower_then_shrink_gets_under() -> None:
    pool = CompressedPool(PS, 4 * MiB, PS // 2)
    for i in range(3000):
        assert pool.store(1 + i % 7, i, page(i), LZ4)
    assert not pool.needs_shrink
    pool.set_memlimit(1 * MiB)
    assert pool.full and pool.needs_shrink
    for _ in range(100):
        if not pool.needs_shrink:
            break
        pool.shrink()
    assert not pool.needs_shrink
    assert pool.mem_used_total <= pool.accept_level < pool.memlimit
    assert pool.c.evicted_pages == 3000 - len(pool.lru) > 0
    check_pool(pool)


def test_raising_memlimit_does_not_mark_full() -> None:
    pool = CompressedPool(PS, 1 * MiB, PS // 2)
    pool.store(1, 0, page(0), LZ4)
    pool.set_memlimit(2 * MiB)
    assert not pool.full and not pool.needs_shrink


@pytest.mark.parametrize(("setter", "value"), [
    ("set_memlimit", -5), ("set_memlimit", 1.5), ("set_memlimit", None),
    ("set_pressure_cap", -1), ("set_pressure_cap", "1M"),
    ("set_threshold", 0), ("set_threshold", PS + 1), ("set_threshold", -1),
    ("set_accept_threshold_percent", 0), ("set_accept_threshold_percent", 101),
])
def test_setters_refuse_bad_values_and_change_nothing(setter: str, value: Any) -> None:
    pool = CompressedPool(PS, 1 * MiB, PS // 2)
    for i in range(3):
        pool.store(1, i, page(i), LZ4)
    pool.set_pressure_cap(4 * MiB)
    before = (pool.memlimit, pool.pressure_cap, pool.threshold,
              pool.accept_threshold_percent, pool.full, pool.limit, pool.mem_used_total)
    name = setter.removeprefix("set_").replace("_", " ")
    with pytest.raises(ValueError, match=f"({name}|{setter[4:]}) must be an integer"):
        getattr(pool, setter)(value)
    assert (pool.memlimit, pool.pressure_cap, pool.threshold, pool.accept_threshold_percent,
            pool.full, pool.limit, pool.mem_used_total) == before
    check_pool(pool)


def test_setters_take_the_edges_of_their_ranges() -> None:
    """0 is a valid memlimit (`-o memlimit=0`) and a valid cap (the pressure watcher caps
    a small pool at 0); None lifts the cap."""
    pool = CompressedPool(PS, 1 * MiB, PS // 2)
    pool.store(1, 0, page(0), LZ4)
    pool.set_pressure_cap(0)
    assert pool.limit == 0 and pool.full
    pool.set_pressure_cap(None)
    assert pool.limit == pool.memlimit
    pool.set_memlimit(0)
    assert pool.memlimit == 0 and pool.needs_shrink
    pool.set_threshold(PS)
    pool.set_threshold(1)
    pool.set_accept_threshold_percent(100)
    pool.set_accept_threshold_percent(1)
    assert (pool.threshold, pool.accept_threshold_percent) == (1, 1)


def test_mem_used_max_tracks_the_peak() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    for i in range(5):
        pool.store(1, i, page(i), LZ4)
    peak = pool.mem_used_total
    for i in range(5):
        take(pool, 1, i)
    assert pool.c.mem_used_max == peak > pool.mem_used_total


def test_store_never_passes_memlimit() -> None:
    """A store that needs a new slab is charged the whole slab, not one slot."""
    pool = CompressedPool(PS, 1 * MiB, PS // 2)
    slab = pool.arena.slab_bytes
    pool.set_memlimit(3 * slab + 3 * ENTRY_OVERHEAD + 100)
    # One page in each of eight size classes: each class maps its own slab.
    results = []
    for i, prefix in enumerate((100, 200, 500, 700, 1000, 1300, 1600, 1800)):
        results.append(store_proven(pool, 1, i, page(i, prefix)))
        assert pool.mem_used_total <= pool.memlimit, (i, pool.mem_used_total)
    assert results == [True] * 3 + [False] * 5
    assert pool.full and pool.c.pool_limit_hit == 5  # every refused store counts


def test_slab_size_follows_memlimit() -> None:
    sizes = [CompressedPool(PS, m, PS // 2).arena.slab_bytes
             for m in (0, 1 * MiB, 64 * MiB, 1 << 30, 1 << 40)]
    assert sizes == sorted(sizes) and sizes[0] >= 16 * PS
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two
    assert sizes[-1] <= 1 * MiB


def three_slabs(memlimit: int) -> CompressedPool:
    """One page in each of three size classes (three slabs), then `memlimit`."""
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    for i, prefix in enumerate((100, 1000, 1800)):
        assert pool.store(1, i, page(i, prefix), LZ4)
    assert pool.arena.slabs == 3
    pool.set_memlimit(memlimit)
    return pool


def test_shrink_converges_and_the_pool_accepts_again() -> None:
    """Evicting the last page of a slab unmaps it (no spare is kept while the pool is
    over its target), so shrinking ends under the target and stores resume."""
    slab = CompressedPool(PS, 8 * MiB, PS // 2).arena.slab_bytes
    pool = three_slabs(int(1.5 * slab))
    assert pool.full and pool.needs_shrink
    for _ in range(10):
        pool.shrink()
    assert not pool.needs_shrink and not pool.full
    assert pool.mem_used_total <= pool.accept_level
    # Eviction weighs bytes: the largest pages went first, the smallest is left.
    assert list(pool.lru) == [(1, 0)] and pool.arena.slabs == 1
    assert pool.store(1, 3, page(3, 100), LZ4)  # a free slot in the mapped slab
    check_pool(pool)


def test_emptied_pool_keeps_nothing_mapped() -> None:
    slab = CompressedPool(PS, 8 * MiB, PS // 2).arena.slab_bytes
    pool = three_slabs(slab // 2)  # not even one slab fits
    for _ in range(10):
        pool.shrink()
    assert not pool.lru
    assert not pool.needs_shrink, (
        f"needs_shrink with an empty pool: {pool.arena.slabs} spare slabs, "
        f"{pool.mem_used_total} > {pool.accept_level} bytes; shrink() -> {pool.shrink()}")
    assert pool.mem_used_total == 0 and pool.arena.slabs == 0
    pool.set_memlimit(2 * slab)
    assert pool.store(1, 9, page(9), LZ4)


def spare_then_pages(spare_first: bool) -> CompressedPool:
    """Ten pages in one slab plus an empty (or one-page) slab of another size class,
    over a limit that one slab of pages fits under."""
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(9, 0, page(0, 1000), LZ4)
    if spare_first:
        assert take(pool, 9, 0) == page(0, 1000)  # its slab is now the class's spare
    for i in range(10):
        assert pool.store(1, i, page(i), LZ4)
    assert pool.arena.slabs == 2
    pool.set_memlimit((pool.arena.slab_bytes + 11 * ENTRY_OVERHEAD) * 100 // 90 + 64)
    assert pool.needs_shrink
    assert pool.arena.slab_bytes + 11 * ENTRY_OVERHEAD <= pool.accept_level
    return pool


@pytest.mark.parametrize("spare_first", [True, False], ids=["spare", "emptied-by-shrink"])
def test_shrink_frees_empty_slabs_before_evicting_more(spare_first: bool) -> None:
    """Empty slabs hold no page: they go before any page is evicted for the limit."""
    pool = spare_then_pages(spare_first)
    n = pool.shrink()
    assert not pool.needs_shrink
    assert n == (0 if spare_first else 1), f"evicted {n} pages, {len(pool.lru)} left"
    assert len(pool.lru) == 10


# -- invalidation ------------------------------------------------------------------

class NoIterOrderedDict(OrderedDict[Any, Any]):
    def __iter__(self) -> Any:
        raise AssertionError("walked the whole LRU")

    def items(self) -> Any:
        raise AssertionError("walked the whole LRU")

    def keys(self) -> Any:
        raise AssertionError("walked the whole LRU")

    def values(self) -> Any:
        raise AssertionError("walked the whole LRU")


class NoIterDict(dict[Any, Any]):
    def __iter__(self) -> Any:
        raise AssertionError("walked a mapping it should only index")

    def items(self) -> Any:
        raise AssertionError("walked a mapping it should only index")

    def keys(self) -> Any:
        raise AssertionError("walked a mapping it should only index")

    def values(self) -> Any:
        raise AssertionError("walked a mapping it should only index")


def three_files(pages: int = 40) -> CompressedPool:
    pool = CompressedPool(PS, 16 * MiB, PS // 2)
    for i in range(pages):
        for fid in (1, 2, 3):
            data = bytes(PS) if i % 5 == 0 else page(fid * 1000 + i)
            assert pool.store(fid, i, data, LZ4)
    return pool


def guard(pool: CompressedPool, target: int) -> None:
    """Make any walk of the LRU, of the file table or of another file's pages fail."""
    for fid in list(pool.files):
        if fid != target:
            pool.files[fid] = NoIterDict(pool.files[fid])
    pool.files = NoIterDict(pool.files)
    pool.lru = NoIterOrderedDict(pool.lru)


def unguard(pool: CompressedPool) -> None:
    pool.lru = OrderedDict(dict.items(pool.lru))
    pool.files = {k: dict(dict.items(v)) for k, v in dict.items(pool.files)}


def test_invalidate_file_touches_only_that_file() -> None:
    pool = three_files()
    guard(pool, 2)
    assert pool.invalidate_file(2) == 40
    assert pool.invalidate_file(2) == 0
    assert pool.invalidate_file(99) == 0
    unguard(pool)
    assert {fid for fid, _ in pool.lru} == {1, 3} and len(pool.lru) == 80
    assert pool.c.invalidates == 40
    check_pool(pool)


def test_invalidate_pages_touches_only_that_file() -> None:
    pool = three_files()
    guard(pool, 2)
    assert pool.invalidate_pages(2, [0, 1, 2, 39, 40, 1000]) == 4
    assert pool.invalidate_pages(7, [0]) == 0
    unguard(pool)
    assert sorted(pool.files[2]) == list(range(3, 39))
    assert len(pool.files[1]) == len(pool.files[3]) == 40
    assert pool.c.invalidates == 4
    check_pool(pool)


def test_invalidate_from_touches_only_that_file() -> None:
    pool = three_files()
    guard(pool, 3)
    assert pool.invalidate_from(3, 25) == 15
    assert pool.invalidate_from(3, 0) == 25
    unguard(pool)
    assert 3 not in pool.files
    assert pool.load(1, 39) == page(1039)
    check_pool(pool)


def test_clear_drops_everything_and_unmaps_every_slab() -> None:
    pool = three_files()
    pool.set_memlimit(0)
    assert pool.clear() == 120
    assert not pool.lru and not pool.files and not pool.full
    assert pool.c.invalidates == 0  # drop_caches is not an invalidation
    assert pool.arena.slabs == 0 and pool.mem_used_total == 0
    assert (pool.stored_pages, pool.zero_pages, pool.orig_data_size) == (0, 0, 0)
    check_pool(pool)


# -- failures ---------------------------------------------------------------------

def test_a_slab_that_cannot_be_mapped_refuses_the_store(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, page(0), LZ4)

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(slabs_module.mmap, "mmap", no_memory)
    assert not pool.store(1, 1, page(1, 1000), LZ4)  # needs a new slab
    assert pool.store(1, 2, page(2), LZ4)  # fits in the mapped slab
    check_pool(pool)


def test_an_empty_page_does_not_break_the_pool() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    pool.store(1, 0, b"", LZ4)  # refusing it or storing it are both fine
    check_pool(pool)


# -- damaged pages ---------------------------------------------------------------------

def damage(pool: CompressedPool, key: tuple[int, int], blob: bytes) -> None:
    e = pool.lru[key]
    assert e.slab is not None and len(blob) == e.size
    off = e.slot * e.slab.size
    e.slab.buf[off:off + e.size] = blob


@pytest.mark.parametrize("codec", [LZ4, LZO], ids=lambda c: c.name)
def test_a_page_that_fails_to_decompress_is_a_miss(codec: codecs.Codec) -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, page(0), codec)
    assert pool.store(1, 1, page(1), codec)
    damage(pool, (1, 0), b"\xff" * pool.lru[(1, 0)].size)
    assert pool.load(1, 0) is None
    assert (1, 0) not in pool.lru and pool.c.failed_gets == 1 and pool.c.succ_gets == 0
    assert pool.load(1, 1) == page(1)
    check_pool(pool)


def test_a_damaged_page_is_never_served_short() -> None:
    """A damaged blob that still decodes, to fewer bytes: a miss, not an early EOF."""
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    assert pool.store(1, 0, page(0), LZ4)
    size = pool.lru[(1, 0)].size  # 229
    # A valid LZ4 block of the same length: literals only, (size - 2) of them.
    n = size - 2
    damage(pool, (1, 0), bytes((0xF0, n - 15)) + b"x" * n)
    got = pool.load(1, 0)
    assert got is None or len(got) == PS, f"served a {len(got)}-byte page"


# -- codecs switched at run time -----------------------------------------------------

def test_pages_keep_their_codec_after_a_switch() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    for i, codec in enumerate([LZO, LZ4, NONE, LZO, LZ4]):
        assert pool.store(1, i, page(i, 300), codec)
        assert pool.lru[(1, i)].codec == codec.id
    for i in range(5):
        assert pool.load(1, i) == page(i, 300)


def test_stored_blob_is_the_codec_output() -> None:
    pool = CompressedPool(PS, 8 * MiB, PS // 2)
    pool.store(1, 0, page(1), LZO)
    e = pool.lru[(1, 0)]
    assert e.slab is not None
    assert pool.arena.read(e.slab, e.slot, e.size) == LZO.compress(page(1))


# -- the slab arena ----------------------------------------------------------------

def test_arena_reuses_freed_slots() -> None:
    arena = SlabArena(PS)
    a = arena.alloc(b"a" * 100)
    b = arena.alloc(b"b" * 100)
    assert a[0] is b[0] and a[1] != b[1]
    arena.free(*a)
    c = arena.alloc(b"c" * 120)
    assert c == a
    assert arena.read(*c, 120) == b"c" * 120
    assert arena.read(*b, 100) == b"b" * 100
    assert arena.slabs == 1 and arena.bytes_total == arena.slab_bytes


def test_arena_cost_is_a_slab_or_nothing() -> None:
    arena = SlabArena(PS)
    assert arena.cost(100) == arena.slab_bytes  # a new slab must be mapped
    handle = arena.alloc(b"a" * 100)
    # A free slot in a mapped slab (a slot holds the object and its 4-byte checksum).
    assert arena.cost(100) == arena.cost(128 - HEADER) == 0
    assert arena.cost(129 - HEADER) == arena.slab_bytes  # another size class
    arena.free(*handle)
    assert arena.cost(100) == 0  # the spare
    assert arena.trim() == arena.slab_bytes
    assert arena.cost(100) == arena.slab_bytes and arena.bytes_total == arena.slabs == 0


def _lazyfree_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("LazyFree:"):
                return int(line.split()[1])
    raise AssertionError("no LazyFree in smaps_rollup")


def test_arena_hands_its_pages_to_the_kernel_only_while_volatile() -> None:
    """Volatile slabs: set_volatile(True) marks the used pages MADV_FREE (smaps
    LazyFree), and slots written meanwhile too; set_volatile(False) makes them ordinary
    memory again; the data never changes."""
    arena = SlabArena(PS, slab_bytes=MiB)
    assert arena.can_volatile and not arena.volatile
    before = _lazyfree_kib()
    handles = [arena.alloc(noise(i, 2000)) for i in range(128)]  # 128 x 2 KiB slots
    assert _lazyfree_kib() - before < 64  # ordinary memory by default
    assert arena.set_volatile(True) >= 64
    assert _lazyfree_kib() - before >= 200
    handles += [arena.alloc(noise(i, 2000)) for i in range(128, 256)]
    assert _lazyfree_kib() - before >= 400
    assert arena.set_volatile(False) >= 100
    assert _lazyfree_kib() - before < 64
    assert not arena.lazy
    assert all(arena.read(*h, 2000) == noise(i, 2000) for i, h in enumerate(handles))
    arena.close()


def test_a_page_the_kernel_reclaimed_is_a_miss_never_wrong_data() -> None:
    """What the kernel does to a lazy-free page under pressure (it reads back as zeros),
    done here with MADV_DONTNEED: every entry on it fails its checksum at load, is
    dropped and counted; entries on other pages still load."""
    import mmap

    pool = CompressedPool(PS, 64 * MiB, PS // 2)
    for i in range(64):  # 64 x ~1 KiB blobs: several per page, some across pages
        assert pool.store(1, i, page(i, 1000), LZ4)
    slab = pool.lru[(1, 0)].slab
    assert slab is not None
    pool.set_volatile(True)  # only lazy-free pages can be discarded by the kernel
    slab.buf.madvise(mmap.MADV_DONTNEED, 0, PS)  # the slab's first page is gone
    lost = [i for i in range(64) if pool.lru[(1, i)].slab is slab
            and pool.lru[(1, i)].slot * slab.size < PS]
    assert lost
    for i in range(64):
        got = pool.load(1, i)
        assert got == (None if i in lost else page(i, 1000)), i
    assert pool.c.reclaimed_pages == len(lost)
    assert pool.c.failed_gets == len(lost)
    check_pool(pool)
    assert pool.stored_pages == 64 - len(lost)  # the loads kept the others


def test_arena_size_classes() -> None:
    arena = SlabArena(PS)
    s64, _ = arena.alloc(b"x" * (64 - HEADER))
    s65, _ = arena.alloc(b"x" * (65 - HEADER))
    s4k, _ = arena.alloc(b"x" * PS)
    assert (s64.size, s65.size, s4k.size) == (64, 128, PS + 64)
    assert arena.slabs == 3


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_arena_unmaps_empty_slabs_but_one_spare(order: str) -> None:
    arena = SlabArena(PS)
    per_slab = arena.slab_bytes // 128
    tags = [i.to_bytes(4, "big") * 25 for i in range(3 * per_slab + 1)]
    handles = [(arena.alloc(tag), tag) for tag in tags]
    other = arena.alloc(b"y" * 1000)  # another class keeps its own slab
    assert arena.slabs == 5 and arena.bytes_total == 5 * arena.slab_bytes
    slabs = {id(s): s for (s, _), _ in handles}
    assert len(slabs) == 4
    if order == "reverse":
        handles.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(handles)
    last = arena.bytes_total
    for (slab, slot), tag in handles:
        assert arena.read(slab, slot, 100) == tag
        arena.free(slab, slot)
        assert arena.bytes_total <= last
        last = arena.bytes_total
    assert arena.bytes_total == 2 * arena.slab_bytes  # one spare + the other class
    assert arena.slabs == 2
    assert sum(s.buf.closed for s in slabs.values()) == 3
    spare = next(s for s in slabs.values() if not s.buf.closed)
    assert spare.used == 0
    again = arena.alloc(b"z" * 100)  # the spare is reused, nothing is mapped
    assert again[0] is spare and arena.slabs == 2
    assert arena.read(*other, 1000) == b"y" * 1000


def test_loads_give_memory_back() -> None:
    pool = CompressedPool(PS, 16 * MiB, PS // 2)
    for i in range(3000):
        pool.store(1, i, page(i), LZ4)
    per_slab = pool.arena.slab_bytes // 256  # slots of 256 bytes
    assert pool.arena.slabs == -(-3000 // per_slab) > 1
    for i in range(3000):
        assert take(pool, 1, i) == page(i)
    assert pool.arena.slabs == 1  # the spare
    assert pool.mem_used_total == pool.arena.slab_bytes
    check_pool(pool)


# -- ENTRY_OVERHEAD honesty --------------------------------------------------------

def test_entry_overhead_matches_tracemalloc() -> None:
    """The Python memory of the index per stored page (entry, key, per-file dict slot,
    OrderedDict node, slot and index ints) is ENTRY_OVERHEAD within 20%."""
    comp = compress_page(LZ4, page(1), PS // 2)
    n, per_file = 20_000, 256
    pool = CompressedPool(PS, 1 << 40, PS // 2)
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            pool.admit(1000 + i // per_file, i % per_file, comp)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if started:
            tracemalloc.stop()
    measured = (after - before) / n
    assert len(pool.lru) == n
    assert 0.8 * measured <= ENTRY_OVERHEAD <= 1.2 * measured, measured


# -- the model: every operation, every invariant ------------------------------------

KINDS = ("zero", "same", "text", "noise")


def make(kind: str, seed: int, prefix: int, length: int) -> bytes:
    if kind == "zero":
        return bytes(length)
    if kind == "same":
        return bytes((1 + seed % 255,)) * length
    if kind == "noise":
        return noise(seed, length)
    return page(seed, prefix, length)


pages = st.builds(make, st.sampled_from(KINDS), st.integers(0, 50), st.integers(1, 2300),
                  st.one_of(st.just(PS), st.integers(1, PS)))
keys = st.tuples(st.integers(1, 3), st.integers(0, 7))
codec_names = st.sampled_from(["lz4", "lzo", "none"])


@functools.lru_cache(maxsize=1024)
def compressed_len(codec: str, data: bytes) -> int:
    return len(codecs.get(codec).compress(data))


def test_a_referenced_raw_page_keeps_its_second_chance() -> None:
    """Raw pages are evicted first, but one that was just hit is looked at once per
    shrink and spared: the call evicts cold compressed pages instead (the model test
    found the old code clearing its bit and evicting it in the same call)."""
    pool = CompressedPool(PS, 1 << 20, PS // 2, 90)
    try:
        assert pool.store(1, 0, page(0, 2015), LZ4)
        assert pool.lru[(1, 0)].codec == pool_module.RAW
        assert pool.load(1, 0) is not None  # hit: referenced
        comp = compress_page(LZ4, page(100, 100), pool.threshold)
        assert all(pool.admit(1, i, comp) for i in range(100, 326))
        pool.set_memlimit(pool.mem_used_total - 20_000)  # now it must give some back
        assert pool.needs_shrink
        assert pool.shrink(256) > 0 and not pool.needs_shrink
        assert (1, 0) in pool.lru
        assert not pool.lru[(1, 0)].referenced  # the chance is used: next time it may go
    finally:
        pool.close()


class PoolMachine(RuleBasedStateMachine):
    """The pool against a dict model: its keys are exactly the pool's keys."""

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[tuple[int, int], bytes] = {}
        self.pool = CompressedPool(PS, 1 * MiB, PS // 2)

    @initialize(memlimit=st.integers(200_000, 3 * MiB // 2), accept=st.integers(50, 100))
    def setup(self, memlimit: int, accept: int) -> None:
        self.pool.close()
        self.pool = CompressedPool(PS, memlimit, PS // 2, accept)

    def _admitted(self, key: tuple[int, int], data: bytes, codec: codecs.Codec,
                  ok: bool, poor_before: int, full_before: bool, cold_before: int) -> None:
        pool = self.pool
        same = data.count(data[:1]) == len(data)
        poor = not same and codec.name != "none" and compressed_len(codec.name, data) > \
            pool.threshold
        if same:
            assert ok, "same-filled pages are always accepted"
        if poor:  # counted, then stored raw if the pool has room
            assert pool.c.reject_compress_poor == poor_before + 1
            if ok:
                assert pool.lru[key].codec == pool_module.RAW
        if ok:
            self.model[key] = data
            if not same:
                assert pool.mem_used_total <= pool.limit <= pool.memlimit
                if full_before:  # hysteresis: accepted again only below accept_level
                    assert pool.mem_used_total <= pool.accept_level
        else:
            self.model.pop(key, None)
            if pool.c.reject_cold > cold_before:
                event("new page refused near the limit")
                assert pool.mem_used_total > pool.accept_level - 2 * pool.arena.slab_bytes
            elif poor and not pool.full:
                event("raw page refused: no free room")
                assert pool.mem_used_total > pool.accept_level - 2 * pool.arena.slab_bytes
            else:
                event("store refused: pool full")
                assert pool.full

    @rule(key=keys, data=pages, codec=codec_names, referenced=st.booleans())
    def store(self, key: tuple[int, int], data: bytes, codec: str, referenced: bool) -> None:
        pool, c = self.pool, codecs.get(codec)
        poor, full, cold = pool.c.reject_compress_poor, pool.full, pool.c.reject_cold
        ok = pool.store(key[0], key[1], data, c, referenced)
        self._admitted(key, data, c, ok, poor, full, cold)

    @rule(fid=st.integers(1, 3), start=st.integers(100, 2000), count=st.integers(1, 300),
          prefix=st.sampled_from([100, 200, 1000]), every=st.integers(0, 3))
    def store_many(self, fid: int, start: int, count: int, prefix: int, every: int) -> None:
        """Enough same-class pages to reach the limit (one compression, many admits)."""
        data = page(start, prefix)
        comp = compress_page(LZ4, data, self.pool.threshold)
        for i in range(start, start + count):
            pool = self.pool
            poor, full, cold = pool.c.reject_compress_poor, pool.full, pool.c.reject_cold
            ok = pool.admit(fid, i, comp, referenced=every > 0 and i % every == 0)
            if not ok and pool.c.reject_cold > cold:  # new near the limit: offer it again
                self._admitted((fid, i), data, LZ4, ok, poor, full, cold)
                poor, full, cold = pool.c.reject_compress_poor, pool.full, pool.c.reject_cold
                ok = pool.admit(fid, i, comp, referenced=every > 0 and i % every == 0)
            self._admitted((fid, i), data, LZ4, ok, poor, full, cold)

    @rule(key=keys)
    def load(self, key: tuple[int, int]) -> None:
        assert self.pool.load(*key) == self.model.get(key)  # not exclusive
        if key in self.model:
            assert self.pool.lru[key].referenced

    @rule(pick=st.integers(0, 10**6))
    def load_stored(self, pick: int) -> None:
        if self.model:
            key = sorted(self.model)[pick % len(self.model)]
            assert self.pool.load(*key) == self.model[key]

    def _gone(self, doomed: list[tuple[int, int]], n: int) -> None:
        assert n == len(doomed)
        for key in doomed:
            del self.model[key]

    @rule(fid=st.integers(1, 4))
    def invalidate_file(self, fid: int) -> None:
        doomed = [k for k in self.model if k[0] == fid]
        self._gone(doomed, self.pool.invalidate_file(fid))

    @rule(fid=st.integers(1, 4), indexes=st.lists(st.integers(0, 2500), max_size=8))
    def invalidate_pages(self, fid: int, indexes: list[int]) -> None:
        doomed = [k for k in self.model if k[0] == fid and k[1] in indexes]
        self._gone(doomed, self.pool.invalidate_pages(fid, indexes))

    @rule(fid=st.integers(1, 4), every=st.integers(2, 5))
    def invalidate_every(self, fid: int, every: int) -> None:
        """Holes all over the slabs (what rewrites leave): work for compaction."""
        indexes = [i for (f, i) in self.model if f == fid and i % every]
        self.invalidate_pages(fid, indexes)

    @rule(fid=st.integers(1, 4), first=st.integers(0, 2500))
    def invalidate_from(self, fid: int, first: int) -> None:
        doomed = [k for k in self.model if k[0] == fid and k[1] >= first]
        self._gone(doomed, self.pool.invalidate_from(fid, first))

    @rule(max_entries=st.integers(1, 300))
    def shrink(self, max_entries: int) -> None:
        pool = self.pool
        order = [(k, e.referenced) for k, e in pool.lru.items()]
        n = pool.shrink(max_entries)
        assert 0 <= n <= max_entries
        if n:
            event("shrink evicted pages")
        gone = [k for k in self.model if k not in pool.lru]
        self._gone(gone, n)
        # Second chance: a referenced page goes only once fewer unreferenced pages than
        # the eviction window are left (they are then looked at together).
        if gone:
            victims = set(gone)
            if any(ref for k, ref in order if k in victims):
                left = sum(1 for k, ref in order if not ref and k not in victims)
                assert left < pool_module.EVICT_WINDOW
        if n < max_entries and pool.lru and not any(ref for _, ref in order):
            assert not pool.needs_shrink

    @rule(max_moves=st.integers(1, 600))
    def compact(self, max_moves: int) -> None:
        """Moving entries changes no page and only ever gives memory back."""
        pool = self.pool
        used, keys = pool.mem_used_total, set(pool.lru)
        freed = pool.compact(max_moves)
        assert set(pool.lru) == keys
        assert pool.mem_used_total == used - freed
        if freed:
            event("compaction unmapped slabs")

    @rule(memlimit=st.integers(0, 3 * MiB // 2))
    def set_memlimit(self, memlimit: int) -> None:
        pool = self.pool
        pool.set_memlimit(memlimit)
        if pool.mem_used_total > memlimit:
            assert pool.full and pool.needs_shrink

    @rule(cap=st.one_of(st.none(), st.integers(0, 3 * MiB)))
    def set_pressure_cap(self, cap: int | None) -> None:
        pool = self.pool
        pool.set_pressure_cap(cap)
        assert pool.limit == (pool.memlimit if cap is None else min(cap, pool.memlimit))
        if pool.mem_used_total > pool.limit:
            assert pool.full and pool.needs_shrink

    @rule()
    def shrink_to_target(self) -> None:
        """What the background task does: shrink in batches while it must."""
        pool = self.pool
        for _ in range(1000):
            if not pool.needs_shrink:
                break
            self.shrink(256)
        assert not pool.needs_shrink
        assert pool.mem_used_total <= (pool.accept_level if pool.full else pool.limit)

    @rule(threshold=st.integers(1, PS))
    def set_threshold(self, threshold: int) -> None:
        self.pool.threshold = threshold

    @rule()
    def clear(self) -> None:
        assert self.pool.clear() == len(self.model)
        self.model.clear()

    @invariant()
    def accounting(self) -> None:
        check_pool(self.pool)
        assert set(self.pool.lru) == set(self.model)

    @invariant()
    def contents(self) -> None:
        keys = sorted(self.model)
        for key in keys[:: max(1, len(keys) // 24)]:
            assert peek(self.pool, key) == self.model[key]

    def teardown(self) -> None:
        self.pool.close()


TestPoolModel = PoolMachine.TestCase
TestPoolModel.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)


def test_drop_reclaimed_finds_discarded_pages_with_mincore() -> None:
    """After the kernel discards lazy-free pages, drop_reclaimed removes exactly the
    entries that touched them, so mem_used_total is true again."""
    import mmap

    pool = CompressedPool(PS, 64 * MiB, PS // 2)
    for i in range(512):
        assert pool.store(1, i, page(i, 1000), LZ4)
    slabs = {id(e.slab): e.slab for e in pool.lru.values() if e.slab is not None}
    pool.set_volatile(True)
    assert pool.drop_reclaimed() == 0  # nothing discarded yet
    victim = next(iter(slabs.values()))
    assert victim is not None
    victim.buf.madvise(mmap.MADV_DONTNEED)  # the whole slab is discarded
    on_victim = {k for k, e in pool.lru.items() if e.slab is victim}
    used = pool.mem_used_total
    assert pool.drop_reclaimed() == len(on_victim)
    assert pool.c.reclaimed_pages == len(on_victim)
    assert not on_victim & set(pool.lru)
    assert pool.mem_used_total < used
    assert victim.buf.closed  # its last entry went: unmapped
    check_pool(pool)
    assert all(pool.load(*k) == page(k[1], 1000) for k in list(pool.lru))


# -- compaction ---------------------------------------------------------------------

def _holey_pool(n: int = 2000) -> CompressedPool:
    """A pool whose slabs rewrites left with holes: every page stored at one size, then
    three in four rewritten at another (their old slots freed, new ones elsewhere)."""
    pool = CompressedPool(PS, 64 * MiB, PS // 2)
    for i in range(n):
        assert pool.store(1, i, page(i, 1000), LZ4)
    for i in range(n):
        if i % 4:
            assert pool.store(1, i, page(i + n, 600), LZ4)
    return pool


def _expected(i: int, n: int = 2000) -> bytes:
    return page(i + n, 600) if i % 4 else page(i, 1000)


def test_compaction_gives_back_the_slabs_rewrites_left_partly_empty() -> None:
    pool = _holey_pool()
    try:
        arena = pool.arena
        check_pool(pool)
        reclaimable = arena.reclaimable()
        assert reclaimable >= 5  # 3 in 4 slots of ~8 slabs are holes
        before, slabs = pool.mem_used_total, arena.slabs
        freed = 0
        while (step := pool.compact(256)) > 0:  # bounded steps, as the task runs it
            freed += step
        assert freed == before - pool.mem_used_total == (slabs - arena.slabs) * arena.slab_bytes
        assert slabs - arena.slabs >= reclaimable - 1
        assert arena.reclaimable() == 0
        assert pool.c.compacted_pages > 0
        check_pool(pool)
        assert all(pool.load(1, i) == _expected(i) for i in range(2000))
        assert pool.c.failed_gets == 0
    finally:
        pool.close()


def test_compaction_steps_are_bounded() -> None:
    pool = _holey_pool()
    try:
        moved = pool.c.compacted_pages
        assert pool.compact(1) > 0  # one slab is always finished
        first = pool.c.compacted_pages - moved
        assert 0 < first <= pool.arena.slab_bytes // 1024
        while pool.compact(300):
            pass
        check_pool(pool)
    finally:
        pool.close()


def test_shrink_compacts_before_it_evicts() -> None:
    """A pool over its limit only because of holes gets under it without losing a page."""
    pool = _holey_pool()
    try:
        arena = pool.arena
        holes = arena.reclaimable() * arena.slab_bytes
        pool.set_memlimit(pool.mem_used_total - holes // 2)
        assert pool.needs_shrink
        while pool.needs_shrink:
            pool.shrink(512)
        assert pool.c.evicted_pages == 0 and len(pool.lru) == 2000
        assert pool.c.compacted_pages > 0
        check_pool(pool)
    finally:
        pool.close()


def test_compaction_keeps_a_discarded_page_a_miss() -> None:
    """A page the kernel discarded from a lazy-free slab before the move still fails its
    checksum after it: the destination slab becomes lazy (checked at load)."""
    import mmap

    pool = _holey_pool()
    try:
        arena = pool.arena
        pool.set_volatile(True)
        assert pool.compact(10**6) == 0  # not while volatile
        pool.set_volatile(False)  # pressure over; the slabs stay lazy (checked)
        # The emptiest slab of the rewritten pages' class is the first to be moved.
        cls = pool.lru[(1, 0)].slab
        assert cls is not None
        src = min((s for s in arena.all if s.size == cls.size and s.used), key=lambda s: s.used)
        assert src.lazy
        src.buf.madvise(mmap.MADV_DONTNEED)  # what the kernel may do to a lazy page
        lost = {k for k, e in pool.lru.items() if e.slab is src}
        assert lost
        while pool.compact(10**6):
            pass
        assert src.buf.closed
        for i in range(2000):
            assert pool.load(1, i) == (None if (1, i) in lost else _expected(i)), i
        assert pool.c.reclaimed_pages == len(lost)
        check_pool(pool)
    finally:
        pool.close()


def _mark_until(pool: CompressedPool, stop: Any, errors: list[BaseException]) -> None:
    try:
        while not stop.is_set():
            pool.mark_lazy_free()
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("step", [1, 8, 64])
def test_compaction_while_another_thread_marks_the_pool_lazy_free(step: int) -> None:
    """Rule 6: the pressure watcher's thread may call mark_lazy_free at any moment, also
    while the owner compacts (and unmaps) slabs. Nothing raises, every entry still
    names its slot, and every page loads as stored (MADV_FREE pages stay while memory
    is plentiful; a discarded one would be a miss, never other bytes)."""
    import threading

    pool = _holey_pool()
    stop = threading.Event()
    errors: list[BaseException] = []
    t = threading.Thread(target=_mark_until, args=(pool, stop, errors))
    t.start()
    try:
        while pool.compact(step):
            pass
    finally:
        stop.set()
        t.join()
    try:
        assert not errors
        assert pool.c.compacted_pages > 0 and pool.arena.lazy
        check_pool(pool)
        assert all(pool.load(1, i) == _expected(i) for i in range(2000))
    finally:
        pool.close()

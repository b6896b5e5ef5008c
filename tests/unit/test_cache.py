"""Unit tests of the two-tier cache facade (pure core: no FUSE, no trio)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.unit.test_pool import check_pool, make, noise, page, peek
from zcachefs import codecs, handoff, writes
from zcachefs.cache import MAX_PENDING, Cache, FileState
from zcachefs.pagecache import Key
from zcachefs.pool import Compressed, compress_page

PS = 4096
MiB = 1 << 20


def new_cache(pages: int = 4, memlimit: int = 8 * MiB, compressor: str = "lz4") -> Cache:
    return Cache(PS, pages * PS, memlimit, PS // 2, compressor)


def opened(cache: Cache, identity: bytes = b"a", sig: tuple[int, int, int] = (1, 1, 1)
           ) -> FileState:
    state = cache.file(identity)
    cache.opened(state, sig)
    return state


def fill(cache: Cache, state: FileState, first: int, pages: list[bytes]) -> None:
    cache.fill(state, first, pages, state.version)


def where(cache: Cache, key: Key) -> str | None:
    """The tier holding key ("tier1+pool" for a tier-1 page the pool also holds; and
    check it is in no other combination)."""
    tiers = [name for name, present in (("tier1", key in cache.tier1.items),
                                        ("pending", key in cache.pending.items),
                                        ("pool", key in cache.pool.lru)) if present]
    if tiers == ["tier1", "pool"]:
        assert key in cache.stored, f"{key} in tier 1 and the pool, not marked stored"
        return "tier1+pool"
    assert len(tiers) <= 1, f"{key} in {tiers}"
    return tiers[0] if tiers else None


def check_cache(cache: Cache) -> None:
    t1, pend, pool = set(cache.tier1.items), set(cache.pending.items), set(cache.pool.lru)
    assert not t1 & pend and not pend & pool, "a key in two tiers"
    assert t1 & pool <= cache.stored <= t1, "a tier-1 page and a pool copy not marked"
    assert len(cache.tier1) <= cache.capacity
    assert len(cache.pending) <= MAX_PENDING
    for key, p in cache.pending.items.items():
        assert p.key == key
    for tier in (cache.tier1, cache.pending):
        index: dict[int, set[int]] = {}
        for fid, i in tier.items:
            index.setdefault(fid, set()).add(i)
        assert tier.by_file == index
    for data in cache.tier1.items.values():
        assert 0 < len(data) <= PS
    check_pool(cache.pool)


def compress_all(cache: Cache) -> None:
    handoff.compress_inline(cache, len(cache.pending))


def done(cache: Cache, batch: list[Any]) -> list[tuple[Any, Compressed]]:
    return [(p, compress_page(cache.codec, p.data, cache.pool.threshold)) for p in batch]


# -- files ---------------------------------------------------------------------------

def test_file_identity_gives_a_fid_per_file() -> None:
    cache = new_cache()
    a, b = cache.file(b"handle-a"), cache.file(b"handle-b")
    assert a.fid != b.fid
    assert cache.file(b"handle-a") is a
    # The same inode number with another generation is another identity: another fid.
    c = cache.file(b"handle-a-gen2")
    assert c.fid not in (a.fid, b.fid)


def test_opened_keeps_pages_when_unchanged_and_drops_when_changed() -> None:
    cache = new_cache(pages=2)
    state = cache.file(b"a")
    assert not cache.opened(state, (3 * PS, 10, 10))  # first open: nothing to keep
    fill(cache, state, 0, [page(0), page(1), page(2)])  # one in pending
    compress_all(cache)
    assert [where(cache, (state.fid, i)) for i in range(3)] == ["pool", "tier1", "tier1"]
    assert cache.opened(state, (3 * PS, 10, 10))
    assert cache.get(state.fid, 0) == page(0)
    assert where(cache, (state.fid, 0)) == "pool"  # a hit keeps it there, and only there
    assert cache.get(state.fid, 2) == page(2)
    assert not cache.opened(state, (3 * PS, 11, 11))  # mtime moved: changed outside
    assert all(where(cache, (state.fid, i)) is None for i in range(3))
    assert cache.get(state.fid, 0) is None
    check_cache(cache)


def test_changing_makes_the_next_open_drop() -> None:
    cache = new_cache()
    state = opened(cache)
    fill(cache, state, 0, [page(0)])
    version = state.version
    state.changing()
    state.changing()
    assert state.version == version + 2 and state.sig is None
    assert not cache.opened(state, (1, 1, 1))  # same stat as before, still dropped
    assert cache.get(state.fid, 0) is None
    assert cache.opened(state, (1, 1, 1))


def test_changed_file_drops_only_its_own_pages() -> None:
    cache = new_cache(pages=8)
    a, b = opened(cache, b"a"), opened(cache, b"b")
    fill(cache, a, 0, [page(1), page(2)])
    fill(cache, b, 0, [page(3), page(4)])
    assert not cache.opened(a, (2, 2, 2))
    assert cache.get(a.fid, 0) is None
    assert cache.get(b.fid, 0) == page(3) and cache.get(b.fid, 1) == page(4)


def test_forget_file_keeps_state_while_pages_or_handles_need_it() -> None:
    cache = new_cache()
    state = opened(cache, b"a")
    fill(cache, state, 0, [page(0)])
    cache.files.forget(b"a")  # pages still cached: the fid must stay
    assert cache.file(b"a") is state
    cache.invalidate_file(state)
    state.opens = 1
    cache.files.forget(b"a")  # still open
    assert cache.file(b"a") is state
    state.opens = 0
    count = len(cache.files)
    cache.files.forget(b"a")
    assert len(cache.files) == count - 1
    again = cache.file(b"a")
    assert again is not state and again.fid != state.fid and again.sig is None
    cache.files.forget(b"never-seen")


def test_a_forgotten_state_goes_when_its_last_page_leaves() -> None:
    """Forgotten with pages cached, the state stays; once the pages are evicted (any
    path) later forgets or the background sweep drop it, and the number of forgotten
    states never grows past the files that still have pages."""
    cache = new_cache(pages=2, memlimit=0)  # pages leave tier 1 for good
    for i in range(200):
        ident = b"f%d" % i
        state = opened(cache, ident)
        fill(cache, state, 0, [page(i)])
        cache.files.forget(ident)
        handoff.compress_inline(cache, len(cache.pending))  # refused by the empty pool: gone
        with_pages = sum(cache.has_pages(s.fid) for s in cache.files._forgotten.values())
        assert cache.files.forgotten_count <= 2 * with_pages + 2
    assert len(cache.files) <= 6
    assert cache.files.sweep(cache.files.forgotten_count) >= 0
    assert len(cache.files) == sum(cache.has_pages(s.fid) for s in cache.files)
    cache.drop_all()
    assert len(cache.files) == cache.files.forgotten_count == 0


def test_a_forgotten_state_looked_up_again_is_kept() -> None:
    cache = new_cache()
    state = opened(cache, b"a")
    fill(cache, state, 0, [page(0)])
    cache.files.forget(b"a")
    assert cache.file(b"a") is state and cache.files.forgotten_count == 0
    cache.invalidate_file(state)
    assert cache.files.sweep(10) == 0 and cache.file(b"a") is state


def test_read_racing_an_outside_change_is_not_cached() -> None:
    cache = new_cache()
    state = opened(cache, sig=(PS, 1, 1))
    version = state.version  # a read misses and starts reading the old content...
    stale = page(1)
    assert not cache.opened(state, (PS, 2, 2))  # ...the file changes, another open
    cache.fill(state, 0, [stale], version)  # ...the read ends
    assert cache.get(state.fid, 0) is None


# -- tier 1 and pending -----------------------------------------------------------------

def test_tier1_is_lru() -> None:
    cache = new_cache(pages=3)
    state = opened(cache)
    fill(cache, state, 0, [page(0), page(1), page(2)])
    assert cache.get(state.fid, 0) == page(0)
    fill(cache, state, 3, [page(3)])  # evicts page 1, the least recently used
    assert list(cache.tier1.items) == [(state.fid, i) for i in (2, 0, 3)]
    assert list(cache.pending.items) == [(state.fid, 1)]
    assert cache.c.cache_hits == 1


def test_evicted_pages_wait_in_pending_and_stay_readable() -> None:
    cache = new_cache(pages=2)
    state = opened(cache)
    fill(cache, state, 0, [page(i) for i in range(5)])
    fid = state.fid
    assert [k for k, _ in cache.pending.items.items()] == [(fid, 0), (fid, 1), (fid, 2)]
    assert cache.pool.c.puts == 0  # nothing compressed yet
    assert cache.get(fid, 1) == page(1)  # from pending; it stays there (compressed next)
    assert where(cache, (fid, 1)) == "pending"
    assert (cache.c.cache_hits, cache.c.cache_misses) == (1, 0)
    assert cache.get(fid, 9) is None
    assert (cache.c.cache_misses, cache.pool.c.failed_gets) == (1, 1)
    check_cache(cache)


def test_pool_hits_keep_the_copy_and_skip_tier1() -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    fid = state.fid
    fill(cache, state, 0, [page(0), page(1)])
    compress_all(cache)
    assert where(cache, (fid, 0)) == "pool" and cache.pool.stored_pages == 1
    for _ in range(3):
        assert cache.get(fid, 0) == page(0)
    # Not exclusive: the copy stays, nothing goes to tier 1 (the kernel's page cache
    # holds what it just read), nothing is compressed again.
    assert where(cache, (fid, 0)) == "pool" and list(cache.tier1.items) == [(fid, 1)]
    assert (cache.pool.c.succ_gets, cache.c.cache_misses, cache.pool.c.puts) == (3, 3, 1)
    assert cache.pool.lru[(fid, 0)].referenced
    check_cache(cache)


def test_keep_hits_puts_a_hit_in_tier1_and_it_leaves_for_free() -> None:
    """direct_io: tier 1 is the only uncompressed cache, so hits go there, marked
    stored; when they leave tier 1 nothing is compressed again."""
    cache = Cache(PS, PS, 8 * MiB, PS // 2, keep_hits=True)
    state = opened(cache)
    fid = state.fid
    fill(cache, state, 0, [page(0), page(1)])
    compress_all(cache)
    assert cache.get(fid, 0) == page(0)
    assert where(cache, (fid, 0)) == "tier1+pool"
    assert where(cache, (fid, 1)) == "pending"
    compress_all(cache)
    puts = cache.pool.c.puts
    fill(cache, state, 2, [page(2)])  # page 0 leaves tier 1: dropped, not recompressed
    assert where(cache, (fid, 0)) == "pool" and not cache.pending.items
    assert cache.pool.c.puts == puts and not cache.stored
    assert cache.get(fid, 0) == page(0)
    check_cache(cache)


def test_a_hit_earns_a_second_chance_at_eviction() -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    fid = state.fid
    fill(cache, state, 0, [page(0), page(1), page(2)])
    compress_all(cache)  # pages 0 and 1 in the pool, unreferenced
    assert cache.get(fid, 0) == page(0)
    cache.pool.set_memlimit(0)
    assert cache.pool.shrink(1) == 1  # page 1 goes first although it is more recent
    assert set(cache.pool.lru) == {(fid, 0)}


def test_a_page_that_did_not_compress_is_not_compressed_again() -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    fid = state.fid
    raw = noise(7)
    fill(cache, state, 0, [raw, page(1)])
    compress_all(cache)
    pool = cache.pool
    assert (pool.raw_pages, pool.c.reject_compress_poor, pool.c.raw_skips) == (1, 1, 0)
    assert cache.poor == {fid: {0}}
    assert cache.get(fid, 0) == raw  # served byte-exact, raw
    pool.invalidate_pages(fid, [0])  # as if evicted: the page is read again ...
    fill(cache, state, 0, [raw])
    fill(cache, state, 1, [page(1)])
    assert cache.pending.peek((fid, 0)).poor  # type: ignore[union-attr]
    compress_all(cache)  # ... and stored raw without trying the codec again
    assert (pool.raw_pages, pool.c.reject_compress_poor, pool.c.raw_skips) == (1, 1, 1)
    assert cache.get(fid, 0) == raw
    state.changing()  # a change of the page forgets what it was like
    cache.invalidate_range(state, 0, 1)
    assert cache.poor == {}
    check_cache(cache)


def test_admit_stores_the_batch() -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    fill(cache, state, 0, [page(0), page(1), bytes(PS), page(3)])
    batch = handoff.take_pending(cache, 10)
    assert [p.key[1] for p in batch] == [0, 1, 2]
    assert len(cache.pending) == 3  # still readable while compressed elsewhere
    handoff.admit(cache, done(cache, batch))
    assert not cache.pending
    assert (cache.pool.stored_pages, cache.pool.zero_pages) == (2, 1)
    assert cache.get(state.fid, 2) == bytes(PS)
    check_cache(cache)


@pytest.mark.parametrize("how", ["invalidate_range", "invalidate_file", "truncate",
                                 "drop_all", "rewritten_and_evicted"])
def test_admit_ignores_pages_that_changed_meanwhile(how: str) -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    fid = state.fid
    fill(cache, state, 0, [page(0), page(1)])
    batch = handoff.take_pending(cache, 1)
    assert batch[0].key == (fid, 0)
    result = done(cache, batch)
    if how == "invalidate_range":
        state.changing()
        cache.invalidate_range(state, 10, 20)
    elif how == "invalidate_file":
        cache.invalidate_file(state)
    elif how == "truncate":
        cache.truncate(state, 0)
    elif how == "drop_all":
        cache.drop_all()
    elif how == "rewritten_and_evicted":
        state.changing()  # a write of page 0 ...
        cache.invalidate_range(state, 0, PS)
        state.changing()
        fill(cache, state, 0, [page(99)])  # ... read again ...
        fill(cache, state, 5, [page(5)])  # ... and waiting in pending again, new
        assert where(cache, (fid, 0)) == "pending"
    handoff.admit(cache, result)
    assert (fid, 0) not in cache.pool.lru
    assert cache.pool.c.puts == 0
    if how == "rewritten_and_evicted":
        assert cache.get(fid, 0) == page(99)
    else:
        assert cache.get(fid, 0) is None
    check_cache(cache)


def test_back_pressure_compresses_inline() -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    extra = 10
    fill(cache, state, 0, [page(i % 50) for i in range(MAX_PENDING + extra + 1)])
    assert len(cache.pending) == MAX_PENDING
    assert cache.pool.c.puts == extra
    assert set(cache.pool.lru) == {(state.fid, i) for i in range(extra)}  # the oldest
    for i in range(MAX_PENDING + extra + 1):
        assert cache.get(state.fid, i) == page(i % 50)
    check_cache(cache)


def test_set_cache_size_moves_the_excess_to_pending() -> None:
    cache = new_cache(pages=MAX_PENDING + 20)
    state = opened(cache)
    fill(cache, state, 0, [page(i % 50) for i in range(MAX_PENDING + 20)])
    assert not cache.pending
    cache.set_cache_size(5 * PS + 100)
    assert cache.capacity == 5 and len(cache.tier1) == 5
    assert len(cache.pending) == MAX_PENDING and cache.pool.c.puts == 15
    check_cache(cache)
    cache.set_cache_size(0)
    assert cache.capacity == 1


def test_drop_oldest_takes_pending_first_then_tier1() -> None:
    cache = new_cache(pages=4)
    state = opened(cache)
    fill(cache, state, 0, [page(i) for i in range(6)])
    assert cache.drop_oldest(3) == 3
    assert not cache.pending and list(cache.tier1.items) == [(state.fid, 3), (state.fid, 4),
                                                             (state.fid, 5)]
    assert cache.capacity == 3 and cache.configured == 4
    check_cache(cache)


# -- fill ---------------------------------------------------------------------------

def test_fill_ignores_a_stale_version() -> None:
    cache = new_cache()
    state = opened(cache)
    version = state.version  # a read starts...
    state.changing()  # ...a write through the mount overlaps it
    cache.invalidate_range(state, 0, PS)
    cache.fill(state, 0, [page(1)], version)
    assert cache.get(state.fid, 0) is None
    assert not cache.tier1 and state.tail is None


def test_fill_stops_at_eof_and_remembers_the_tail() -> None:
    cache = new_cache(pages=8)
    state = opened(cache)
    fill(cache, state, 4, [page(4), b"end", b""])
    assert sorted(cache.tier1.items) == [(state.fid, 4), (state.fid, 5)]
    assert state.tail == 5


def test_fill_over_cached_pages_keeps_one_copy() -> None:
    """A read from the first missing page may cover pages cached further on."""
    cache = new_cache(pages=2)
    state = opened(cache)
    fill(cache, state, 0, [page(i) for i in range(4)])  # pages 0, 1 in pending
    compress_all(cache)  # pages 0, 1 in the pool
    # A read of pages 0..3 where page 3 was dropped: the adapter reads from the first
    # missing page; here all of them, as _read_miss does when page 0 misses.
    cache.pool.load(state.fid, 0)
    fill(cache, state, 0, [page(i) for i in range(4)])
    check_cache(cache)


def test_fill_keeps_one_copy_under_back_pressure() -> None:
    cache = new_cache(pages=1)
    a, b = opened(cache, b"a"), opened(cache, b"b")
    fill(cache, a, 5, [page(5)])
    fill(cache, b, 0, [page(100 + i) for i in range(MAX_PENDING)])
    assert len(cache.pending) == MAX_PENDING and where(cache, (a.fid, 5)) == "pending"
    assert a.fid not in cache.pool.files
    # Each page put now compresses the oldest pending page inline, (a, 5) first.
    fill(cache, a, 0, [page(i) for i in range(8)])
    check_cache(cache)


# -- invalidation ---------------------------------------------------------------------

def spread(cache: Cache, state: FileState, n: int, tail: bytes = b"") -> None:
    """Pages 0..n-1 (and a short tail page n) of `state` spread over all three tiers."""
    fill(cache, state, 0, [page(i % 50) for i in range(n)] + ([tail] if tail else []))
    handoff.compress_inline(cache, len(cache.pending) // 2)


def test_truncate_drops_pages_past_the_new_end_and_the_tail() -> None:
    cache = new_cache(pages=4)
    state = opened(cache)
    spread(cache, state, 10, tail=b"tail")
    fid = state.fid
    assert state.tail == 10
    tiers = {where(cache, (fid, i)) for i in range(11)}
    assert tiers == {"tier1", "pending", "pool"}
    cache.truncate(state, 5 * PS + 100)  # page 5 is cut: dropped with 6..10
    assert [i for i in range(11) if where(cache, (fid, i))] == [0, 1, 2, 3, 4]
    assert state.tail is None
    cache.truncate(state, 5 * PS)
    assert [i for i in range(11) if where(cache, (fid, i))] == [0, 1, 2, 3, 4]
    check_cache(cache)


def test_growing_truncate_drops_only_the_tail() -> None:
    cache = new_cache(pages=4)
    state = opened(cache)
    spread(cache, state, 6, tail=b"tail")
    cache.truncate(state, 100 * PS)  # the old tail page gains zeros: stale
    assert [i for i in range(7) if where(cache, (state.fid, i))] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(("offset", "length", "gone"), [
    (3 * PS + 10, PS, {3, 4}),  # before the short last page (10): it stays
    (3 * PS, PS, {3}),
    (3 * PS, 0, {3}),
    (0, 1, {0}),
    (PS - 1, 2, {0, 1}),
    (9 * PS, PS, {9}),  # ends where the last page starts: it stays
    (9 * PS, PS + 1, {9, 10}),
    (2 * PS, 100 * PS, set(range(2, 11))),  # a long write: only present pages looked at
    (50 * PS, PS, {10}),  # past the end: the file grows, the old last page with it
])
def test_invalidate_range_drops_touched_pages_and_the_tail(offset: int, length: int,
                                                          gone: set[int]) -> None:
    cache = new_cache(pages=4)
    state = opened(cache)
    spread(cache, state, 10, tail=b"tail")
    other = opened(cache, b"other")
    fill(cache, other, 0, [page(1), page(2)])
    cache.invalidate_range(state, offset, length)
    left = {i for i in range(11) if where(cache, (state.fid, i))}
    assert left == set(range(11)) - gone
    assert (state.tail is None) == (10 in gone)
    assert cache.get(other.fid, 0) == page(1) and cache.get(other.fid, 1) == page(2)
    check_cache(cache)


def test_invalidate_file_drops_every_tier() -> None:
    cache = new_cache(pages=4)
    state = opened(cache)
    spread(cache, state, 12, tail=b"x")
    other = opened(cache, b"b")
    fill(cache, other, 0, [page(7)])
    cache.invalidate_file(state)
    assert all(where(cache, (state.fid, i)) is None for i in range(13))
    assert state.tail is None
    assert cache.get(other.fid, 0) == page(7)
    check_cache(cache)


class NoIterOrderedDict(OrderedDict[Any, Any]):
    def __iter__(self) -> Any:
        raise AssertionError("walked a whole tier")

    def items(self) -> Any:
        raise AssertionError("walked a whole tier")

    def keys(self) -> Any:
        raise AssertionError("walked a whole tier")

    def values(self) -> Any:
        raise AssertionError("walked a whole tier")


class NoIterDict(dict[Any, Any]):
    def __iter__(self) -> Any:
        raise AssertionError("walked every file")

    def items(self) -> Any:
        raise AssertionError("walked every file")

    def keys(self) -> Any:
        raise AssertionError("walked every file")

    def values(self) -> Any:
        raise AssertionError("walked every file")


class Untouchable(set[int]):
    def __iter__(self) -> Any:
        raise AssertionError("read the pages of another file")


@pytest.mark.parametrize("op", ["invalidate_file", "invalidate_range", "long_range",
                                "truncate", "opened"])
def test_invalidation_costs_only_the_files_pages(op: str) -> None:
    """No invalidation walks a whole tier, the file table or another file's pages."""
    cache = new_cache(pages=40)
    state = opened(cache)
    others = [opened(cache, b"o%d" % i) for i in range(3)]
    for o in others:
        spread(cache, o, 30)
    spread(cache, state, 30, tail=b"t")
    for tier in (cache.tier1, cache.pending):
        for fid in list(tier.by_file):
            if fid != state.fid:
                tier.by_file[fid] = Untouchable(tier.by_file[fid])
        tier.by_file = NoIterDict(tier.by_file)
        tier.items = NoIterOrderedDict(tier.items)
    pool = cache.pool
    for fid in list(pool.files):
        if fid != state.fid:
            pool.files[fid] = NoIterDict(pool.files[fid])
    pool.files = NoIterDict(pool.files)
    pool.lru = NoIterOrderedDict(pool.lru)
    if op == "invalidate_file":
        cache.invalidate_file(state)
    elif op == "invalidate_range":
        cache.invalidate_range(state, 5 * PS, 3 * PS)
    elif op == "long_range":
        cache.invalidate_range(state, 5 * PS, 1000 * PS)
    elif op == "truncate":
        cache.truncate(state, 7 * PS)
    else:
        assert not cache.opened(state, (9, 9, 9))
    assert (state.tail is None) == (op != "invalidate_range")  # ends before the tail
    assert len(cache.tier1) + len(cache.pending) + len(cache.pool.lru) >= 90


def test_drop_all_empties_both_tiers() -> None:
    cache = new_cache(pages=4)
    state = opened(cache)
    spread(cache, state, 12, tail=b"x")
    cache.get(state.fid, 0)
    cache.drop_all()
    assert not cache.tier1 and not cache.pending and not cache.pool.lru
    assert not cache.stored and not cache.poor and state.tail is None
    assert cache.get(state.fid, 0) is None
    check_cache(cache)


# -- codecs switched at run time -------------------------------------------------------

@pytest.mark.parametrize(("first", "then"), [("lzo", "lz4"), ("lz4", "lzo"),
                                             ("none", "lz4"), ("lz4", "none")])
def test_pages_stored_before_a_codec_switch_still_decompress(first: str, then: str
                                                           ) -> None:
    cache = new_cache(pages=1, compressor=first)
    state = opened(cache)
    fid = state.fid
    fill(cache, state, 0, [page(0, 300), page(1, 300)])
    compress_all(cache)
    assert cache.pool.lru[(fid, 0)].codec == codecs.get(first).id
    cache.set_compressor(then)
    fill(cache, state, 2, [page(2, 300), page(3, 300)])
    compress_all(cache)
    assert cache.pool.lru[(fid, 2)].codec == codecs.get(then).id
    for i in range(4):
        assert cache.get(fid, i) == page(i, 300)


# -- the model: a backing file per fid, changes through the mount and outside --------

FILES = 3
KINDS = ("zero", "same", "text", "noise")
kinds = st.sampled_from(KINDS)


def content(kind: str, seed: int, size: int) -> bytes:
    """`size` bytes whose pages cycle through the kinds, starting with `kind`."""
    first = KINDS.index(kind)
    out = b"".join(make(KINDS[(first + p) % 4], seed + p, 300, PS)
                   for p in range(-(-size // PS)))
    return out[:size]


class CacheMachine(RuleBasedStateMachine):
    """The cache in front of three in-memory "backing files", driven as the adapter
    drives it. Every cached copy of every page must equal the backing file's bytes,
    except for a file changed outside the mount and not reopened yet."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = new_cache()
        self.states: list[FileState] = []
        self.backing: list[bytearray] = []
        self.mtime = [0] * FILES
        self.outside = [False] * FILES  # changed outside the mount since the last open
        # Changed through the mount in a way the cache could not verify (a truncate,
        # overlapping writes, a write after an outside change) since the last open.
        self.unknown = [False] * FILES
        # In flight: (file, offset, data, token, early, signatures, open generation).
        self.writes: list[tuple[int, int, bytes, Any, bool, Any, int]] = []
        self.gen = [0] * FILES  # opens so far
        self.opens = [0] * FILES  # opens that dropped pages (see end_read)
        self.inflight: list[list[tuple[Any, Compressed]]] = []
        self.reads: list[tuple[int, int, int, bytes, int]] = []

    @initialize(pages=st.integers(1, 5), memlimit=st.integers(0, 2 * MiB),
                compressor=st.sampled_from(["lz4", "lzo", "none"]),
                sizes=st.lists(st.integers(PS, 8 * PS), min_size=FILES, max_size=FILES),
                kind=kinds, seed=st.integers(0, 50))
    def setup(self, pages: int, memlimit: int, compressor: str, sizes: list[int],
              kind: str, seed: int) -> None:
        self.cache = new_cache(pages, memlimit, compressor)
        pool = self.cache.pool
        real = pool.admit

        def admit(fid: int, index: int, comp: Compressed, referenced: bool = False) -> bool:
            ok = real(fid, index, comp, referenced)
            if ok and comp.codec != 0:
                assert pool.mem_used_total <= pool.limit
            return ok

        pool.admit = admit  # type: ignore[method-assign]
        for f, size in enumerate(sizes):
            self.backing.append(bytearray(content(kind, seed + f, size)))
            self.states.append(self.cache.file(b"file%d" % f))
            assert not self.cache.opened(self.states[f], self.sig(f))

    def sig(self, f: int) -> tuple[int, int, int]:
        return (len(self.backing[f]), self.mtime[f], self.mtime[f])

    def expect(self, f: int, index: int) -> bytes:
        return bytes(self.backing[f][index * PS:(index + 1) * PS])

    # -- reads -------------------------------------------------------------------------

    @rule(f=st.integers(0, FILES - 1), off=st.integers(0, 9 * PS), size=st.integers(1, 5 * PS))
    def read(self, f: int, off: int, size: int) -> None:
        """As the adapter reads: the cache answers from its tiers or names the missing
        runs, which are read from the backing file and handed back."""
        cache, state = self.cache, self.states[f]
        got = cache.read(state, off, size)
        if not isinstance(got, bytes):
            if len(got.runs) > 1 or any(p is not None for p in got.found):
                event("partial hit")
            data = bytes(self.backing[f])
            got = cache.fill_plan(state, got, backing_pages(data, got))
        else:
            event("whole hit")
        if not self.outside[f]:  # stale until the next open: close-to-open consistency
            assert got == bytes(self.backing[f][off:off + size]), f"file {f} at {off}"

    @rule(f=st.integers(0, FILES - 1))
    def read_file(self, f: int) -> None:
        self.read(f, 0, 11 * PS)

    @rule(f=st.integers(0, FILES - 1), index=st.integers(0, 9))
    def begin_read(self, f: int, index: int) -> None:
        """A read that misses and awaits the backing file (ended by end_read)."""
        state = self.states[f]
        if self.outside[f] or self.cache.get(state.fid, index) is not None:
            return
        self.reads.append((f, index, state.version, self.expect(f, index), self.opens[f]))

    @precondition(lambda self: self.reads)
    @rule(pick=st.integers(0, 100))
    def end_read(self, pick: int) -> None:
        f, index, version, data, _opens = self.reads.pop(pick % len(self.reads))
        state = self.states[f]
        if version != state.version:
            event("stale fill")
        if data:
            self.cache.fill(state, index, [data], version)

    # -- changes -----------------------------------------------------------------------

    @rule(f=st.integers(0, FILES - 1), index=st.integers(0, 7), skew=st.integers(-PS, PS),
          kind=kinds, seed=st.integers(0, 50))
    def read_racing_a_write(self, f: int, index: int, skew: int, kind: str, seed: int
                            ) -> None:
        """A read misses, a write (near) the page runs while it waits, the read ends."""
        state = self.states[f]
        if self.outside[f] or self.cache.get(state.fid, index) is not None:
            return
        version, data = state.version, self.expect(f, index)
        self.write(f, max(0, index * PS + skew), PS, kind, seed)
        if data:
            self.cache.fill(state, index, [data], version)

    @precondition(lambda self: self.reads)
    @rule(pick=st.integers(0, 100), skew=st.integers(-PS, PS), kind=kinds,
          seed=st.integers(0, 50))
    def write_over_a_read(self, pick: int, skew: int, kind: str, seed: int) -> None:
        """A write through the mount that overlaps a read still in flight."""
        f, index, *_ = self.reads[pick % len(self.reads)]
        self.write(f, max(0, index * PS + skew), PS, kind, seed)

    def _apply(self, f: int, offset: int, data: bytes) -> tuple[Any, Any]:
        """The backing write itself; returns the signatures before and after it."""
        before = self.sig(f)
        b = self.backing[f]
        if offset > len(b):
            b.extend(bytes(offset - len(b)))
        b[offset:offset + len(data)] = data
        return before, self.sig(f)  # mtime left alone (coarse timestamps)

    @rule(f=st.integers(0, FILES - 1), offset=st.integers(0, 10 * PS),
          length=st.integers(1, 2 * PS), kind=kinds, seed=st.integers(0, 50))
    def write(self, f: int, offset: int, length: int, kind: str, seed: int) -> None:
        self.begin_write(f, offset, length, kind, seed, True)
        self.end_write(len(self.writes) - 1)

    @rule(f=st.integers(0, FILES - 1), offset=st.integers(0, 10 * PS),
          length=st.integers(1, 2 * PS), kind=kinds, seed=st.integers(0, 50),
          early=st.booleans())
    def begin_write(self, f: int, offset: int, length: int, kind: str, seed: int,
                    early: bool) -> None:
        """A write through the mount awaits the backing file (ended by end_write); the
        backing write happens at once (early) or just before the reply."""
        cache, state, data = self.cache, self.states[f], make(kind, seed, 200, length)
        token = writes.begin_write(cache, state, offset, length)
        sigs = self._apply(f, offset, data) if early else None
        self.writes.append((f, offset, data, token, early, sigs, self.gen[f]))

    @precondition(lambda self: self.writes)
    @rule(pick=st.integers(0, 100))
    def end_write(self, pick: int) -> None:
        f, offset, data, token, early, sigs, _ = self.writes.pop(pick % len(self.writes))
        cache, state = self.cache, self.states[f]
        if not early:
            sigs = self._apply(f, offset, data)
        before, after = sigs
        fresh = state.version == token.version and token.known == before
        n = writes.end_write(cache, state, token, offset, data, before, after)
        assert state.sig == (after if fresh else None)
        if fresh:
            event("write cached its pages" if n else "write cached nothing")
        else:
            self.unknown[f] = True

    @rule(f=st.integers(0, FILES - 1), size=st.integers(0, 10 * PS))
    def truncate(self, f: int, size: int) -> None:
        cache, state = self.cache, self.states[f]
        token = state.changing()
        cache.truncate(state, size)
        b = self.backing[f]
        if size > len(b):
            b.extend(bytes(size - len(b)))
        else:
            del b[size:]
        state.changed(token)
        cache.truncate(state, size)
        self.unknown[f] = True

    @rule(f=st.integers(0, FILES - 1), offset=st.integers(0, 8 * PS),
          length=st.integers(0, 2 * PS), kind=kinds, seed=st.integers(0, 50),
          in_place=st.booleans())
    def outside_change(self, f: int, offset: int, length: int, kind: str, seed: int,
                       in_place: bool) -> None:
        """Another process rewrites part of the file, or all of it from `offset` on (the
        cache is not told; the mtime moves)."""
        b = self.backing[f]
        data = make(kind, seed, 100, length) if length else b""
        if in_place:  # same size: only the mtime tells
            data = data[:max(0, len(b) - offset)]
            b[offset:offset + len(data)] = data
        else:
            del b[offset:]
            b.extend(data)
        self.outside[f] = True
        self.mtime[f] += 1

    @rule(f=st.integers(0, FILES - 1))
    def reopen(self, f: int) -> None:
        state = self.states[f]
        kept = self.cache.opened(state, self.sig(f))
        # A write in flight that began since the last open has left the file unknown.
        busy = any(w[0] == f and w[6] == self.gen[f] for w in self.writes)
        assert kept == (not self.outside[f] and not self.unknown[f] and not busy)
        self.gen[f] += 1
        if not kept:
            self.opens[f] += 1
            assert not any(fid == state.fid for fid, _ in self.cache.tier1.items)
            assert not any(fid == state.fid for fid, _ in self.cache.pending.items)
            assert state.fid not in self.cache.pool.files
        self.outside[f] = self.unknown[f] = False

    # -- compression and limits --------------------------------------------------------

    @rule(n=st.integers(1, 8), now=st.booleans())
    def take_batch(self, n: int, now: bool) -> None:
        """The background compressor takes a batch (admitted now, or by admit_batch)."""
        batch = handoff.take_pending(self.cache, n)
        if batch:
            self.inflight.append(done(self.cache, batch))
        if now and self.inflight:
            handoff.admit(self.cache, self.inflight.pop())

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 100))
    def admit_batch(self, pick: int) -> None:
        handoff.admit(self.cache, self.inflight.pop(pick % len(self.inflight)))

    @rule(n=st.integers(1, 8), shrink=st.booleans())
    def compress_inline(self, n: int, shrink: bool) -> None:
        handoff.compress_inline(self.cache, n)
        pool = self.cache.pool
        for _ in range(100):
            if not shrink or not pool.needs_shrink:
                break
            pool.shrink(64)
        assert not shrink or not pool.needs_shrink

    @rule(knob=st.sampled_from(["cache_size", "memlimit", "pressure_cap", "compressor",
                                "drop_oldest", "drop_all"]),
          value=st.integers(0, 2 * MiB))
    def turn(self, knob: str, value: int) -> None:
        cache = self.cache
        if knob == "cache_size":
            cache.set_cache_size(value % (12 * PS))
            assert cache.capacity == max(1, value % (12 * PS) // PS)
        elif knob == "memlimit":
            cache.pool.set_memlimit(value)
        elif knob == "pressure_cap":
            cache.pool.set_pressure_cap(value if value % 3 else None)
        elif knob == "compressor":
            cache.set_compressor(["lz4", "lzo", "none"][value % 3])
        elif knob == "drop_oldest":
            cache.drop_oldest(value % 6)
        else:
            cache.drop_all()
            assert not cache.tier1 and not cache.pending and not cache.pool.lru

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def structure(self) -> None:
        check_cache(self.cache)

    @invariant()
    def every_cached_copy_is_the_backing_data(self) -> None:
        cache = self.cache
        by_fid = {s.fid: f for f, s in enumerate(self.states)}
        copies: list[tuple[Key, bytes]] = list(cache.tier1.items.items())
        copies += [(k, p.data) for k, p in cache.pending.items.items()]
        copies += [(k, peek(cache.pool, k)) for k in cache.pool.lru]
        for (fid, index), data in copies:
            f = by_fid[fid]
            if self.outside[f]:
                continue  # stale until the next open (close-to-open), which drops it
            assert data == self.expect(f, index), f"file {f} page {index}"
            if len(data) < PS:  # a short page is the tail, and the cache knows it
                assert self.states[f].tail == index


TestCacheModel = CacheMachine.TestCase
TestCacheModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


# -- the read geometry (Cache.read / fill_plan) ------------------------------------------

def backing_pages(data: bytes, plan: Any) -> list[list[bytes]]:
    """What the adapter reads for a plan: each run, split into pages, short at EOF."""
    return [[data[i * PS:(i + 1) * PS] for i in range(first, first + n)
             if data[i * PS:(i + 1) * PS]] for first, n in plan.runs]


def test_a_partial_hit_reads_only_the_missing_runs() -> None:
    cache = new_cache(pages=64)
    state = opened(cache, sig=(32 * PS, 1, 1))
    data = b"".join(page(i) for i in range(32))
    fill(cache, state, 0, [page(i) for i in range(32) if i not in (3, 4, 9)][:3])
    fill(cache, state, 5, [page(i) for i in range(5, 9)])
    fill(cache, state, 10, [page(i) for i in range(10, 32)])
    plan = cache.read(state, 0, 32 * PS)
    assert not isinstance(plan, bytes)
    assert plan.runs == [(3, 2), (9, 1)] and plan.pages == 3
    got = cache.fill_plan(state, plan, backing_pages(data, plan))
    assert got == data
    assert (cache.c.backing_reads, cache.c.backing_read_bytes) == (2, 3 * PS)
    assert cache.read(state, 0, 32 * PS) == data  # now a whole hit
    check_cache(cache)


@pytest.mark.parametrize(("off", "size"), [(0, 1), (100, 5000), (PS - 1, 2), (3 * PS, PS),
                                           (5 * PS + 7, 3 * PS), (0, 40 * PS)])
def test_read_answers_any_range_like_the_file(off: int, size: int) -> None:
    cache = new_cache(pages=3)  # small: pages move to pending and the pool meanwhile
    length = 6 * PS + 123
    data = b"".join(page(i) for i in range(7))[:length]
    state = opened(cache, sig=(length, 1, 1))
    for _ in range(3):
        got = cache.read(state, off, size)
        if not isinstance(got, bytes):
            got = cache.fill_plan(state, got, backing_pages(data, got))
        assert got == data[off:off + size]
        compress_all(cache)
    assert cache.read(state, length, 10) == b""  # EOF known since open: no plan
    check_cache(cache)


def test_a_plan_made_before_a_change_is_answered_but_not_cached() -> None:
    cache = new_cache(pages=8)
    state = opened(cache, sig=(4 * PS, 1, 1))
    data = b"".join(page(i) for i in range(4))
    plan = cache.read(state, 0, 4 * PS)
    assert not isinstance(plan, bytes)
    state.changing()  # a write began while the read waited
    assert cache.fill_plan(state, plan, backing_pages(data, plan)) == data
    assert not cache.tier1 and cache.c.backing_reads == 1


def test_backing_fallbacks_are_counted() -> None:
    cache = new_cache()
    state = opened(cache, sig=(PS, 1, 1))
    plan = cache.read(state, 0, PS)
    assert not isinstance(plan, bytes)
    cache.fill_plan(state, plan, [[page(0)]], fallback=True)
    assert cache.c.backing_fallbacks == 1


# -- writes keep the cache warm ----------------------------------------------------------

def write(cache: Cache, state: FileState, backing: bytearray, off: int, data: bytes,
          outside: bool = False) -> bool:
    """As the adapter writes: changing, the backing write between two signatures,
    changed, written. `outside`: another process changed the file just before."""
    token = writes.begin_write(cache, state, off, len(data))
    before = (len(backing), 1 if not outside else 2, 1)
    if off > len(backing):
        backing.extend(bytes(off - len(backing)))
    backing[off:off + len(data)] = data
    known = state.version == token.version and token.known == before
    writes.end_write(cache, state, token, off, data, before,
                     (len(backing), 1 if not outside else 2, 1))
    return known


@pytest.mark.parametrize("where_cached", ["tier1", "pool", "nowhere"])
def test_written_pages_are_cached_partial_ones_merged(where_cached: str) -> None:
    cache = new_cache(pages=16)
    backing = bytearray(b"".join(page(i) for i in range(8)))
    state = opened(cache, sig=(len(backing), 1, 1))
    fid = state.fid
    if where_cached != "nowhere":
        fill(cache, state, 0, [page(i) for i in range(8)])
    if where_cached == "pool":
        cache.set_cache_size(PS)
        compress_all(cache)
    new = noise(3, 3 * PS)
    assert write(cache, state, backing, PS // 2, new)  # pages 0..3 touched, 1 and 2 whole
    cached = [where(cache, (fid, i)) is not None for i in range(4)]
    if where_cached == "nowhere":
        assert cached == [False, True, True, False]  # partial pages: nothing to merge
        assert cache.c.write_fills == 2
    else:
        assert cached == [True] * 4  # the partial ones merged into their old copy
        assert cache.c.write_fills == 4
    got = cache.read(state, 0, len(backing))
    if not isinstance(got, bytes):
        got = cache.fill_plan(state, got, backing_pages(bytes(backing), got))
    assert got == bytes(backing)
    assert cache.opened(state, (len(backing), 1, 1))  # our own write: the cache stays
    check_cache(cache)


def test_a_write_that_ends_the_file_caches_its_last_page() -> None:
    cache = new_cache(pages=16)
    backing = bytearray(page(0))
    state = opened(cache, sig=(PS, 1, 1))
    assert write(cache, state, backing, PS, b"tail" * 100)
    assert cache.get(state.fid, 1) == b"tail" * 100 and state.tail == 1
    assert write(cache, state, backing, 2 * PS + 10, b"x")  # a hole: page 1 grows
    assert cache.get(state.fid, 1) is None  # it grew with zeros: not cached from the write
    assert cache.get(state.fid, 2) == bytes(10) + b"x"  # a new last page: hole, then "x"
    assert write(cache, state, backing, 2 * PS + 5, b"yy")  # merged into the tail page
    assert cache.get(state.fid, 2) == bytes(5) + b"yy" + bytes(3) + b"x"


def test_a_write_after_an_outside_change_makes_the_next_open_drop() -> None:
    cache = new_cache(pages=16)
    backing = bytearray(b"".join(page(i) for i in range(4)))
    state = opened(cache, sig=(len(backing), 1, 1))
    fill(cache, state, 0, [page(i) for i in range(4)])
    assert not write(cache, state, backing, 0, noise(1), outside=True)
    assert cache.c.write_fills == 0 and cache.get(state.fid, 0) is None
    assert not cache.opened(state, (len(backing), 2, 1))
    assert not cache.tier1 and not cache.pending


def test_overlapping_writes_cache_nothing_and_the_next_open_drops() -> None:
    cache = new_cache(pages=16)
    state = opened(cache, sig=(4 * PS, 1, 1))
    sig = (4 * PS, 1, 1)
    first = writes.begin_write(cache, state, 0, PS)
    second = writes.begin_write(cache, state, 0, PS)
    assert writes.end_write(cache, state, second, 0, noise(1), sig, sig) == 0  # overlapped
    assert writes.end_write(cache, state, first, 0, noise(2), sig, sig) == 0
    assert state.sig is None


def test_a_pending_hit_does_not_stop_its_compression() -> None:
    cache = new_cache(pages=1)
    state = opened(cache)
    fid = state.fid
    fill(cache, state, 0, [page(0), page(1)])
    batch = handoff.take_pending(cache, 1)
    result = done(cache, batch)
    assert cache.get(fid, 0) == page(0)  # read while the compressor runs
    handoff.admit(cache, result)
    assert where(cache, (fid, 0)) == "pool"
    check_cache(cache)

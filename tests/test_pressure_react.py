"""The pressure watcher's decisions, fed with synthetic samples (no cgroup needed)."""

from __future__ import annotations

from zcachefs.cache import Cache
from zcachefs.pressure import PressureWatcher, Sample

MB = 1 << 20


def filled_cache() -> Cache:
    cache = Cache(4096, cache_size=4 * MB, memlimit=64 * MB, threshold=2048)
    state = cache.file(b"f")
    text = b"".join(b"%06d pressure test line\n" % i for i in range(200))[:4096]
    for i in range(6000):
        cache.fill(state, i, [text[: 4096 - (i % 7)] + bytes(i % 7)], state.version)
        if len(cache.pending.items) > 200:
            cache.compress_inline(200)
    cache.compress_inline(len(cache.pending.items))
    return cache


def watcher(cache: Cache, min_free: int = 100 * MB) -> PressureWatcher:
    return PressureWatcher(cache, min_free=min_free, psi_threshold=10, interval=0.1,
                           wake=lambda: None)


def test_no_pressure_changes_nothing() -> None:
    cache = filled_cache()
    used = cache.pool.mem_used_total
    assert watcher(cache).react(Sample(headroom=1 << 30, psi_some_avg10=0.0)) == 0
    assert cache.pool.mem_used_total == used and cache.pool.pressure_cap is None


def test_deficit_caps_and_shrinks_pool_then_tier1() -> None:
    cache = filled_cache()
    used = cache.pool.mem_used_total
    w = watcher(cache)
    freed = w.react(Sample(headroom=100 * MB - used // 2, psi_some_avg10=0.0))
    assert freed >= used // 2 - 256 * 1024  # at least the deficit (to a slab)
    assert cache.pool.mem_used_total <= cache.pool.limit < used
    assert cache.c.pressure_shrinks == 1
    # A deficit larger than the whole pool also empties tier 1 down to what is needed.
    tier1 = len(cache.tier1)
    w.react(Sample(headroom=100 * MB - used - 2 * MB, psi_some_avg10=0.0))
    assert len(cache.tier1) < tier1 and cache.capacity <= len(cache.tier1) + 1


def test_psi_alone_triggers_a_shrink_of_an_eighth() -> None:
    cache = filled_cache()
    used = cache.pool.mem_used_total
    watcher(cache).react(Sample(headroom=1 << 30, psi_some_avg10=25.0))
    assert cache.pool.mem_used_total <= used - used // 8 + 256 * 1024


def test_relief_lifts_the_cap_step_by_step() -> None:
    cache = filled_cache()
    w = watcher(cache)
    w.react(Sample(headroom=0, psi_some_avg10=0.0))
    assert cache.pool.pressure_cap is not None
    steps = 0
    while cache.pool.pressure_cap is not None or cache.capacity < cache.configured:
        w.react(Sample(headroom=1 << 30, psi_some_avg10=0.0))
        steps += 1
        assert steps < 20
    assert steps > 1  # gradual, not all at once
    assert cache.pool.limit == cache.pool.memlimit


def test_reconcile_drops_what_the_kernel_took_in_round_robin_batches() -> None:
    """Discard two slabs (MADV_DONTNEED does to them what reclaim does to lazy-free
    pages); calm ticks find them a few slabs at a time, a full pass at once."""
    import mmap

    import trio

    cache = filled_cache()
    pool = cache.pool
    slabs = [s for s in pool.arena.all if s.used]
    assert len(slabs) >= 4
    w = watcher(cache)
    w.volatile(True)
    assert w.reconcile_some(len(slabs)) == 0  # nothing discarded yet
    slabs[0].buf.madvise(mmap.MADV_DONTNEED)
    lost0 = slabs[0].used
    found = 0
    for _ in range(len(slabs)):  # one slab per tick: a whole round finds it
        found += w.reconcile_some(1)
    assert found == lost0 == pool.c.reclaimed_pages
    slabs[1].buf.madvise(mmap.MADV_DONTNEED)
    lost1 = slabs[1].used
    assert trio.run(w.reconcile_all) == lost1
    assert pool.c.reclaimed_pages == lost0 + lost1
    assert all(pool.load(*key) is not None for key in list(pool.lru)[:50])
    w.volatile(False)
    assert not pool.arena.lazy and not pool.arena.volatile


def test_pressure_makes_the_pool_volatile_and_relief_takes_it_back() -> None:
    cache = filled_cache()
    w = watcher(cache)
    s = Sample(headroom=0, psi_some_avg10=0.0)
    assert w.pressed(s)
    w.volatile(True)  # what run() does first on a pressed sample
    w.react(s)
    assert cache.pool.arena.volatile
    for _ in range(20):
        w.react(Sample(headroom=1 << 40, psi_some_avg10=0.0))
    assert cache.pool.pressure_cap is None and not cache.pool.arena.volatile

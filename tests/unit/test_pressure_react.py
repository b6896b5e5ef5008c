"""The pressure watcher's decisions, fed with synthetic samples (no cgroup needed)."""

from __future__ import annotations

from zcachefs import handoff
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
            handoff.compress_inline(cache, 200)
    handoff.compress_inline(cache, len(cache.pending.items))
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


# -- the watcher thread's first aid (issue 12, part 5) -----------------------------------


def test_first_aid_makes_the_pool_volatile_without_the_event_loop() -> None:
    """From another OS thread, with no trio loop at all: every slab becomes lazy-free
    and checks its checksums, so a page the kernel discards is a miss, never zeros;
    the arena's own `volatile` (which marks new writes) stays for the trio side."""
    import mmap
    import threading

    cache = filled_cache()
    pool = cache.pool
    keys = list(pool.lru)[:200]
    before = {key: pool.load(*key) for key in keys}
    for key, page in before.items():  # loads are exclusive: store them back
        assert page is not None
        pool.store(*key, page, cache.codec)
    w = watcher(cache)
    marked: list[int] = []
    t = threading.Thread(target=lambda: marked.append(w.first_aid()))
    t.start()
    t.join()
    slabs = [s for s in pool.arena.all if s.used]
    assert marked == [len(slabs)] and w.first_aids == 1
    assert all(s.lazy for s in pool.arena.all) and pool.arena.lazy
    assert not pool.arena.volatile
    assert w.first_aid() == 0  # once per episode
    # What reclaim does to a lazy-free page, done to one slab: its entries miss.
    victim = pool.lru[keys[0]].slab  # type: ignore[attr-defined]
    victim.buf.madvise(mmap.MADV_DONTNEED)
    lost = {k for k, e in pool.lru.items() if e.slab is victim}  # type: ignore[attr-defined]
    for key in keys:
        got = pool.load(*key)
        assert got is None if key in lost else got == before[key]
    # The trio side takes over: the arena agrees, then relief makes it ordinary again.
    w.volatile(True)
    assert pool.arena.volatile
    w.volatile(False)
    assert not pool.arena.volatile and not pool.arena.lazy
    assert w.first_aid() > 0  # a new episode may mark again


def test_first_aid_survives_slabs_unmapped_meanwhile() -> None:
    cache = filled_cache()
    pool = cache.pool
    w = watcher(cache)
    slab = next(iter(pool.arena.all))
    slab.buf.close()  # as if the trio thread unmapped it between snapshot and madvise
    try:
        assert w.first_aid() == len([s for s in pool.arena.all if s.used]) - 1
    finally:
        pool.arena.all.pop(slab)


def test_watcher_thread_acts_on_a_notification_while_the_loop_is_blocked() -> None:
    """The thread wakes on an event source (here an eventfd standing in for the cgroup
    threshold) and checks the headroom, with no event loop running: calm, nothing;
    under 2 x min_free, first aid (the slabs become volatile); under min_free, it also
    kicks the trio side."""
    import os
    import threading

    from tests.support.mounting import wait_until

    cache = filled_cache()
    w = watcher(cache)  # min_free 100 MiB
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    w._event_sources = lambda: [(efd, 1, "cgroup threshold")]  # type: ignore[method-assign]
    w._open_quick = lambda: None  # type: ignore[method-assign]
    w.interval = 60.0  # only the notification can wake it
    now = [1 << 40]
    checks: list[int] = []

    def quick() -> tuple[int, int]:
        checks.append(now[0])
        return now[0], 1 << 40  # far from the limit: no fast checks

    w._quick_headroom = quick  # type: ignore[method-assign]
    kicks = threading.Event()
    thread = w.start_thread(kicks.set)
    try:
        os.eventfd_write(efd, 1)  # a threshold event, but the headroom is fine
        assert wait_until(lambda: len(checks) == 1)
        assert w.first_aids == 0 and not kicks.is_set()
        now[0] = 150 * MB  # under 2 x min_free: first aid only
        os.eventfd_write(efd, 1)
        assert wait_until(lambda: w.first_aids == 1)
        assert all(s.lazy for s in cache.pool.arena.all) and not kicks.is_set()
        now[0] = 10 * MB  # under min_free: the trio side is woken
        os.eventfd_write(efd, 1)
        assert kicks.wait(60)
        assert w.first_aids == 1  # once per episode
    finally:
        w.stop_thread(thread)
    assert not thread.is_alive()


def test_the_watcher_reaches_the_pool_only_through_its_methods() -> None:
    """pressure.py is policy: it asks the Cache and the pool, never the slab arena."""
    import ast
    from pathlib import Path

    import zcachefs.pressure

    tree = ast.parse(Path(zcachefs.pressure.__file__).read_text())
    reached = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and n.attr in ("arena", "all", "bump", "buf")]
    assert not reached

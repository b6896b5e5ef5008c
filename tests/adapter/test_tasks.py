"""tasks.Compressor's compaction schedule, under trio's MockClock: the pool is compacted
once slots were freed, at most once a COMPACT_INTERVAL, and a look that came too early is
made up for by a timed sleep, not left until something else wakes the task."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from zcachefs import codecs, tasks
from zcachefs.cache import COMPACT_MIN_SLABS, Cache
from zcachefs.threads import ThreadPool

PS = 4096
LZ4 = codecs.get("lz4")


def _page(seed: int) -> bytes:
    return random.Random(seed).randbytes(1000) + bytes(PS - 1000)


def _punch_holes(cache: Cache, fid: int, n: int = 2000) -> None:
    """n pages stored, then 3 in 4 of them dropped: slots freed all over the slabs."""
    pool = cache.pool
    for i in range(n):
        assert pool.store(fid, i, _page(fid * n + i), LZ4)
    pool.invalidate_pages(fid, [i for i in range(n) if i % 4])


@pytest.fixture
def threads() -> Iterator[ThreadPool]:
    p = ThreadPool(2)
    yield p
    p.close()


@pytest.mark.trio
async def test_frees_are_compacted_at_most_once_an_interval_and_never_forgotten(
        autojump_clock: trio.testing.MockClock, threads: ThreadPool) -> None:
    cache = Cache(PS, 64 * PS, 64 << 20, PS // 2)
    pool = cache.pool
    _punch_holes(cache, 1)
    comp = tasks.Compressor(cache, threads)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(comp.run)
        await trio.sleep(0.01)
        first = pool.c.compacted_pages
        assert first > 0  # slots had been freed: compacted in the first round
        assert pool.arena.reclaimable() < COMPACT_MIN_SLABS
        t0 = trio.current_time()
        _punch_holes(cache, 2)  # new holes, and a wake-up, well inside the interval
        comp.wake()
        await trio.sleep(tasks.COMPACT_INTERVAL / 2)
        assert pool.c.compacted_pages == first  # not yet: once an interval at most
        # Nothing wakes the task again, yet the due compaction runs when the interval
        # is over (the idle task slept with a timeout instead of waiting forever).
        with trio.fail_after(tasks.COMPACT_INTERVAL + 1):
            while pool.c.compacted_pages == first:
                await trio.sleep(0.05)
        assert trio.current_time() - t0 <= tasks.COMPACT_INTERVAL + 0.1
        assert pool.arena.reclaimable() < COMPACT_MIN_SLABS
        comp.stop()
    assert all(pool.load(2, i) == _page(2 * 2000 + i) for i in range(0, 2000, 4))
    cache.close()


@pytest.mark.trio
async def test_an_idle_task_without_frees_sleeps_until_woken(
        autojump_clock: trio.testing.MockClock, threads: ThreadPool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(PS, 64 * PS, 64 << 20, PS // 2)
    looks = 0
    real = cache.compact_pool

    def counted(n: int) -> bool:
        nonlocal looks
        looks += 1
        return real(n)

    monkeypatch.setattr(cache, "compact_pool", counted)
    comp = tasks.Compressor(cache, threads)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(comp.run)
        await trio.sleep(60)  # a minute of nothing: no compaction look, no round
        assert looks == 0
        comp.stop()
    cache.close()

"""threads.ThreadPool: the worker threads of the blocking backing calls. It must behave
as trio.to_thread.run_sync with a CapacityLimiter did: results and exceptions come
back, at most `size` calls run at once, a started call is not abandoned on cancel."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator

import pytest
import trio

from zcachefs.threads import ThreadPool


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    p = ThreadPool(3)
    yield p
    p.close()


@pytest.mark.trio
async def test_a_call_returns_its_result_from_another_thread(pool: ThreadPool) -> None:
    assert await pool.run(threading.get_ident) != threading.get_ident()
    assert await pool.run(divmod, 17, 5) == (3, 2)


@pytest.mark.trio
async def test_a_call_raises_its_exception_here(pool: ThreadPool) -> None:
    def fail() -> None:
        raise OSError(5, "backing failed")

    with pytest.raises(OSError) as info:
        await pool.run(fail)
    assert info.value.errno == 5
    assert await pool.run(int, "7") == 7  # the worker survived it


@pytest.mark.trio
async def test_at_most_size_calls_run_at_once(pool: ThreadPool) -> None:
    lock = threading.Lock()
    together = threading.Barrier(3, timeout=10)  # fewer than 3 at once: BrokenBarrierError
    running, peak, results = 0, 0, []

    def job(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        together.wait()
        with lock:
            running -= 1
        return i

    async def one(i: int) -> None:
        results.append(await pool.run(job, i))

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(one, i)
    assert sorted(results) == list(range(12))
    assert peak == 3
    assert pool.started == 3


@pytest.mark.trio
async def test_threads_are_reused_for_sequential_calls(pool: ThreadPool) -> None:
    for _ in range(50):
        await pool.run(time.sleep, 0)
    assert pool.started == 1


@pytest.mark.trio
async def test_a_started_call_is_not_abandoned_on_cancel(pool: ThreadPool) -> None:
    started, finished = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.05)
        finished.set()
        return "done"

    got: list[str] = []
    scope = trio.CancelScope()

    async def call() -> None:
        with scope:
            got.append(await pool.run(slow))
            await trio.sleep(0)  # the cancel is delivered at the next checkpoint

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        while not started.is_set():  # cancel only once the call runs in its thread
            await trio.sleep(0.001)
        scope.cancel()
    assert scope.cancelled_caught
    assert finished.is_set() and got == ["done"]


@pytest.mark.trio
async def test_a_cancelled_caller_does_not_start_a_call(pool: ThreadPool) -> None:
    ran = threading.Event()
    with trio.CancelScope() as scope:
        scope.cancel()
        await pool.run(ran.set)
    assert not ran.is_set()


def test_the_pool_serves_one_trio_run_after_another() -> None:
    pool = ThreadPool(2)
    try:
        for n in (1, 2):
            assert trio.run(pool.run, pow, n, 3) == n ** 3
    finally:
        pool.close()


def test_close_ends_the_threads_and_refuses_new_calls() -> None:
    pool = ThreadPool(2)
    trio.run(pool.run, abs, -1)
    threads = [t for t in threading.enumerate() if t.name.startswith(pool.name)]
    assert threads
    pool.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="closed"):
        trio.run(pool.run, abs, -1)


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadPool(0)


@pytest.mark.trio
async def test_out_of_threads_queues_the_call_or_says_eagain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ThreadPool(4)
    try:
        real_start = threading.Thread.start
        monkeypatch.setattr(threading.Thread, "start", _refuse)
        with pytest.raises(OSError) as info:  # no thread at all: the call fails
            await pool.run(abs, -1)
        assert info.value.errno == errno.EAGAIN
        monkeypatch.setattr(threading.Thread, "start", real_start)
        assert await pool.run(abs, -2) == 2
        monkeypatch.setattr(threading.Thread, "start", _refuse)
        gate = threading.Event()
        results: list[int] = []

        async def one(i: int) -> None:
            results.append(await pool.run(lambda: gate.wait(5) and i))

        async with trio.open_nursery() as nursery:  # two calls, one thread: they queue
            nursery.start_soon(one, 1)
            nursery.start_soon(one, 2)
            await trio.sleep(0.05)
            gate.set()
        assert sorted(results) == [1, 2] and pool.started == 1
    finally:
        monkeypatch.undo()
        pool.close()


def _refuse(self: threading.Thread) -> None:
    raise RuntimeError("can't start new thread")

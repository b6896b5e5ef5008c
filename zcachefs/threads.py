"""The worker threads of the blocking backing calls: a lean pool of `threads` threads.

Role: `ThreadPool.run(fn, *args)` runs `fn` in a worker thread and returns (or raises)
what it did, as `trio.to_thread.run_sync(fn, *args, limiter=CapacityLimiter(size))`
does: at most `size` calls run at once, the others wait in FIFO order, and a call that
has started cannot be cancelled (its caller gets the result; the work is never
abandoned half done).

Why not trio.to_thread: on the project machine one of its calls cost ~150 us of CPU
(it renames the thread with prctl twice per job, takes a CapacityLimiter, and reports
through trio's wakeup socketpair), twice the whole FUSE round trip of a pool hit. Every
miss, write and metadata call pays it. Here a job goes through a SimpleQueue to an idle
worker, and the result comes back through one eventfd that a system task waits on and
that reschedules the waiting task: ~80 us (BENCHMARKS.md, 2026-12-02 "thread hop").

Imports trio (an adapter module). Thread-safe where it says so: workers touch only the
job queue, the result deque, the eventfd and the `_free` count (under `_lock`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")
_Job = tuple[trio.lowlevel.Task, Callable[..., Any], tuple[Any, ...]]


def _cannot_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class ThreadPool:
    """See the module docstring. Threads start on demand, up to `size`, and stay."""

    def __init__(self, size: int, name: str = "zcachefs worker") -> None:
        if size < 1:
            raise ValueError(f"a thread pool needs at least one thread, not {size}")
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[trio.lowlevel.Task, outcome.Outcome[Any]]] = \
            collections.deque()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self._free = 0  # workers idle or about to be, less the jobs queued for them
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None  # the run our reaper serves
        self._closed = False

    @property
    def wake_fd(self) -> int:
        """The eventfd a finished job signals (the request loop's spin watches it: a
        result makes the loop give trio its pass at once)."""
        return self._efd

    @property
    def started(self) -> int:
        """Worker threads started so far (at most `size`)."""
        return len(self._threads)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread; its exception is raised here."""
        if self._closed:
            raise RuntimeError("the thread pool is closed")
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller does not start
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:
            self._token = token
            trio.lowlevel.spawn_system_task(self._reap, name=f"{self.name} results")
        with self._lock:
            if self._free > 0:
                self._free -= 1
                start = False
            else:
                start = len(self._threads) < self.size
        if start:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"{self.name} {len(self._threads)}")
            try:
                thread.start()
            except RuntimeError:  # out of threads (RLIMIT_NPROC, memory): queue the job
                if not self._threads:
                    raise OSError(errno.EAGAIN, "cannot start a worker thread") from None
                log.warning("cannot start worker thread %d; %d serve the calls",
                            len(self._threads) + 1, len(self._threads))
            else:
                self._threads.append(thread)
        self._jobs.put((trio.lowlevel.current_task(), fn, args))
        result: T = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        return result

    def _work(self) -> None:
        """A worker thread: run jobs until the None that close() sends."""
        jobs, done, efd = self._jobs, self._done, self._efd
        while True:
            job = jobs.get()
            if job is None:
                return
            task, fn, args = job
            result = outcome.capture(fn, *args)
            del job, fn, args  # hold no reference to the call while idle
            with self._lock:
                self._free += 1
            done.append((task, result))
            del task, result
            try:
                os.eventfd_write(efd, 1)
            except OSError:  # closed under us: the process is ending
                return

    async def _reap(self) -> None:
        """The system task that hands finished jobs back to their tasks."""
        done, efd = self._done, self._efd
        try:
            while True:
                await trio.lowlevel.wait_readable(efd)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(efd)
                while done:
                    task, result = done.popleft()
                    trio.lowlevel.reschedule(task, result)
        except (trio.ClosedResourceError, OSError):
            return

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads (after the trio run: no call may be waiting), waiting at most
        `timeout` seconds in all. The eventfd is closed only if every thread has ended;
        one stuck in a backing call keeps it (and the process exits without it)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("%d worker thread(s) still in a backing call at unmount: %s",
                        len(stuck), ", ".join(stuck))
            return
        os.close(self._efd)

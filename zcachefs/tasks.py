"""The daemon's background work, as small task objects started by `mount`.

Role: each task has `async run()` (runs until cancelled or stopped) and `stop()`;
`mount._serve` starts them in the nursery it owns and cancels that nursery at unmount.

- `Compressor`: compresses the pages tier 1 evicted (in worker threads, in batches),
  keeps the pool in its limit, compacts it (at most once a second) and sweeps the file
  states the kernel forgot. The adapter calls `wake()` when pages wait for it.
- `HeapTrimmer`: gives malloc's free pages back to the OS while the cache is busy.
- `SignalWatcher`: SIGTERM, SIGINT and SIGHUP stop the mount cleanly, from before the
  mount exists (`install`) until the unmount is done.

Must not import pyfuse3 or psutil (what a task does to the session, it is handed as a
callable). Trio thread only, apart from what `run` hands to worker threads: immutable
values, and calls that touch no table (`CompressJob.run`, malloc_trim).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable

import trio

from . import handoff
from .cache import Cache
from .threads import ThreadPool

# Pages compressed per worker call by the background compressor: 64 x 16 KiB is ~1 ms
# of lz4, so the thread hop (~80 us of CPU) costs little.
COMPRESS_BATCH = 64
# Fewer pending bytes than this are compressed on the trio thread: a lone page (one
# 4 KiB write, one small miss) costs ~5-10 us of lz4 there, against a thread hop's
# ~80 us of CPU and two GIL handoffs.
COMPRESS_INLINE_BYTES = 64 << 10
# Pool entries evicted per shrink step before yielding to requests.
SHRINK_BATCH = 512
SWEEP_BATCH = 256  # forgotten file states looked at per background round
# Pool entries moved per compaction step (~3 us each), and seconds between looks for
# slabs to give back (the look costs ~20 us: not once per written page).
COMPACT_BATCH = 512
COMPACT_INTERVAL = 1.0
TRIM_INTERVAL = 10.0  # seconds between malloc_trim calls while the cache is in use
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Task:
    """run() runs `_loop` inside a cancel scope that stop() cancels (also before run)."""

    def __init__(self) -> None:
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            await self._loop()

    def stop(self) -> None:
        """Make run() return at its next checkpoint (or at once when it starts)."""
        self._scope.cancel()

    async def _loop(self) -> None:
        raise NotImplementedError


class Compressor(_Task):
    """Compress pages evicted from tier 1 in worker threads and keep the pool in its
    limit, in bounded batches; between rounds with nothing to do it sleeps until woken."""

    def __init__(self, cache: Cache, threads: ThreadPool) -> None:
        super().__init__()
        self.cache = cache
        self.threads = threads  # shared with the adapter's backing calls
        self._wakeup: trio.Event | None = None

    def wake(self) -> None:
        """Ask for a round now: pages wait, or a knob or memory pressure changed."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def _loop(self) -> None:
        cache = self.cache
        next_compact = 0.0
        frees_seen = 0
        while True:
            self._wakeup = trio.Event()
            job = handoff.compress_job(cache, COMPRESS_BATCH)
            if job is not None:
                if job.size < COMPRESS_INLINE_BYTES:
                    done = job.run()
                else:
                    done = await self.threads.run(job.run)
                handoff.admit(cache, done)
            evicted = 0
            while True:
                n, more = cache.shrink_pool(SHRINK_BATCH)
                evicted += n
                if not more:
                    break
                await trio.lowlevel.checkpoint()
            # Compaction is due once objects were freed since the last look (rewrites,
            # evictions, invalidations), at most once a COMPACT_INTERVAL.
            now = trio.current_time()
            due = cache.pool_frees != frees_seen
            if due and now >= next_compact:
                frees_seen = cache.pool_frees
                next_compact = now + COMPACT_INTERVAL
                due = False
                while cache.compact_pool(COMPACT_BATCH):
                    await trio.lowlevel.checkpoint()
            if cache.files.forgotten_count:
                cache.files.sweep(SWEEP_BATCH)
            if job is None and not evicted:
                # Idle: sleep until woken, or until a due compaction may run.
                with trio.move_on_after(next_compact - now if due else math.inf):
                    await self._wakeup.wait()
            else:
                await trio.lowlevel.checkpoint()


class HeapTrimmer(_Task):
    """Every `interval` seconds in which the cache was busy, give malloc's free pages
    back to the OS, in a worker thread (malloc_trim releases the GIL and walks the
    whole heap: 1-3 ms for 64-256 MiB here). Without it, freed read buffers and tier-1
    pages in the middle of the heap stay in RSS until memory pressure."""

    def __init__(self, cache: Cache, trim: Callable[[], None], threads: ThreadPool,
                 interval: float = TRIM_INTERVAL) -> None:
        super().__init__()
        self.cache = cache
        self.trim = trim
        self.threads = threads
        self.interval = interval

    async def _loop(self) -> None:
        last = -1
        while True:
            await trio.sleep(self.interval)
            busy = self.cache.activity()
            if busy != last:
                last = busy
                await self.threads.run(self.trim)


class SignalWatcher(_Task):
    """The stop signals, from before the mount until the unmount is done.

    `install()` (before mounting) sets handlers that only record a signal; `run()`
    then watches with trio's receiver (signalling `started` once it does, which is
    when readiness may be reported) and calls `on_signal(signum)` for the first
    signal, recorded earlier or received now. When `run` ends, trio puts the recording
    handlers back, so a signal during the unmount is recorded, not fatal.

    Without the early handlers, a SIGTERM between mounting and trio's signal receiver
    (systemd's stop right after READY=1, `systemctl restart` just after a start) took
    the default action: the daemon died and left a dead mount."""

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        super().__init__()
        self.on_signal = on_signal
        self.received: list[int] = []

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        with self._scope, trio.open_signal_receiver(*STOP_SIGNALS) as sigs:
            task_status.started()
            if self.received:
                signum = self.received[0]
            else:
                signum = await sigs.__anext__()
            self.on_signal(signum)

"""The memory-pressure watcher: the caches give way to applications, never the reverse.

Every `pressure_interval` seconds, and at once when the memory cgroup crosses its
warning threshold (a cgroup v1 usage threshold eventfd, where available), it measures
the headroom: the smaller of the system's MemAvailable and the cgroup's limit minus
its working set (usage minus inactive file pages, which the kernel reclaims first).
When the headroom is below `min_free`, or PSI memory "some avg10" is at least
`pressure_psi`, it first makes the pool's slabs volatile (MADV_FREE, see slabs.py: the
kernel may then take them back at reclaim speed, faster than any eviction), then caps
the pool below its memlimit by the deficit (and at least 1/8 of the pool and 1 MiB),
evicts at once, drops tier-1 pages for what the pool could not give, and returns freed
heap memory to the OS (malloc_trim); the pool's slabs are munmapped as they empty.
When the headroom is back above twice `min_free` and PSI is calm, the cap rises by 1/8
of memlimit per tick until it is lifted; then the slabs become ordinary memory again.
While they are volatile, the headroom does not count them as reclaimable, and the
entries on pages the kernel discarded are found with mincore and dropped.

Two halves. The *first aid* runs on its own OS thread, blocked in poll(2) on every
notification the kernel offers (a cgroup v1 usage-threshold eventfd, a PSI trigger on
the cgroup's memory.pressure or /proc/pressure/memory, cgroup v2 memory.events) and
sampling every interval: on pressure it makes the slabs volatile itself, without the
event loop, so the guarantee (applications never die for our cache) does not depend
on the trio thread being scheduled in time; then it wakes the trio task. The trio
task does everything that touches the cache's tables (cap, eviction, tier 1,
reconciling, relaxing). What the thread may touch is the rule in
docs/design.md ("Concurrency rules").

This module is the policy (when to react, and how much); `memory` does the measuring
(cgroup and system headroom, PSI, LazyFree, the notification descriptors), and the
cache carries the reactions out (`Cache.give_back`, `Cache.relax`, the pool's volatile
slabs). Adapter side: uses trio. Runs as a task in the daemon's nursery, which starts
and stops the thread; the thread touches nothing but what rule 6 allows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from . import memory, process
from .cache import Cache
from .slabs import Slab

log = logging.getLogger(__name__)

RECONCILE_BATCH = 512  # slabs checked between checkpoints in a full pass
RECONCILE_PER_TICK = 64  # slabs checked per calm tick: a 1 GiB pool every ~13 s
# The first-aid thread's nice value (root only; others keep theirs): it sleeps in
# poll(2) nearly always, and when it wakes, CPU hogs must not delay it.
THREAD_NICE = -10
# While the cgroup's usage (page cache included) is within REACH x min_free of its
# limit, the thread checks the headroom every FAST_INTERVAL seconds: usemem fills the
# last 2 x min_free (64 MiB of a 640 MiB cgroup) in ~30 ms at 2 GB/s, and the usage
# threshold event fired long before, when page cache filled the cgroup. Two preads
# per check (~30 us).
FAST_INTERVAL = 0.005
REACH = 4


@dataclass(frozen=True)
class Sample:
    headroom: int  # bytes that can still be allocated before reclaim trouble
    psi_some_avg10: float


class PressureWatcher:
    """See the module docstring."""

    def __init__(self, cache: Cache, min_free: int, psi_threshold: int, interval: float,
                 wake: Callable[[], None]) -> None:
        self.cache = cache
        self.min_free = min_free
        self.psi_threshold = psi_threshold
        self.interval = interval
        self.wake = wake
        self.cgroup = memory.cgroup_memory_dir()
        self.last_release_s = 0.0  # duration of the last release (pressure -> freed)
        self._scan: list[Slab] = []  # the slabs of the current reconcile pass
        self._scan_at = 0
        self.first_aids = 0  # times the thread made the pool volatile itself
        self._marked = False  # the thread marked the slabs; the trio side has not yet
        self._stop = threading.Event()
        self._stop_fd = -1
        self._kick: trio.Event | None = None
        self._quick: memory.QuickHeadroom | None = None

    # -- measuring -----------------------------------------------------------------

    def sample(self) -> Sample:
        headroom = memory.headroom(self.cgroup)
        if self.cache.pool.lazy:
            # Lazy-free pool pages count as inactive file memory (reclaimable) in both
            # figures: the pool's own would make the pressure look over while it lasts.
            headroom -= memory.lazy_free_bytes()
        return Sample(headroom, self._psi())

    def _psi(self) -> float:
        return memory.psi_some_avg10(self.cgroup) if self.psi_threshold else 0.0

    def _psi_hot(self, s: Sample) -> bool:
        return bool(self.psi_threshold) and s.psi_some_avg10 >= self.psi_threshold

    def pressed(self, s: Sample) -> bool:
        return s.headroom < self.min_free or self._psi_hot(s)

    # -- what the kernel took (volatile slabs) -------------------------------------

    def volatile(self, on: bool) -> None:
        """Hand the pool to the kernel (on, first thing under pressure: one madvise
        per slab, ~10 ms for a 256 MiB pool) or take it back (off, once the cap is
        lifted)."""
        pool = self.cache.pool
        if on == pool.volatile or not pool.can_volatile:
            return
        t0 = time.monotonic()
        pool.set_volatile(on)
        if not on:
            self._marked = False
        log.info("pool slabs %s in %.1f ms", "volatile (MADV_FREE): the kernel may take them"
                 if on else "ordinary memory again", (time.monotonic() - t0) * 1000)

    def reconcile_some(self, nslabs: int) -> int:
        """Check the next `nslabs` slabs of a round-robin pass for pages the kernel
        discarded, and drop their entries; returns how many entries."""
        pool = self.cache.pool
        if self._scan_at >= len(self._scan):
            self._scan, self._scan_at = pool.slabs(), 0
        batch = self._scan[self._scan_at:self._scan_at + nslabs]
        self._scan_at += nslabs
        return pool.drop_reclaimed(batch)

    async def reconcile_all(self) -> int:
        """A whole pass, in batches with checkpoints in between (a 10 GiB pool has
        40,000 slabs: ~0.1 s of mincore calls)."""
        self._scan, self._scan_at = [], 0
        lost = self.reconcile_some(RECONCILE_BATCH)
        while self._scan_at < len(self._scan):
            await trio.sleep(0)
            lost += self.reconcile_some(RECONCILE_BATCH)
        return lost

    # -- reacting (trio thread, no await inside) -----------------------------------

    def react(self, s: Sample, pressed: bool = False) -> int:
        """Apply one sample (`pressed`: the watcher thread saw pressure, whatever this
        sample says); returns bytes asked back (0 when none)."""
        pool = self.cache.pool
        deficit = self.min_free - s.headroom
        if pressed or self.pressed(s):
            t0 = time.monotonic()
            used = pool.mem_used_total
            # The pool gives the deficit, at least an eighth of what it holds.
            freed = self.cache.give_back(max(deficit, used // 8, 1 << 20), deficit)
            process.malloc_trim()
            self.last_release_s = time.monotonic() - t0
            log.info("memory pressure (headroom %d, min_free %d, psi %.1f): pool capped at "
                     "%d bytes (was using %d), tier 1 at %d pages, in %.1f ms",
                     s.headroom, self.min_free, s.psi_some_avg10, pool.pressure_cap, used,
                     self.cache.capacity, self.last_release_s * 1000)
            self.wake()
            return freed
        if s.headroom > 2 * self.min_free and not self._psi_hot(s):
            self._relax()
        return 0

    def _relax(self) -> None:
        if self.cache.relax():
            log.info("memory pressure over: pool limit back to %d bytes",
                     self.cache.pool.memlimit)
        if self.cache.pool.pressure_cap is None:
            self.volatile(False)

    # -- first aid (the watcher thread; no table is touched) -------------------------

    def first_aid(self) -> int:
        """Make every used page of every slab lazy-free, from any thread; returns the
        slabs marked (0 if the trio side had done it, the thread already did in this
        episode, or the pool cannot be volatile). Why this is safe without the trio
        thread: `slabs.SlabArena.mark_lazy_free` and rule 6 in docs/design.md. Slabs
        created afterwards, and slots written afterwards (a written page is dirty
        again), stay ordinary memory until the trio side calls set_volatile(True)."""
        pool = self.cache.pool
        if not pool.can_volatile or pool.volatile or self._marked:
            return 0
        self._marked = True
        marked = pool.mark_lazy_free()
        self.first_aids += 1
        return marked

    def _event_sources(self) -> list[tuple[int, int, str]]:
        """(fd, poll events, name) of every pressure notification available here."""
        return memory.notifications(self.cgroup, REACH * self.min_free, self.psi_threshold)

    def _open_quick(self) -> None:
        """Keep the cgroup's usage and memory.stat open for `_quick_headroom`."""
        self._quick = memory.QuickHeadroom.open(self.cgroup)

    def _quick_headroom(self) -> tuple[int, int] | None:
        """(headroom, limit - usage) of the cgroup: the cgroup part of `sample` in two
        preads on open files (see memory.QuickHeadroom)."""
        return None if self._quick is None else self._quick.read()

    def _thread_main(self, kick: Callable[[], None]) -> None:
        """The watcher thread. It wakes on any notification, every FAST_INTERVAL while
        the cgroup's usage is within REACH x min_free of its limit (page cache
        included: the usage threshold has fired long before an allocator arrives, so
        it cannot be the only signal), else every interval. Below 2 x min_free of
        headroom it gives first aid; below min_free it also wakes the trio task."""
        with contextlib.suppress(OSError):  # not root: the daemon's priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), THREAD_NICE)
        sources = self._event_sources()
        self._open_quick()
        poller = select.poll()
        names: dict[int, str] = {}
        for fd, mask, name in sources:
            poller.register(fd, mask)
            names[fd] = name
        poller.register(self._stop_fd, select.POLLIN)
        log.debug("pressure watcher thread: %s", ", ".join(names.values()) or "polling only")
        timeout = self.interval
        last_kick = -self.interval
        try:
            while not self._stop.is_set():
                ready = poller.poll(timeout * 1000)
                t0 = time.monotonic()
                if self._stop.is_set():
                    break
                for fd, _ in ready:
                    if fd in names:
                        memory.drain(fd, names[fd])
                quick = self._quick_headroom()
                if quick is None:
                    s = self.sample()
                    headroom, pressed = s.headroom, self.pressed(s)
                else:
                    headroom, room = quick
                    pressed = headroom < self.min_free
                    timeout = FAST_INTERVAL if room < REACH * self.min_free else self.interval
                if headroom >= 2 * self.min_free and not pressed:
                    continue
                marked = self.first_aid()
                if pressed and t0 - last_kick >= self.interval:
                    # At the onset, then at the trio task's own pace: each wake caps
                    # the pool by another eighth, so a kick per check (every 5 ms)
                    # would empty it in a fraction of a second.
                    last_kick = t0
                    kick()
                if marked:
                    log.info("memory short (headroom %d, min_free %d; woken by %s): %d slabs "
                             "volatile by the watcher thread in %.1f ms", headroom,
                             self.min_free, ", ".join(names[fd] for fd, _ in ready
                                                      if fd in names) or "its timer",
                             marked, (time.monotonic() - t0) * 1000)
        finally:
            for fd, _, _ in sources:
                os.close(fd)
            if self._quick is not None:
                self._quick.close()
                self._quick = None

    def _thread_run(self, kick: Callable[[], None]) -> None:
        try:
            self._thread_main(kick)
        except Exception:  # the trio task still samples every interval
            log.exception("pressure watcher thread failed; pressure is now seen only "
                          "every pressure_interval")

    def start_thread(self, kick: Callable[[], None]) -> threading.Thread:
        """Start the watcher thread; `kick` is called (on that thread) after first aid."""
        self._stop.clear()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        thread = threading.Thread(target=self._thread_run, args=(kick,),
                                  name="zcachefs-pressure", daemon=True)
        thread.start()
        return thread

    def stop_thread(self, thread: threading.Thread) -> None:
        self._stop.set()
        os.eventfd_write(self._stop_fd, 1)
        thread.join()
        os.close(self._stop_fd)
        self._stop_fd = -1

    # -- the task ------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every interval, or at once when the watcher thread saw pressure (it
        has made the pool volatile by then), until cancelled."""
        token = trio.lowlevel.current_trio_token()
        self._kick = trio.Event()

        def wake() -> None:
            if self._kick is not None:
                self._kick.set()

        def kick() -> None:  # on the watcher thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(wake)

        thread = self.start_thread(kick)
        try:
            while True:
                with trio.move_on_after(self.interval):
                    await self._kick.wait()
                # Kicked: the thread saw pressure (a sample, a PSI trigger or a cgroup
                # event) and gave first aid; this sample may already look calmer.
                kicked = self._kick.is_set()
                self._kick = trio.Event()
                s = self.sample()
                pressed = kicked or self.pressed(s)
                if pressed or (self._marked and not self.cache.pool.volatile):
                    # Make the arena's state agree with what the thread did (and mark
                    # slots written from now on); drop what the kernel already took,
                    # so that the pool's accounting (and the cap below) starts from
                    # the truth.
                    self.volatile(True)
                    if await self.reconcile_all():
                        s = self.sample()
                elif self.cache.pool.lazy:
                    self.reconcile_some(RECONCILE_PER_TICK)
                self.react(s, pressed)
        finally:
            self.stop_thread(thread)

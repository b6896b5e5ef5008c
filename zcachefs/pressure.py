"""The memory-pressure watcher: the caches give way to applications, never the reverse.

Every `pressure_interval` seconds, and at once when the memory cgroup crosses its
warning threshold (a cgroup v1 usage threshold eventfd, where available), it measures
the headroom: the smaller of the system's MemAvailable and the cgroup's limit minus
its working set (usage minus inactive file pages, which the kernel reclaims first).
When the headroom is below `min_free`, or PSI memory "some avg10" is at least
`pressure_psi`, it first makes the pool's slabs volatile (MADV_FREE, see pool.py: the
kernel may then take them back at reclaim speed, faster than any eviction), then caps
the pool below its memlimit by the deficit (and at least 1/8 of the pool), shrinks
tier 1 likewise, evicts at once and returns freed heap memory to the OS
(malloc_trim); the pool's slabs are munmapped as they empty. When the headroom is back
above twice `min_free` and PSI is calm, the cap rises by 1/8 of memlimit per tick until
it is lifted; then the slabs become ordinary memory again. While they are volatile,
the headroom does not count them as reclaimable, and the entries on pages the kernel
discarded are found with mincore and dropped.

Two halves. The *first aid* runs on its own OS thread, blocked in poll(2) on every
notification the kernel offers (a cgroup v1 usage-threshold eventfd, a PSI trigger on
the cgroup's memory.pressure or /proc/pressure/memory, cgroup v2 memory.events) and
sampling every interval: on pressure it makes the slabs volatile itself, without the
event loop, so the guarantee (applications never die for our cache) does not depend
on the trio thread being scheduled in time; then it wakes the trio task. The trio
task does everything that touches the cache's tables (cap, eviction, tier 1,
reconciling, relaxing), as before. What the thread may touch is the rule in
docs/design.md ("Concurrency rules").

Adapter side: uses trio and psutil. Runs as a task in the daemon's nursery, which
starts and stops the thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import trio

from . import process
from .cache import Cache
from .memory import cgroup_memory_dir
from .pool import Slab

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
_PAGE_MASK = mmap.PAGESIZE - 1


@dataclass(frozen=True)
class Sample:
    headroom: int  # bytes that can still be allocated before reclaim trouble
    psi_some_avg10: float


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _lazy_free_bytes() -> int:
    """This process's MADV_FREE pages not yet discarded (smaps_rollup LazyFree)."""
    for line in (_read("/proc/self/smaps_rollup") or "").splitlines():
        if line.startswith("LazyFree:"):
            return int(line.split()[1]) * 1024
    return 0


class PressureWatcher:
    """See the module docstring."""

    def __init__(self, cache: Cache, min_free: int, psi_threshold: int, interval: float,
                 wake: Callable[[], None]) -> None:
        self.cache = cache
        self.min_free = min_free
        self.psi_threshold = psi_threshold
        self.interval = interval
        self.wake = wake
        self.cgroup = cgroup_memory_dir()
        self.last_release_s = 0.0  # duration of the last release (pressure -> freed)
        self._scan: list[Slab] = []  # the slabs of the current reconcile pass
        self._scan_at = 0
        self.first_aids = 0  # times the thread made the pool volatile itself
        self._marked = False  # the thread marked the slabs; the trio side has not yet
        self._stop = threading.Event()
        self._stop_fd = -1
        self._kick: trio.Event | None = None
        self._quick: tuple[int, int, int, bytes] | None = None

    # -- measuring -----------------------------------------------------------------

    def sample(self) -> Sample:
        headroom = int(psutil.virtual_memory().available)
        cg = self._cgroup_headroom()
        if cg is not None:
            headroom = min(headroom, cg)
        if self.cache.pool.arena.lazy:
            # Lazy-free pool pages count as inactive file memory (reclaimable) in both
            # figures: the pool's own would make the pressure look over while it lasts.
            headroom -= _lazy_free_bytes()
        return Sample(headroom, self._psi())

    def _cgroup_headroom(self) -> int | None:
        d = self.cgroup
        if d is None:
            return None
        v2 = os.path.exists(os.path.join(d, "memory.max"))
        limit_s = _read(os.path.join(d, "memory.max" if v2 else "memory.limit_in_bytes"))
        usage_s = _read(os.path.join(d, "memory.current" if v2 else "memory.usage_in_bytes"))
        if not limit_s or not usage_s or limit_s.strip() == "max":
            return None
        limit, usage = int(limit_s), int(usage_s)
        if limit >= 1 << 60:
            return None
        inactive = 0
        stat = _read(os.path.join(d, "memory.stat")) or ""
        key = "inactive_file" if v2 else "total_inactive_file"
        for line in stat.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                inactive = int(value)
                break
        return limit - (usage - inactive)

    def _psi(self) -> float:
        if not self.psi_threshold:
            return 0.0
        text = _read(os.path.join(self.cgroup, "memory.pressure")) if self.cgroup else None
        text = text or _read("/proc/pressure/memory") or ""
        for line in text.splitlines():
            if line.startswith("some"):
                for field in line.split():
                    if field.startswith("avg10="):
                        return float(field[6:])
        return 0.0

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
        if on == pool.arena.volatile or not pool.arena.can_volatile:
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
            self._scan, self._scan_at = list(pool.arena.all), 0
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
            ask = max(deficit, used // 8, 1 << 20)
            cap = max(0, min(pool.limit, used) - ask)
            pool.set_pressure_cap(cap)
            while pool.needs_shrink:
                pool.shrink(4096)
                if not pool.last_scanned:
                    break
            excess = deficit - (used - pool.mem_used_total)
            if excess > 0:  # the pool alone was not enough: tier 1 gives way too
                self.cache.drop_oldest(excess // self.cache.page_size + 1)
            process.malloc_trim()
            self.cache.c.pressure_shrinks += 1
            self.last_release_s = time.monotonic() - t0
            log.info("memory pressure (headroom %d, min_free %d, psi %.1f): pool capped at "
                     "%d bytes (was using %d), tier 1 at %d pages, in %.1f ms",
                     s.headroom, self.min_free, s.psi_some_avg10, cap, used,
                     self.cache.capacity, self.last_release_s * 1000)
            self.wake()
            return used - pool.mem_used_total
        if s.headroom > 2 * self.min_free and not self._psi_hot(s):
            self._relax()
        return 0

    def _relax(self) -> None:
        pool = self.cache.pool
        if pool.pressure_cap is not None:
            cap = pool.pressure_cap + max(pool.memlimit // 8, 1 << 20)
            pool.set_pressure_cap(None if cap >= pool.memlimit else cap)
            if pool.pressure_cap is None:
                log.info("memory pressure over: pool limit back to %d bytes", pool.memlimit)
        if pool.pressure_cap is None:
            self.volatile(False)
        cache = self.cache
        if cache.capacity < cache.configured:
            cache.capacity = min(cache.configured, cache.capacity + max(1, cache.configured // 8))

    # -- first aid (the watcher thread; no table is touched) -------------------------

    def first_aid(self) -> int:
        """Make every used page of every slab lazy-free, from any thread; returns the
        slabs marked (0 if the trio side had done it or the pool cannot be volatile).

        Safe without the trio thread because it only (1) snapshots the set of slabs
        (list() of a dict is atomic under the GIL), (2) sets each slab's `lazy` flag
        *before* its madvise, so a load from then on checks checksums (the flag is
        never cleared), (3) calls madvise, which holds the GIL, so a slab the trio
        thread unmaps is either still mapped or raises ValueError, never reused
        memory. It does not set `arena.volatile`: a slab being created meanwhile would
        miss its `lazy` flag while its later writes were made lazy-free. Slabs created
        afterwards, and slots written afterwards (a written page is dirty again), stay
        ordinary memory until the trio side calls set_volatile(True)."""
        arena = self.cache.pool.arena
        if not arena.can_volatile or arena.volatile or self._marked:
            return 0
        self._marked = True
        arena.lazy = True
        marked = 0
        for slab in list(arena.all):
            slab.lazy = True
            extent = (slab.bump * slab.size + _PAGE_MASK) & ~_PAGE_MASK
            if not extent:
                continue
            try:
                slab.buf.madvise(mmap.MADV_FREE, 0, min(extent, len(slab.buf)))
            except (ValueError, OSError):  # unmapped meanwhile (or no MADV_FREE)
                continue
            marked += 1
        self.first_aids += 1
        return marked

    def _event_sources(self) -> list[tuple[int, int, str]]:
        """(fd, poll events, name) of every pressure notification available here."""
        out: list[tuple[int, int, str]] = []
        efd = self._threshold_eventfd()
        if efd is not None:
            out.append((efd, select.POLLIN, "cgroup threshold"))
        trig = self._psi_trigger()
        if trig is not None:
            out.append((trig, select.POLLPRI, "psi trigger"))
        if self.cgroup is not None and os.path.exists(os.path.join(self.cgroup, "memory.max")):
            try:
                fd = os.open(os.path.join(self.cgroup, "memory.events"),
                             os.O_RDONLY | os.O_CLOEXEC)
                os.read(fd, 4096)  # poll reports changes after the last read
                out.append((fd, select.POLLPRI, "memory.events"))
            except OSError:
                pass
        return out

    def _psi_trigger(self) -> int | None:
        """A PSI trigger: POLLPRI once tasks stalled on memory for pressure_psi percent
        of a window (the cgroup's memory.pressure under v2, else the system's)."""
        if not self.psi_threshold:
            return None
        window = 1_000_000 if os.geteuid() == 0 else 2_000_000  # us; others need 2 s
        stall = max(window * self.psi_threshold // 100, 10_000)
        paths = [os.path.join(self.cgroup, "memory.pressure")] if self.cgroup else []
        for path in [*paths, "/proc/pressure/memory"]:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.write(fd, f"some {stall} {window}\0".encode())
                return fd
            except OSError as exc:
                log.debug("no PSI trigger on %s: %s", path, exc)
                os.close(fd)
        return None

    def _open_quick(self) -> None:
        """Keep the cgroup's usage and memory.stat open for `_quick_headroom`."""
        d = self.cgroup
        self._quick = None
        if d is None:
            return
        v2 = os.path.exists(os.path.join(d, "memory.max"))
        limit_s = _read(os.path.join(d, "memory.max" if v2 else "memory.limit_in_bytes"))
        if not limit_s or limit_s.strip() == "max" or int(limit_s) >= 1 << 60:
            return
        try:
            usage = os.open(os.path.join(d, "memory.current" if v2 else
                                         "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            stat = os.open(os.path.join(d, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(usage)
            return
        key = b"\ninactive_file " if v2 else b"\ntotal_inactive_file "
        self._quick = (usage, stat, int(limit_s), key)

    def _quick_headroom(self) -> tuple[int, int] | None:
        """(headroom, limit - usage) of the cgroup: the cgroup part of `sample` in two
        preads on open files. Every system call lets go of the GIL, and on a busy
        daemon each costs a wait to get it back; the whole sample is ~12 of them."""
        if self._quick is None:
            return None
        usage_fd, stat_fd, limit, key = self._quick
        usage = int(os.pread(usage_fd, 32, 0))
        stat = b"\n" + os.pread(stat_fd, 1 << 14, 0)
        at = stat.find(key)
        inactive = int(stat[at + len(key):stat.index(b"\n", at + 1)]) if at >= 0 else 0
        return limit - (usage - inactive), limit - usage

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
                        self._drain(fd, names[fd])
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
                os.close(self._quick[0])
                os.close(self._quick[1])
                self._quick = None

    @staticmethod
    def _drain(fd: int, name: str) -> None:
        try:
            if name == "cgroup threshold":
                os.eventfd_read(fd)
            elif name == "memory.events":
                os.lseek(fd, 0, os.SEEK_SET)
                os.read(fd, 4096)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise

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
                if pressed or (self._marked and not self.cache.pool.arena.volatile):
                    # Make the arena's state agree with what the thread did (and mark
                    # slots written from now on); drop what the kernel already took,
                    # so that the pool's accounting (and the cap below) starts from
                    # the truth.
                    self.volatile(True)
                    if await self.reconcile_all():
                        s = self.sample()
                elif self.cache.pool.arena.lazy:
                    self.reconcile_some(RECONCILE_PER_TICK)
                self.react(s, pressed)
        finally:
            self.stop_thread(thread)

    def _threshold_eventfd(self) -> int | None:
        """cgroup v1: an eventfd the kernel signals when usage crosses limit - REACH x
        min_free (either way): the thread starts (or stops) checking every
        FAST_INTERVAL."""
        d = self.cgroup
        if d is None or not os.path.exists(os.path.join(d, "cgroup.event_control")):
            return None
        limit_s = _read(os.path.join(d, "memory.limit_in_bytes"))
        if not limit_s or int(limit_s) >= 1 << 60:
            return None
        threshold = max(int(limit_s) - REACH * self.min_free, 0)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ufd = os.open(os.path.join(d, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(os.path.join(d, "cgroup.event_control"), "w") as f:
                f.write(f"{efd} {ufd} {threshold}")
        except OSError as exc:
            log.debug("no cgroup threshold notification: %s", exc)
            os.close(efd)
            return None
        finally:
            os.close(ufd)
        return efd

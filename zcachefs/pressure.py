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

Adapter side: uses trio and psutil. Runs as a task in the daemon's nursery.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import trio

from . import backing
from .cache import Cache
from .memory import cgroup_memory_dir
from .pool import Slab

log = logging.getLogger(__name__)

RECONCILE_BATCH = 512  # slabs checked between checkpoints in a full pass
RECONCILE_PER_TICK = 64  # slabs checked per calm tick: a 1 GiB pool every ~13 s


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

    def react(self, s: Sample) -> int:
        """Apply one sample; returns bytes asked back (0 when none)."""
        pool = self.cache.pool
        deficit = self.min_free - s.headroom
        if self.pressed(s):
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
            backing.malloc_trim()
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

    # -- the task ------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every interval (or on a cgroup threshold event) until cancelled."""
        efd = self._threshold_eventfd()
        try:
            while True:
                if efd is None:
                    await trio.sleep(self.interval)
                else:
                    with trio.move_on_after(self.interval):
                        await trio.lowlevel.wait_readable(efd)
                        os.eventfd_read(efd)
                s = self.sample()
                if self.pressed(s):
                    self.volatile(True)
                    # Drop what the kernel already took, so that the pool's accounting
                    # (and the cap below) starts from the truth.
                    if await self.reconcile_all():
                        s = self.sample()
                elif self.cache.pool.arena.lazy:
                    self.reconcile_some(RECONCILE_PER_TICK)
                self.react(s)
        finally:
            if efd is not None:
                os.close(efd)

    def _threshold_eventfd(self) -> int | None:
        """cgroup v1: an eventfd the kernel signals when usage crosses limit - min_free,
        so a fast allocator is seen within milliseconds, not at the next poll."""
        d = self.cgroup
        if d is None or not os.path.exists(os.path.join(d, "cgroup.event_control")):
            return None
        limit_s = _read(os.path.join(d, "memory.limit_in_bytes"))
        if not limit_s or int(limit_s) >= 1 << 60:
            return None
        threshold = max(int(limit_s) - self.min_free, 0)
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

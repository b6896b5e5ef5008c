"""Measuring memory: what the daemon can use, how much headroom is left, and the
kernel's notifications that it is running out.

Sizes: physical RAM capped by the memory cgroup this process is in (cgroup v2
`memory.max` or v1 `memory.limit_in_bytes`, found from /proc/self/cgroup).
Headroom: MemAvailable, and the cgroup's limit minus its working set (usage minus
inactive file pages, which the kernel reclaims first); `QuickHeadroom` reads the
cgroup part in two preads. Pressure: PSI "some avg10" (the cgroup's memory.pressure,
else /proc/pressure/memory), this process's lazy-free bytes (smaps_rollup LazyFree).
Notifications, as descriptors to poll: a cgroup v1 usage-threshold eventfd, a PSI
trigger (POLLPRI), cgroup v2 memory.events (POLLPRI); `drain` re-arms them.

Only measures: when to react is `pressure`'s policy. Adapter side (uses psutil); must
not import pyfuse3 or trio, nor the cache. Thread-safe: functions keep no state, and a
QuickHeadroom belongs to the one thread that opened it.
"""

from __future__ import annotations

import errno
import logging
import os
import select

import psutil

log = logging.getLogger(__name__)

_V1 = "/sys/fs/cgroup/memory"
_V2 = "/sys/fs/cgroup"


def cgroup_memory_dir() -> str | None:
    """The memory cgroup directory of this process (v2 or v1), if one is mounted."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hier, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = os.path.join(_V1, path.lstrip("/"))
            if os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
                return d
        if hier == "0" and controllers == "":
            for base in (_V2, os.path.join(_V2, "unified")):
                d = os.path.join(base, path.lstrip("/"))
                if os.path.exists(os.path.join(d, "memory.max")):
                    return d
    return None


def cgroup_limit() -> int | None:
    """This process's memory cgroup limit in bytes, or None if unlimited/unknown."""
    d = cgroup_memory_dir()
    if d is None:
        return None
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            with open(os.path.join(d, name)) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        value = int(raw)
        return value if value < (1 << 60) else None
    return None


def usable_ram() -> int:
    """min(physical RAM, memory cgroup limit)."""
    total = int(psutil.virtual_memory().total)
    limit = cgroup_limit()
    return min(total, limit) if limit else total


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def read_text(path: str) -> str | None:
    """The whole file, or None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def is_v2(cgroup: str) -> bool:
    return os.path.exists(os.path.join(cgroup, "memory.max"))


def _limit(cgroup: str, v2: bool) -> int | None:
    raw = read_text(os.path.join(cgroup, "memory.max" if v2 else "memory.limit_in_bytes"))
    if not raw or raw.strip() == "max" or int(raw) >= 1 << 60:
        return None
    return int(raw)


# -- headroom ---------------------------------------------------------------------------

def available() -> int:
    """The system's MemAvailable."""
    return int(psutil.virtual_memory().available)


def cgroup_headroom(cgroup: str | None) -> int | None:
    """The cgroup's limit minus (usage - inactive file pages); None without a limit."""
    if cgroup is None:
        return None
    v2 = is_v2(cgroup)
    limit_s = read_text(os.path.join(cgroup, "memory.max" if v2 else "memory.limit_in_bytes"))
    usage_s = read_text(os.path.join(cgroup, "memory.current" if v2 else
                                     "memory.usage_in_bytes"))
    if not limit_s or not usage_s or limit_s.strip() == "max":
        return None
    limit, usage = int(limit_s), int(usage_s)
    if limit >= 1 << 60:
        return None
    inactive = 0
    stat = read_text(os.path.join(cgroup, "memory.stat")) or ""
    key = "inactive_file" if v2 else "total_inactive_file"
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            inactive = int(value)
            break
    return limit - (usage - inactive)


def headroom(cgroup: str | None) -> int:
    """Bytes that can still be allocated before reclaim trouble: the smaller of
    MemAvailable and the cgroup's headroom."""
    room = available()
    cg = cgroup_headroom(cgroup)
    return room if cg is None else min(room, cg)


def lazy_free_bytes() -> int:
    """This process's MADV_FREE pages not yet discarded (smaps_rollup LazyFree)."""
    for line in (read_text("/proc/self/smaps_rollup") or "").splitlines():
        if line.startswith("LazyFree:"):
            return int(line.split()[1]) * 1024
    return 0


def psi_some_avg10(cgroup: str | None) -> float:
    """PSI memory "some avg10" of the cgroup (v2), else of the system; 0.0 if none."""
    text = read_text(os.path.join(cgroup, "memory.pressure")) if cgroup else None
    text = text or read_text("/proc/pressure/memory") or ""
    for line in text.splitlines():
        if line.startswith("some"):
            for field in line.split():
                if field.startswith("avg10="):
                    return float(field[6:])
    return 0.0


class QuickHeadroom:
    """The cgroup's usage and memory.stat kept open: `read` is two preads. Every system
    call lets go of the GIL, and on a busy daemon each costs a wait to get it back; a
    whole `headroom` is ~12 of them."""

    def __init__(self, usage_fd: int, stat_fd: int, limit: int, key: bytes) -> None:
        self.usage_fd, self.stat_fd, self.limit, self.key = usage_fd, stat_fd, limit, key

    @classmethod
    def open(cls, cgroup: str | None) -> QuickHeadroom | None:
        """None without a cgroup limit or if its files cannot be opened."""
        if cgroup is None:
            return None
        v2 = is_v2(cgroup)
        limit = _limit(cgroup, v2)
        if limit is None:
            return None
        try:
            usage = os.open(os.path.join(cgroup, "memory.current" if v2 else
                                         "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stat = os.open(os.path.join(cgroup, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(usage)
            return None
        return cls(usage, stat, limit, b"\ninactive_file " if v2 else b"\ntotal_inactive_file ")

    def read(self) -> tuple[int, int]:
        """(headroom, limit - usage) of the cgroup."""
        usage = int(os.pread(self.usage_fd, 32, 0))
        stat = b"\n" + os.pread(self.stat_fd, 1 << 14, 0)
        key = self.key
        at = stat.find(key)
        inactive = int(stat[at + len(key):stat.index(b"\n", at + 1)]) if at >= 0 else 0
        return self.limit - (usage - inactive), self.limit - usage

    def close(self) -> None:
        os.close(self.usage_fd)
        os.close(self.stat_fd)


# -- notifications ----------------------------------------------------------------------

THRESHOLD = "cgroup threshold"
PSI_TRIGGER = "psi trigger"
EVENTS = "memory.events"


def threshold_eventfd(cgroup: str | None, below: int) -> int | None:
    """cgroup v1: an eventfd the kernel signals when usage crosses limit - `below`
    (either way)."""
    if cgroup is None or not os.path.exists(os.path.join(cgroup, "cgroup.event_control")):
        return None
    limit_s = read_text(os.path.join(cgroup, "memory.limit_in_bytes"))
    if not limit_s or int(limit_s) >= 1 << 60:
        return None
    threshold = max(int(limit_s) - below, 0)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    ufd = os.open(os.path.join(cgroup, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with open(os.path.join(cgroup, "cgroup.event_control"), "w") as f:
            f.write(f"{efd} {ufd} {threshold}")
    except OSError as exc:
        log.debug("no cgroup threshold notification: %s", exc)
        os.close(efd)
        return None
    finally:
        os.close(ufd)
    return efd


def psi_trigger(cgroup: str | None, percent: int) -> int | None:
    """A PSI trigger: POLLPRI once tasks stalled on memory for `percent` of a window
    (the cgroup's memory.pressure under v2, else the system's)."""
    window = 1_000_000 if os.geteuid() == 0 else 2_000_000  # us; others need 2 s
    stall = max(window * percent // 100, 10_000)
    paths = [os.path.join(cgroup, "memory.pressure")] if cgroup else []
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


def events_fd(cgroup: str | None) -> int | None:
    """cgroup v2: memory.events, read once (poll reports changes after the last read)."""
    if cgroup is None or not is_v2(cgroup):
        return None
    try:
        fd = os.open(os.path.join(cgroup, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.read(fd, 4096)
    except OSError:
        os.close(fd)
        return None
    return fd


def notifications(cgroup: str | None, threshold_below: int, psi_percent: int
                  ) -> list[tuple[int, int, str]]:
    """(fd, poll events, name) of every pressure notification available here (no PSI
    trigger when psi_percent is 0)."""
    out: list[tuple[int, int, str]] = []
    efd = threshold_eventfd(cgroup, threshold_below)
    if efd is not None:
        out.append((efd, select.POLLIN, THRESHOLD))
    trig = psi_trigger(cgroup, psi_percent) if psi_percent else None
    if trig is not None:
        out.append((trig, select.POLLPRI, PSI_TRIGGER))
    fd = events_fd(cgroup)
    if fd is not None:
        out.append((fd, select.POLLPRI, EVENTS))
    return out


def drain(fd: int, name: str) -> None:
    """Consume a notification so that poll waits for the next one."""
    try:
        if name == THRESHOLD:
            os.eventfd_read(fd)
        elif name == EVENTS:
            os.lseek(fd, 0, os.SEEK_SET)
            os.read(fd, 4096)
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise

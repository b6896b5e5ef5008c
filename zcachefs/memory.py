"""What memory the daemon can really use: physical RAM capped by its memory cgroup.

Reads cgroup v2 (`memory.max`) or v1 (`memory.limit_in_bytes`) for the cgroup this
process is in, from /proc/self/cgroup. Adapter side (uses psutil).
"""

from __future__ import annotations

import os

import psutil

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

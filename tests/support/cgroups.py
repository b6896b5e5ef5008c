"""Where the cgroup hierarchies are mounted: the memory cgroups of
tests/mount/test_pressure.py and the budgets of scripts/benchlib/cgroup.py both start here.

Reads /proc/self/mountinfo through tests.support.mountinfo; changes nothing. Safe from
any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.support import mountinfo


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy."""

    mountpoint: str  # unescaped (a space is a space)
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # its super options: the v1 controllers ("memory", "blkio")


def hierarchies() -> list[Hierarchy]:
    """Every mount of a cgroup (v1) or cgroup2 file system, in mountinfo's order."""
    return [Hierarchy(m.mountpoint.replace("\\040", " "), m.fstype, frozenset(m.super_options))
            for m in mountinfo.read() if m.fstype in ("cgroup", "cgroup2")]

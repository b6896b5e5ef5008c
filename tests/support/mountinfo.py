"""The one parser of /proc/PID/mountinfo (proc(5)): every helper that asks which mount is
where (tests.support.mounting, tests/mount/test_pressure.py, tests/mount/test_service.py,
scripts/benchlib/cgroup.py) reads the lines through `read()`.

Mount points are given as the kernel spells them (a space is `\\040`); callers compare
them with the paths they made, which have no such characters, or unescape them
themselves. Pure functions of text, safe from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SELF = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class MountInfo:
    """One line of mountinfo, the fields the tests and scripts use."""

    majmin: str  # "major:minor" of the file system (its fusectl connection is the minor)
    mountpoint: str  # as mountinfo spells it
    fstype: str  # e.g. "fuse.zcachefs", "cgroup2"
    source: str  # what was mounted ("mysrc", "/dev/sda1")
    super_options: list[str]  # the per-superblock options (may be empty)


def parse(text: str) -> list[MountInfo]:
    """Every mount in `text`, in its order (a later line is stacked on an earlier one)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        sep = fields.index("-")
        opts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        out.append(MountInfo(fields[2], fields[4], fields[sep + 1], fields[sep + 2], opts))
    return out


def read(path: str | Path = SELF) -> list[MountInfo]:
    """The mounts of /proc/self/mountinfo (or of another process's mountinfo file)."""
    return parse(Path(path).read_text())


def top(target: str | Path, path: str | Path = SELF) -> MountInfo | None:
    """The mount on top at `target` (None: nothing is mounted there)."""
    found = None
    for entry in read(path):
        if entry.mountpoint == str(target):
            found = entry
    return found

"""A live mount's control directory as a user's program sees it: read a counter or a
knob, write a knob (tests/mount/test_durability.py and test_pressure.py; the fuller helpers
of the control surface stay in tests/mount/test_control_mount.py).

Plain file I/O on the mount; no zcachefs imports. Safe from any thread.
"""

from __future__ import annotations

import os
from pathlib import Path

CONTROL = ".zcachefs"  # the default name of the control directory (-o control=NAME)


def ctl(mnt: Path, name: str, control: str = CONTROL) -> int:
    """The value of the counter or knob `name`, as a whole number."""
    return int(float((mnt / control / name).read_text()))


def set_ctl(mnt: Path, name: str, value: str, control: str = CONTROL) -> None:
    """Write `value` (and a newline) to the knob `name`, in one write()."""
    fd = os.open(mnt / control / name, os.O_WRONLY)
    try:
        os.write(fd, value.encode() + b"\n")
    finally:
        os.close(fd)

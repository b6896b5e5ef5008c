"""Start and stop real zcachefs mounts for tests and scripts; never leave one behind.

Without fuse3 or /dev/fuse, `Mount.start` skips the test with the reason. A `Mount` runs
the daemon in the foreground in a subprocess (stderr to a log file),
waits for the mount to appear in /proc/self/mountinfo (never stat()ing the mountpoint,
which hangs on a stuck daemon), and on teardown unmounts with `fusermount3 -u`, then
aborts the connection through fusectl and `fusermount3 -uz` if the daemon is stuck,
and reaps the process. The one `start` serves every kind of mount: a subclass changes
only the command line (`argv`: a cgroup launcher in front in tests/mount/test_pressure.py,
a budget and ramfs.py in scripts/benchlib/run.py) and the class attributes below.

Used by scripts/ too: pytest is imported only when a test is to be skipped. A Mount is
driven from one thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from tests.support import mountinfo

FUSECTL = Path("/sys/fs/fuse/connections")


def fuse_missing() -> str | None:
    """Why real mounts cannot be made here (None: they can)."""
    if shutil.which("fusermount3") is None:
        return "fuse3 (fusermount3) is not installed"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no fuse module, or a container without it)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no permission to open /dev/fuse"
    return None


def require_fuse() -> None:
    """Skip the calling test, with the reason, when real mounts cannot be made."""
    reason = fuse_missing()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def mount_entry(mountpoint: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(major:minor, fstype) of the mount at `mountpoint`, from /proc/self/mountinfo."""
    entry = mountinfo.top(os.path.abspath(mountpoint))
    return None if entry is None else (entry.majmin, entry.fstype)


def is_fuse_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    entry = mount_entry(mountpoint)
    return entry is not None and entry[1].startswith("fuse")


def ensure_fusectl() -> None:
    if fuse_missing() is None and FUSECTL.is_dir() and not any(FUSECTL.iterdir()):
        with contextlib.suppress(OSError):  # no mount(8): nothing to abort with
            subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)],
                           stderr=subprocess.DEVNULL, check=False)


def force_unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Release a stuck mount: abort its connection, then lazy-unmount."""
    entry = mount_entry(mountpoint)
    if entry is None or not entry[1].startswith("fuse"):
        return
    ensure_fusectl()
    minor = entry[0].split(":")[1]
    abort = FUSECTL / minor / "abort"
    with contextlib.suppress(OSError):
        abort.write_text("1")
    subprocess.run(["fusermount3", "-uz", str(mountpoint)], stderr=subprocess.DEVNULL,
                   check=False)


def wait_until(pred: object, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


class Mount:
    """One zcachefs daemon serving `source` at `mountpoint`."""

    mount_timeout = 10.0  # seconds for the mount to appear in mountinfo
    new_session = False  # start the daemon in a session of its own (scripts' budgets)

    def __init__(self, source: Path, mountpoint: Path, options: str = "",
                 log: Path | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.options = options
        self.log = log or mountpoint.parent / f"{mountpoint.name}.log"
        self.env = {**os.environ, **(env or {})}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The daemon's command line: zcachefs in the foreground."""
        args = [sys.executable, "-m", "zcachefs", "-f", *self.extra_args]
        if self.options:
            args += ["-o", self.options]
        return [*args, str(self.source), str(self.mountpoint)]

    def mount_error(self, ok: bool) -> str:
        """The error when the daemon did not mount (`ok`: it exited or it mounted)."""
        return f"zcachefs did not mount (ok={ok}):\n{self.read_log()}"

    def check(self) -> None:
        """Before starting: skip the test, with the reason, if mounts cannot be made."""
        require_fuse()

    def start(self) -> Self:
        self.check()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf, env=self.env,
                                         start_new_session=self.new_session)
        ok = wait_until(lambda: is_fuse_mounted(self.mountpoint)
                        or self.proc is None or self.proc.poll() is not None,
                        timeout=self.mount_timeout)
        if not is_fuse_mounted(self.mountpoint):
            self.stop()
            raise RuntimeError(self.mount_error(ok))
        return self

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int | None:
        """Unmount and reap; returns the daemon's exit status (None if it was killed)."""
        if is_fuse_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                           stderr=subprocess.DEVNULL, check=False, timeout=timeout)
        status = None
        if self.proc is not None:
            try:
                status = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                force_unmount(self.mountpoint)
                try:
                    status = self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        force_unmount(self.mountpoint)
        return status

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def control_stats(mountpoint: Path, control: str = ".zcachefs") -> dict[str, float]:
    """Every counter of a live mount, from its stats.json control file."""
    values: dict[str, float] = json.loads((mountpoint / control / "stats.json").read_text())
    return values


def settle(mountpoint: Path, timeout: float = 20.0, control: str = ".zcachefs",
           page: int | None = None) -> dict[str, float]:
    """Counters once the background compressor has drained tier 1's overflow and two
    readings in a row agree (nothing is moving any more)."""
    if page is None:
        page = int((mountpoint / control / "page_size").read_text())
    deadline = time.monotonic() + timeout
    last = None
    while True:
        s = control_stats(mountpoint, control)
        if s == last and s["cache_pages"] * page <= s["cache_size"]:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"the counters did not settle: {s}")
        last = s
        time.sleep(0.05)

"""What scripts/bench and scripts/demo both run: the progress log, signal handling that
lets cleanup finish, dropping the kernel's caches, loading the tools outside the budget, a FUSE
daemon started inside a budget, and reading a mount's stats.json without hanging on
a stuck daemon."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.mounting import Mount, is_fuse_mounted

from . import cgroup

REPO = Path(__file__).resolve().parent.parent.parent
MiB = 1 << 20


class Log:
    """Progress lines, timestamped from the start, on stdout and in a log file."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "a")  # noqa: SIM115  # closed at exit
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()



class Interrupted(BaseException):
    """SIGTERM / SIGHUP / SIGINT: stop, clean up, exit 130."""


def on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_blocked() -> Any:
    """Let cleanup finish even if the user presses Ctrl-C again."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def warm_tools() -> None:
    """After dropping the caches, load the programs every configuration runs (fio and its
    libraries, Python and the modules of the daemons) outside the budget: the budget's
    disk reads and memory are then the data's, the same for every configuration."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["fio", "--name=warm", "--filename=/dev/zero", "--rw=read",
                        "--bs=4k", "--size=64k", "--ioengine=psync", "--output-format=json",
                        "--output=/dev/null"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)
        subprocess.run([sys.executable, "-c", "import zcachefs.cli, zcachefs.mount, "
                        "zcachefs.fs, pyfuse3, trio, lz4.block, lzo, psutil, json, argparse, "
                        "sqlite3, random, subprocess, dataclasses"],
                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60, check=False)
        subprocess.run(["sh", "-c", "cat /dev/null; dd if=/dev/null of=/dev/null 2>/dev/null; "
                        "grep -c x /dev/null; iozone -v"], timeout=60, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(Path(__file__).with_name("apps.py"), "rb") as f:
            f.read()


def human(n: float) -> str:
    """1073741824 -> '1G', 402653184 -> '384M', 403058688 -> '384.4M'."""
    for unit, size in (("G", 1 << 30), ("M", MiB), ("K", 1024)):
        if n >= size:
            return f"{round(n / size, 1):g}{unit}"
    return str(int(n))


# -- the daemon in the budget -----------------------------------------------------------

class BudgetMount(Mount):
    """A FUSE daemon (zcachefs or ramfs) started inside a budget, in a session of its
    own; tests.support.mounting's Mount starts it and does the unmounting (fusermount3
    -u, abort + -uz when stuck, reap)."""

    new_session = True

    def __init__(self, cmd: list[str], mountpoint: Path, log: Path,
                 budget: cgroup.Budget | cgroup.NoBudget, timeout: float) -> None:
        super().__init__(Path("/"), mountpoint, log=log)
        self.cmd = cmd
        self.budget = budget
        self.mount_timeout = timeout

    def argv(self) -> list[str]:
        return self.budget.wrap(self.cmd)

    def check(self) -> None:
        """The bench checked fuse3 and root itself: nothing to skip here."""

    def mount_error(self, ok: bool) -> str:
        return f"{self.cmd[1]} did not mount:\n{self.read_log()[-2000:]}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and \
            is_fuse_mounted(self.mountpoint)

    def cpu_seconds(self, path: str = "stat") -> float:
        """utime + stime of the daemon, all its threads (of its main thread alone with
        path="task/PID/stat": the trio thread that answers every FUSE request)."""
        try:
            text = Path(f"/proc/{self.pid}/{path.replace('PID', str(self.pid))}").read_text()
        except OSError:
            return float("nan")
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        return out


def resident_bytes(directory: Path) -> int:
    """Bytes of the regular files under `directory` that are in the page cache
    (mincore of a private mapping of each: nothing is faulted in)."""
    import mmap

    from zcachefs.slabs import resident_pages

    total = 0
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.is_symlink() or not path.stat().st_size:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
            total += sum(b & 1 for b in resident_pages(m)) * mmap.PAGESIZE
    return total


def stats_kind(name: str) -> str:
    """'counter' or 'gauge', from zcachefs's own table of counters."""
    from zcachefs import stats

    return stats.COUNTERS.get(name, ("gauge", ""))[0]


def read_stats(mnt: Path) -> dict[str, float]:
    """The mount's stats.json, read by a child process (a stuck daemon cannot hang us:
    the child is killed after the timeout)."""
    try:
        out = subprocess.run(["cat", str(mnt / ".zcachefs" / "stats.json")], check=True,
                             capture_output=True, timeout=15).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, ValueError, OSError):
        return {}

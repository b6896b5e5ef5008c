"""One memory budget and one slow disk for everything a configuration runs.

A `Budget` is a memory cgroup (limit = the budget, swap off) plus an io cgroup that
throttles reads of one block device, in whichever hierarchy each controller is mounted:
cgroup v2 (`memory.max`, `memory.peak`, `io.max`, `io.stat`) on most machines, or the
v1 `memory` and `blkio` hierarchies (`memory.limit_in_bytes`,
`memory.max_usage_in_bytes`, `blkio.throttle.read_{bps,iops}_device`). `detect()`
finds them from /proc/self/mountinfo (through tests.support.cgroups, which
tests/mount/test_pressure.py uses too); a controller that is missing is an error, never
a silent unbudgeted run.

Processes join by `wrap(cmd)`: a shell writes its PID into every cgroup.procs, then
execs the command, so the daemon and fio are charged from their first page (the page
cache they cause included: the kernel charges a page to the cgroup of the process that
faults it in). Budgets are named zcachefs-bench-<our pid>-<label>; `remove_stale()`
removes those of benchmarks that died, once empty.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import mountinfo
from tests.support.cgroups import hierarchies

PREFIX = "zcachefs-bench-"


class CgroupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Controller:
    name: str  # "memory" or "io"
    version: int  # 1 or 2
    root: Path  # the hierarchy's mount point


def detect() -> dict[str, Controller]:
    """The memory and io controllers, preferring cgroup v2 where it has them."""
    found: dict[str, Controller] = {}
    for h in hierarchies():
        mnt, fstype = h.mountpoint, h.fstype
        if fstype != "cgroup2":
            continue
        try:
            controllers = set(Path(mnt, "cgroup.controllers").read_text().split())
        except OSError:
            continue
        for name in ("memory", "io"):
            if name in controllers and name not in found:
                found[name] = Controller(name, 2, Path(mnt))
    for h in hierarchies():
        mnt, fstype, opts = h.mountpoint, h.fstype, h.options
        if fstype != "cgroup":
            continue
        if "memory" in opts and "memory" not in found:
            found["memory"] = Controller("memory", 1, Path(mnt))
        if "blkio" in opts and "io" not in found:
            found["io"] = Controller("io", 1, Path(mnt))
    missing = {"memory", "io"} - set(found)
    if missing:
        raise CgroupError(f"no cgroup {' or '.join(sorted(missing))} controller is mounted "
                          "(need cgroup v2 with memory and io, or v1 memory and blkio)")
    return found


def describe(ctrls: dict[str, Controller]) -> str:
    return ", ".join(f"{c.name}: cgroup v{c.version} at {c.root}" for c in ctrls.values())


def block_device(path: Path) -> tuple[int, int, str]:
    """(major, minor, name) of the whole disk that holds `path`, for the throttle."""
    st = os.stat(path)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysdir = Path("/sys/dev/block", majmin)
    if not sysdir.exists():
        # btrfs, overlay...: st_dev is anonymous; take the mount's source device.
        best, source = "", ""
        target = os.path.realpath(path)
        for entry in mountinfo.read():
            mnt = entry.mountpoint
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and \
                    len(mnt) >= len(best):
                best, source = mnt, entry.source
        try:
            rdev = os.stat(source).st_rdev if source.startswith("/dev/") else 0
        except OSError:
            rdev = 0
        if not rdev:
            raise CgroupError(f"{path} is not on a block device (mounted from {source!r}); "
                              "put --workdir on a disk so its reads can be throttled")
        majmin = f"{os.major(rdev)}:{os.minor(rdev)}"
        sysdir = Path("/sys/dev/block", majmin)
    if (sysdir / "partition").exists():  # throttles apply to whole disks
        sysdir = sysdir.resolve().parent
        majmin = (sysdir / "dev").read_text().strip()
    major, minor = (int(x) for x in majmin.split(":"))
    return major, minor, sysdir.resolve().name


class Budget:
    """A memory + io cgroup pair; see the module docstring."""

    def __init__(self, ctrls: dict[str, Controller], label: str, mem_bytes: int,
                 device: tuple[int, int], read_bps: int, read_iops: int) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{label}"
        self.dirs: dict[str, Path] = {}
        self.mem = ctrls["memory"]
        self.io = ctrls["io"]
        self.device = f"{device[0]}:{device[1]}"
        self._peak_fd: int | None = None
        self.peak_resettable = True
        for c in (self.mem, self.io):
            d = c.root / self.name
            if c.version == 2:
                _enable_subtree(c.root, c.name)
            if d not in self.dirs.values():
                d.mkdir()
            self.dirs[c.name] = d
        try:
            self._configure(mem_bytes, read_bps, read_iops)
        except BaseException:
            self.remove()
            raise

    def _configure(self, mem_bytes: int, read_bps: int, read_iops: int) -> None:
        m = self.dirs["memory"]
        if self.mem.version == 2:
            _write(m / "memory.max", str(mem_bytes))
            if (m / "memory.swap.max").exists():
                _write(m / "memory.swap.max", "0")
            self._peak_fd = os.open(m / "memory.peak", os.O_RDWR) \
                if (m / "memory.peak").exists() else None
        else:
            _write(m / "memory.limit_in_bytes", str(mem_bytes))
            if (m / "memory.memsw.limit_in_bytes").exists():
                with contextlib.suppress(OSError):
                    _write(m / "memory.memsw.limit_in_bytes", str(mem_bytes))
        i = self.dirs["io"]
        if self.io.version == 2:
            parts = [f"rbps={read_bps}" if read_bps else "", f"riops={read_iops}"
                     if read_iops else ""]
            if any(parts):
                _write(i / "io.max", f"{self.device} {' '.join(p for p in parts if p)}")
        else:
            if read_bps:
                _write(i / "blkio.throttle.read_bps_device", f"{self.device} {read_bps}")
            if read_iops:
                _write(i / "blkio.throttle.read_iops_device", f"{self.device} {read_iops}")

    # -- joining -----------------------------------------------------------------------

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside the budget (a shell joins, then execs it: same PID), with a
        file-descriptor limit that lets fio keep thousands of files open."""
        script = 'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 111; shift; done; ' \
                 'shift; ulimit -n 65536 2>/dev/null; exec "$@"'
        return ["sh", "-c", script, "sh", *self.procs_files(), "--", *cmd]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files():
            with contextlib.suppress(OSError):
                out.update(int(x) for x in Path(f).read_text().split())
        return sorted(out)

    # -- readings ----------------------------------------------------------------------

    def reset_peak(self) -> None:
        m = self.dirs["memory"]
        try:
            if self.mem.version == 1:
                _write(m / "memory.max_usage_in_bytes", "0")
            elif self._peak_fd is not None:
                os.write(self._peak_fd, b"reset\n")  # per-fd reset, Linux >= 6.12
            else:
                self.peak_resettable = False
        except OSError:
            self.peak_resettable = False

    def peak(self) -> int:
        """Highest memory charge since reset_peak (since creation where the kernel cannot
        reset it; see peak_resettable)."""
        m = self.dirs["memory"]
        if self.mem.version == 1:
            return int((m / "memory.max_usage_in_bytes").read_text())
        if self._peak_fd is not None:
            return int(os.pread(self._peak_fd, 64, 0).decode())
        return int((m / "memory.current").read_text())

    def usage(self) -> int:
        m = self.dirs["memory"]
        name = "memory.usage_in_bytes" if self.mem.version == 1 else "memory.current"
        return int((m / name).read_text())

    def breakdown(self) -> dict[str, int]:
        """What the budget holds now, in bytes, from memory.stat: anonymous memory (anon;
        v1 rss: the daemon's heap, tier 1 and zcachefs's pool, whose slabs are private
        anonymous mappings, MAP_PRIVATE | MAP_ANONYMOUS in zcachefs/pool.py), shared
        memory (shmem: tmpfs and shm; zcachefs has none) and page cache proper (file: the
        kernel's cache of files, shmem excluded)."""
        m = self.dirs["memory"]
        names = ({"cache": "file", "rss": "anon", "shmem": "shmem"} if self.mem.version == 1
                 else {"file": "file", "anon": "anon", "shmem": "shmem"})
        out = {}
        with contextlib.suppress(OSError):
            for line in (m / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in names:
                    out[names[key]] = int(value)
        if "file" in out and "shmem" in out:  # both versions count shmem as file cache
            out["file"] -= out["shmem"]
        return out

    def oom_kills(self) -> int:
        m = self.dirs["memory"]
        name = "memory.oom_control" if self.mem.version == 1 else "memory.events"
        with contextlib.suppress(OSError):
            for line in (m / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def disk_read_bytes(self) -> int:
        """Bytes this cgroup read from the throttled device."""
        i = self.dirs["io"]
        with contextlib.suppress(OSError):
            if self.io.version == 1:
                for line in (i / "blkio.throttle.io_service_bytes").read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == self.device and parts[1] == "Read":
                        return int(parts[2])
            else:
                for line in (i / "io.stat").read_text().splitlines():
                    if line.startswith(self.device + " "):
                        m = re.search(r"\brbytes=(\d+)", line)
                        if m:
                            return int(m.group(1))
        return 0

    # -- teardown ----------------------------------------------------------------------

    def remove(self, timeout: float = 10.0) -> bool:
        """rmdir the cgroups once their processes are gone; True if all are removed."""
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
        ok = True
        for d in dict.fromkeys(self.dirs.values()):
            ok = _rmdir(d, timeout) and ok
        return ok


class NoBudget:
    """No cgroup at all (a container without memory/io controllers): the same calls as
    a Budget, that run commands as they are and read nothing."""

    name = "none"
    peak_resettable = False

    def wrap(self, cmd: list[str]) -> list[str]:
        return list(cmd)

    def reset_peak(self) -> None:
        pass

    def peak(self) -> int:
        return 0

    def usage(self) -> int:
        return 0

    def breakdown(self) -> dict[str, int]:
        return {}

    def oom_kills(self) -> int:
        return 0

    def disk_read_bytes(self) -> int:
        return 0

    def remove(self, timeout: float = 10.0) -> bool:
        return True


def _rmdir(d: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            d.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _enable_subtree(root: Path, controller: str) -> None:
    ctl = root / "cgroup.subtree_control"
    if controller not in ctl.read_text().split():
        try:
            _write(ctl, f"+{controller}")
        except OSError as exc:
            raise CgroupError(f"cannot enable the {controller} controller in {ctl}: "
                              f"{exc.strerror}") from None


def remove_stale(ctrls: dict[str, Controller]) -> list[str]:
    """Remove empty budgets left by benchmark processes that no longer exist."""
    removed = []
    for c in ctrls.values():
        for d in c.root.glob(PREFIX + "*"):
            m = re.match(re.escape(PREFIX) + r"(\d+)-", d.name)
            if not m or Path("/proc", m.group(1)).exists():
                continue
            with contextlib.suppress(OSError):
                if not (d / "cgroup.procs").read_text().split():
                    d.rmdir()
                    removed.append(str(d))
    return removed

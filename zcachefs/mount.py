"""Daemon lifecycle: check the paths, open SOURCE, mount, serve, unmount.

Order matters for mounting over SOURCE itself: SOURCE is opened as an O_PATH
directory descriptor *before* the mount exists, and nothing after the mount touches a
path below the mountpoint (the daemon chdirs to /).

Without -f the command forks before mounting; the child mounts and reports "mounted"
or the error through a pipe, so the parent exits only once the mount is live (or with
the one-line error). SIGTERM, SIGINT and SIGHUP unmount cleanly and exit 0, from the
moment the mount exists (handlers that record them are installed before it; readiness,
READY=1 or the parent's exit, is reported only once trio's signal watcher runs); so
does an external `fusermount3 -u`.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
from collections.abc import Callable

import pyfuse3
import trio

from . import backing, logs, notify
from .fs import Operations
from .options import MountOptions
from .pressure import PressureWatcher

log = logging.getLogger(__name__)

TRIM_INTERVAL = 10.0  # seconds between malloc_trim calls while the cache is in use


class MountError(Exception):
    """A problem that stops the mount; str() is the one-line message."""


def check_paths(source: str, mountpoint: str) -> None:
    """Validate SOURCE, MOUNTPOINT and /dev/fuse before anything is started."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise MountError(f"source '{source}' does not exist") from None
    except OSError as exc:
        raise MountError(f"cannot access source '{source}': {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"source '{source}' is not a directory")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint '{mountpoint}' does not exist") from None
    except OSError as exc:
        raise MountError(f"cannot access mountpoint '{mountpoint}': {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint '{mountpoint}' is not a directory")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse does not exist (is the fuse module loaded?)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("no permission to open /dev/fuse")


def fuse_options(source: str, opts: MountOptions) -> set[str]:
    """The option set handed to libfuse."""
    out = set(opts.fuse)
    if not any(o.startswith("fsname=") for o in out):
        out.add(f"fsname={source.replace(',', '_')}")
    if not any(o.startswith("subtype=") for o in out):
        out.add("subtype=zcachefs")
    return out


def run(source: str, mountpoint: str, opts: MountOptions, foreground: bool,
        ram: int = 1 << 30) -> int:
    """Mount and serve until unmounted or signalled; returns the exit status."""
    source = os.path.abspath(source)
    mountpoint = os.path.abspath(mountpoint)
    check_paths(source, mountpoint)
    try:
        root_fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(f"cannot open source '{source}': {exc.strerror}") from None

    report_fd = None if foreground else _daemonize()
    # Before anything can be mounted or reported ready: a SIGTERM from here on is
    # recorded and acted on once serving (a clean unmount), never the default action,
    # which would leave a dead mount behind.
    early = EarlySignals()
    early.install()
    logs.setup(opts.debug, daemon=not foreground)
    nofile = backing.raise_nofile_limit()
    backing.tune_malloc()
    os.umask(0)  # the kernel applied the caller's umask already
    ops = Operations(root_fd, opts, ram)
    try:
        pyfuse3.init(ops, mountpoint, fuse_options(source, opts))
    except RuntimeError as exc:
        message = f"cannot mount on '{mountpoint}': {exc}"
        if report_fd is not None:
            os.write(report_fd, message.encode())
            os._exit(1)
        raise MountError(message) from None
    log.info("mounted %s on %s (memlimit=%d cache_size=%d page_size=%d compressor=%s "
             "threads=%d nofile=%d)", source, mountpoint, opts.memlimit, opts.cache_size,
             opts.page_size, opts.compressor, opts.threads, nofile)
    os.chdir("/")

    def ready() -> bool:
        """Called once the signal watcher runs: only then may the parent exit 0 and
        systemd hear READY=1 (both let a SIGTERM come at once). False: the forking
        parent is gone (killed while it waited, e.g. by Ctrl-C), so nobody asked for
        this mount any more; it is unmounted cleanly."""
        if report_fd is not None:
            try:
                os.write(report_fd, b"OK")
            except BrokenPipeError:
                log.warning("the starting process is gone before the mount was ready: "
                            "unmounting %s", mountpoint)
                return False
            finally:
                os.close(report_fd)
            _detach_stdio()
        notify.notify("READY=1")
        return True

    try:
        trio.run(_serve, ops, early, ready)
    finally:
        notify.notify("STOPPING=1")
        pyfuse3.close(unmount=True)
        ops.close_all()
        log.info("unmounted %s (peak backing calls in flight: %d)", mountpoint,
                 ops.peak_inflight)
    return 0


async def _serve(ops: Operations, early: EarlySignals, ready: Callable[[], bool]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, early)
        if not ready():
            nursery.cancel_scope.cancel()
            return
        nursery.start_soon(ops.run_background)
        nursery.start_soon(_trim_heap_periodically, ops)
        if ops.opts.pressure:
            watcher = PressureWatcher(ops.cache, ops.opts.min_free, ops.opts.pressure_psi,
                                      ops.opts.pressure_interval, ops.wake_background)
            nursery.start_soon(watcher.run)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _trim_heap_periodically(ops: Operations) -> None:
    """Every TRIM_INTERVAL seconds in which the cache was busy, give malloc's free
    pages back to the OS, in a worker thread (malloc_trim releases the GIL and walks
    the whole heap: 1-3 ms for 64-256 MiB here). Without it, freed read buffers and
    tier-1 pages in the middle of the heap stay in RSS until memory pressure."""
    last = -1
    while True:
        await trio.sleep(TRIM_INTERVAL)
        c = ops.cache.c
        busy = c.cache_hits + c.cache_misses + ops.cache.pool.c.puts
        if busy != last:
            last = busy
            await trio.to_thread.run_sync(backing.malloc_trim)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class EarlySignals:
    """Handlers for the stop signals from before the mount until trio's own take over
    (and again after them, during the unmount): they only record the signal.

    Without them, a SIGTERM between mounting and trio's signal receiver (systemd's
    stop right after READY=1, `systemctl restart` just after a start) took the default
    action: the daemon died and left a dead mount."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)


async def _watch_signals(early: EarlySignals,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as sigs:
        task_status.started()
        if early.received:
            signum = early.received[0]
        else:
            signum = await sigs.__anext__()
        log.info("received %s, unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()  # before main() runs too: it then returns at once


def _daemonize() -> int:
    """Fork; the parent waits for the child's report and exits. Returns the pipe fd."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
        report = b"".join(chunks).decode(errors="replace")
        if report == "OK":
            os._exit(0)
        _, _status = os.waitpid(pid, 0)
        print(f"zcachefs: {report or 'daemon exited before mounting'}", file=sys.stderr)
        os._exit(1)
    os.close(r)
    os.setsid()
    return w


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    keep_stderr = logs.under_journal()
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

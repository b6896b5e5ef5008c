"""Daemon lifecycle: check the paths, open SOURCE, mount, serve, unmount.

Order matters for mounting over SOURCE itself: SOURCE is opened as an O_PATH
directory descriptor *before* the mount exists, and nothing after the mount touches a
path below the mountpoint (the daemon chdirs to /).

Without -f the command forks before mounting; the child mounts and reports "mounted"
or the error through a pipe, so the parent exits only once the mount is live (or with
the one-line error). SIGTERM, SIGINT and SIGHUP unmount cleanly and exit 0, from the
moment the mount exists (tasks.SignalWatcher's recording handlers are installed before
it; readiness, READY=1 or the parent's exit, is reported only once its trio receiver
runs); so does an external `fusermount3 -u`.

The background tasks (tasks.Compressor, tasks.HeapTrimmer, pressure.PressureWatcher and
the signal watcher) run in the nursery `_serve` owns; it is cancelled once the session
ends. Imports pyfuse3 and trio (psutil through pressure); only the command line (cli)
imports it. Runs in the main thread.
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

from . import logs, notify, process
from .fs import Operations
from .options import MountOptions
from .pressure import PressureWatcher
from .tasks import HeapTrimmer, SignalWatcher

log = logging.getLogger(__name__)


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
    signals = SignalWatcher(_stop)
    signals.install()
    logs.setup(opts.debug, daemon=not foreground)
    nofile = process.raise_nofile_limit()
    process.tune_malloc()
    os.umask(0)  # the kernel applied the caller's umask already
    ops = Operations(root_fd, opts, ram)
    auto_inval = auto_inval_data(ops, opts)
    try:
        pyfuse3.init(ops, mountpoint, fuse_options(source, opts))
    except RuntimeError as exc:
        message = f"cannot mount on '{mountpoint}': {exc}"
        if report_fd is not None:
            os.write(report_fd, message.encode())
            os._exit(1)
        raise MountError(message) from None
    spin = poll_spin(ops, opts)
    log.info("mounted %s on %s (memlimit=%d cache_size=%d page_size=%d compressor=%s "
             "threads=%d nofile=%d auto_inval_data=%s poll_spin=%d)", source, mountpoint,
             opts.memlimit, opts.cache_size, opts.page_size, opts.compressor, opts.threads,
             nofile, "on" if auto_inval else "off", spin)
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
        trio.run(_serve, ops, signals, ready)
    finally:
        notify.notify("STOPPING=1")
        pyfuse3.close(unmount=True)
        ops.close_all()
        log.info("unmounted %s (peak backing calls in flight: %d%s)", mountpoint,
                 ops.workers.peak_inflight, spin_summary(spin))
    return 0


def auto_inval_data(ops: Operations, opts: MountOptions) -> bool:
    """Ask pyfuse3 to clear FUSE_CAP_AUTO_INVAL_DATA unless the option wants it; True if
    the kernel will keep it. Only our pyfuse3 build (scripts/build-pyfuse3) reads
    `disable_auto_inval_data` at init; a stock one keeps libfuse's default."""
    ops.disable_auto_inval_data = not opts.auto_inval_data
    if opts.auto_inval_data or getattr(pyfuse3, "AUTO_INVAL_DATA_OPTIONAL", False):
        return opts.auto_inval_data
    log.warning("auto_inval_data stays on: this pyfuse3 (%s) is not zcachefs's build, so "
                "each write through the mount empties the kernel's cache of the file; "
                "`make venv` or `make install` builds it", pyfuse3.__version__)
    return True


def poll_spin(ops: Operations, opts: MountOptions) -> int:
    """Turn on the request loop's poll spin (after pyfuse3.init); the microseconds in
    force. Off on one CPU (the spin would take the time the caller needs to send its
    next request) and with a stock pyfuse3 (only our build has set_poll_spin). A result
    from a worker thread ends a spin at once (the thread pool's eventfd)."""
    if not opts.poll_spin:
        return 0
    if not getattr(pyfuse3, "POLL_SPIN", False):
        log.warning("poll_spin is off: this pyfuse3 (%s) is not zcachefs's build, so each "
                    "request waits for trio to wake up (~30 us more per round trip); "
                    "`make venv` or `make install` builds it", pyfuse3.__version__)
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        log.info("poll_spin is off: the daemon may run on one CPU only")
        return 0
    pyfuse3.set_poll_spin(opts.poll_spin, [ops.threads.wake_fd])
    return opts.poll_spin


def spin_summary(spin: int) -> str:
    """What the poll spin did, for the unmount line ("" when it was off). Not a control
    file counter: it moves with every request, reading the counters too."""
    if not spin:
        return ""
    spins, caught, ns = pyfuse3.poll_spin_stats()
    return (f"; poll spins: {spins}, {caught} found a request, "
            f"{ns / 1e9:.3f} s spinning")


async def _serve(ops: Operations, signals: SignalWatcher, ready: Callable[[], bool]
                 ) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(signals.run)
        if not ready():
            nursery.cancel_scope.cancel()
            return
        nursery.start_soon(ops.compressor.run)
        nursery.start_soon(HeapTrimmer(ops.cache, process.malloc_trim, ops.threads).run)
        if ops.opts.pressure:
            watcher = PressureWatcher(ops.cache, ops.opts.min_free, ops.opts.pressure_psi,
                                      ops.opts.pressure_interval, ops.compressor.wake)
            nursery.start_soon(watcher.run)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _stop(signum: int) -> None:
    """A stop signal: end the session (before main() runs too: it then returns at once)."""
    log.info("received %s, unmounting", signal.Signals(signum).name)
    pyfuse3.terminate()


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

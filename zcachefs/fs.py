"""The pyfuse3 adapter: kernel requests in, backing-directory calls out.

Role: a protocol adapter only. It is the one place that awaits and the one place that
turns OSError into FUSEError (an errno for the kernel). Every blocking call on SOURCE
(backing.Backing) runs in a worker thread (trio.to_thread, bounded by a
CapacityLimiter of `threads`), under the caller's credentials; the trio thread only
updates tables.

Concurrency rule (S3QL's): code between two awaits is a critical section. Table
updates never straddle an await; after an await, state is looked up again.

Reads first try preadv(RWF_NOWAIT) on the trio thread: if the backing page cache has
the data the read costs no thread hop, otherwise it goes to a worker.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pyfuse3
import trio
from pyfuse3 import FUSEError

from . import backing, pool
from .backing import POLICY_XATTR, Backing, Caller, Found
from .cache import Cache, FileState, ReadPlan, Sig
from .control import ControlError, Controls
from .inodes import CONTROL_BASE, ROOT_NODEID, Inode, InodeTable
from .options import MountOptions
from .settings import XATTR_PREFIX as _XATTR_PREFIX

log = logging.getLogger(__name__)
T = TypeVar("T")

# How many directory entries one worker call looks up for readdirplus: large enough to
# amortize the thread hop (~50 us), small enough that a full reply buffer wastes little.
_READDIR_BATCH = 128


# Pages compressed per worker call by the background compressor: 64 x 4 KiB at ~180k
# pages/s (lz4) is ~0.4 ms of work, so the thread hop (~50 us) costs little.
_COMPRESS_BATCH = 64
# Pool entries evicted per shrink step before yielding to requests.
_SHRINK_BATCH = 512
_SWEEP_BATCH = 256  # forgotten file states looked at per background round
_CTL_DIR = CONTROL_BASE
_CTL_FH = 1 << 40  # control-file handles count from here (real fds are far below)
_CAPABILITY = b"security.capability"


@dataclass(slots=True)
class FileHandle:
    fd: int
    inode: Inode
    state: FileState  # the file's cache state (writes must invalidate, even uncached)
    cached: bool  # reads go through the daemon's tiers
    nowait: bool  # uncached: try RWF_NOWAIT reads on the trio thread
    append: bool = False  # opened O_APPEND: writes land at the end, not at `off`
    dontcache: bool = True  # backing reads try RWF_DONTCACHE (False after EOPNOTSUPP)


@dataclass(slots=True)
class CtlHandle:
    name: str
    content: bytes  # snapshot taken at open, so a sequential read is consistent


@dataclass(slots=True)
class DirHandle:
    fd: int
    inode: Inode
    entries: list[bytes] | None = None  # snapshot taken at offset 0
    dots: int = 0  # node id shown for ".." (the backing parent's st_ino)


def _caller(ctx: pyfuse3.RequestContext) -> Caller | None:
    return Caller(ctx.uid, ctx.gid, ctx.pid) if ctx.uid != 0 else None


def _pread(fd: int, size: int, off: int) -> bytes:
    return os.pread(fd, size, off)


def _compress_batch(codec: Any, threshold: int, batch: list[Any]) -> list[Any]:
    """Worker thread: compress pending pages (lz4/lzo release the GIL); pages known not
    to compress are not tried again."""
    return [(p, pool.compress_page(codec, p.data, threshold, p.poor)) for p in batch]


class Operations(pyfuse3.Operations):
    """zcachefs as a pyfuse3 file system (passthrough to SOURCE)."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # writes go through: fsync means durable

    def __init__(self, root_fd: int, opts: MountOptions, ram: int = 1 << 30) -> None:
        super().__init__()
        st = os.fstat(root_fd)
        self.opts = opts
        self.page_size = opts.page_size
        self.cache = Cache(opts.page_size, opts.cache_size, opts.memlimit, opts.threshold,
                           opts.compressor, opts.accept_threshold_percent, opts.volatile,
                           keep_hits=opts.direct_io)
        self.controls = Controls(self.cache, ram, self._control_changed)
        self.ctl_name = opts.control.encode()
        self.ctl_names = Controls.names()
        self.ctl_handles: dict[int, CtlHandle] = {}
        self._ctl_fh = itertools.count(_CTL_FH)
        self.owner = os.geteuid()
        self.started = time.time_ns()
        self._wakeup: trio.Event | None = None
        self.enable_acl = opts.default_permissions
        self.backing = Backing(root_fd)
        self.backing.kernel_checks = opts.default_permissions
        self.inodes = InodeTable(self.backing.root_ref, st.st_dev, st.st_ino, st.st_mode)
        self.cache.inodes_known = self.inodes.__len__
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.limiter = trio.CapacityLimiter(opts.threads)
        self.switch_ids = backing.can_switch_credentials()
        # Open descriptors per node id (see _open_fd), and the device whose inodes may be
        # fstat'ed on the trio thread: SOURCE's, if its filesystem is a local one.
        self.node_fds: dict[int, list[int]] = {}
        self.inline_dev = st.st_dev if backing.is_local_fs(st.st_dev) else -1
        self._running = 0  # backing calls running in worker threads (under _count_lock)
        self.peak_inflight = 0
        self._count_lock = threading.Lock()
        # Test hook: emulate a slow backing store (milliseconds per blocking call).
        self._delay = float(os.environ.get("ZCACHEFS_DEBUG_BACKING_DELAY_MS", "0")) / 1000
        # Test hook: backing reads start on the fadvise fallback, as on a filesystem
        # without RWF_DONTCACHE (or a kernel before 6.14).
        self._dontcache = not os.environ.get("ZCACHEFS_DEBUG_NO_DONTCACHE")

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, caller: Caller | None, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking backing call in a worker thread; OSError becomes FUSEError."""
        if not self.switch_ids:
            caller = None
        try:
            return await trio.to_thread.run_sync(self._work, caller, fn, *args,
                                                 limiter=self.limiter)
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None

    def _work(self, caller: Caller | None, fn: Callable[..., T], *args: Any) -> T:
        """Runs in a worker thread: one backing call, counted for peak_inflight."""
        with self._count_lock:
            self._running += 1
            self.peak_inflight = max(self.peak_inflight, self._running)
        try:
            if self._delay:
                time.sleep(self._delay)
            return backing.call_as(caller, fn, *args)
        finally:
            with self._count_lock:
                self._running -= 1

    def _open_fd(self, node: Inode) -> int:
        """A descriptor the mount holds open on the node, if fstat/fgetxattr on it only
        read the in-memory inode (a local filesystem: SOURCE's own), else -1. Such calls
        do not block, so they run on the trio thread: a worker call costs ~3 futex
        round trips (measured: 14 futex calls per request in 4 KiB random read/write)."""
        fds = self.node_fds.get(node.nodeid)
        return fds[-1] if fds and node.dev == self.inline_dev else -1

    def _inode(self, nodeid: int) -> Inode:
        inode = self.inodes.get(nodeid)
        if inode is None:
            raise FUSEError(errno.EPERM if nodeid >= CONTROL_BASE else errno.ESTALE)
        return inode

    def _parent(self, nodeid: int, name: bytes) -> Inode:
        """The parent directory of an entry being created, removed or renamed; the
        control directory and its name in the root are not SOURCE's to change."""
        if nodeid == ROOT_NODEID and name == self.ctl_name:
            raise FUSEError(errno.EPERM)
        return self._inode(nodeid)

    # -- the control directory (virtual; never reaches SOURCE) ----------------------

    def _ctl_attr(self, nodeid: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = cast(pyfuse3.InodeT, nodeid)
        if nodeid == _CTL_DIR:
            a.st_mode = cast(pyfuse3.ModeT, stat_mod.S_IFDIR | 0o755)
            a.st_nlink = 2
        else:
            name = self.ctl_names[nodeid - _CTL_DIR - 1]
            mode = 0o644 if Controls.writable(name) else 0o444
            a.st_mode = cast(pyfuse3.ModeT, stat_mod.S_IFREG | mode)
            a.st_nlink = 1
            a.st_size = 4096  # read with direct_io: the size is only a hint
        a.st_uid = self.owner
        a.st_gid = os.getegid()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.started
        a.attr_timeout = a.entry_timeout = 1.0
        return a

    def _ctl_lookup(self, name: bytes) -> pyfuse3.EntryAttributes:
        try:
            i = self.ctl_names.index(name.decode())
        except (ValueError, UnicodeDecodeError):
            raise FUSEError(errno.ENOENT) from None
        return self._ctl_attr(_CTL_DIR + 1 + i)

    def _ctl_open(self, nodeid: int, flags: int, ctx: pyfuse3.RequestContext
                  ) -> pyfuse3.FileInfo:
        name = self.ctl_names[nodeid - _CTL_DIR - 1]
        if flags & os.O_ACCMODE != os.O_RDONLY:
            if not Controls.writable(name):
                raise FUSEError(errno.EACCES)
            if ctx.uid not in (0, self.owner):
                raise FUSEError(errno.EACCES)
        fh = next(self._ctl_fh)
        content = self.controls.read(name).encode() if flags & os.O_ACCMODE != os.O_WRONLY \
            else b""
        self.ctl_handles[fh] = CtlHandle(name, content)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fh), direct_io=True,
                                keep_cache=False, nonseekable=False)

    def _ctl_xattr_name(self, inode: int, name: bytes) -> str:
        """The knob or counter an xattr name on the control directory refers to."""
        text = name.decode(errors="replace")
        if inode != _CTL_DIR or not text.startswith(_XATTR_PREFIX):
            raise FUSEError(pyfuse3.ENOATTR)
        key = text[len(_XATTR_PREFIX):]
        if "." in key or not Controls.exists(key):
            raise FUSEError(pyfuse3.ENOATTR)
        return key

    def _ctl_getxattr(self, inode: int, name: bytes) -> bytes:
        key = self._ctl_xattr_name(inode, name)
        return self.controls.read(key).rstrip("\n").encode()

    def _ctl_setxattr(self, inode: int, name: bytes, value: bytes,
                      ctx: pyfuse3.RequestContext) -> None:
        key = self._ctl_xattr_name(inode, name)
        if not Controls.writable(key):
            raise FUSEError(errno.EROFS)
        if ctx.uid not in (0, self.owner):
            raise FUSEError(errno.EPERM)
        try:
            self.controls.write(key, value)
        except ControlError as exc:
            log.warning("control: rejected %s%s: %s", _XATTR_PREFIX, key, exc)
            raise FUSEError(errno.EINVAL) from None

    def _ctl_write(self, handle: CtlHandle, buf: bytes) -> int:
        try:
            self.controls.write(handle.name, buf)
        except ControlError as exc:
            if exc.errno != errno.EINVAL:  # read-only or unknown: not a file to write
                raise FUSEError(errno.EACCES) from None
            log.warning("control: rejected write to %s: %s", handle.name, exc)
            raise FUSEError(errno.EINVAL) from None
        return len(buf)

    def _attr(self, inode: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = cast(pyfuse3.InodeT, inode.nodeid)
        a.st_mode = cast(pyfuse3.ModeT, st.st_mode)
        a.st_nlink = st.st_nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        a.attr_timeout = self.opts.attr_timeout
        a.entry_timeout = self.opts.entry_timeout
        inode.told = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return a

    def _remember(self, found: Found, parent: Inode) -> pyfuse3.EntryAttributes:
        """Count one kernel lookup of the inode and return its attributes."""
        st = found.st
        inode, extra = self.inodes.remember(found.ref, st.st_dev, st.st_ino, st.st_mode)
        if extra is not None:
            os.close(extra)
        inode.cache_off = found.cache_off or parent.cache_off
        return self._attr(inode, st)

    def _forget_one(self, nodeid: int) -> None:
        fd = self.inodes.forget(nodeid, 1)
        if fd is not None:
            os.close(fd)

    def _control_changed(self) -> None:
        """After a knob change: act on it now, and return memory a smaller cache_size
        or drop_caches freed to the OS (RSS falls, not just malloc's free lists)."""
        self.wake_background()
        backing.malloc_trim()

    def wake_background(self) -> None:
        """Ask the background task to compress pending pages / shrink the pool."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def run_background(self) -> None:
        """Compress pages evicted from tier 1 in worker threads and keep the pool in
        its limit, in bounded batches; runs until cancelled."""
        cache = self.cache
        while True:
            self._wakeup = trio.Event()
            batch = cache.take_pending(_COMPRESS_BATCH)
            if batch:
                codec, threshold = cache.codec, cache.pool.threshold
                done = await trio.to_thread.run_sync(
                    _compress_batch, codec, threshold, batch, limiter=self.limiter)
                cache.admit(done)
            evicted = 0
            pool = cache.pool
            while pool.needs_shrink:
                evicted += pool.shrink(_SHRINK_BATCH)
                if not pool.last_scanned:
                    break  # nothing left to evict (e.g. only slabs of same-size spares)
                await trio.lowlevel.checkpoint()
            if cache.forgotten_count:
                cache.sweep_forgotten(_SWEEP_BATCH)
            if not batch and not evicted:
                await self._wakeup.wait()
            else:
                await trio.lowlevel.checkpoint()

    def close_all(self) -> None:
        """Close every descriptor (after the session has ended)."""
        for fd in [*self.files, *self.dirs, *self.inodes.held_fds()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.files.clear()
        self.dirs.clear()
        self.backing.close()
        self.cache.pool.close()

    # -- names ---------------------------------------------------------------------

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_NODEID and name == self.ctl_name:
            return self._ctl_attr(_CTL_DIR)
        if parent_inode == _CTL_DIR:
            return self._ctl_lookup(name)
        parent = self._inode(parent_inode)
        if name == b"." or (name == b".." and parent is self.inodes.root):
            name = cast(pyfuse3.FileNameT, b".")
        try:
            found = await self._run(_caller(ctx), self.backing.lookup, parent.ref, name)
        except FUSEError as exc:
            if exc.errno != errno.ENOENT or not self.opts.negative_timeout:
                raise
            # A negative entry: the kernel remembers for negative_timeout that the name
            # does not exist (node id 0 means ENOENT with a timeout).
            absent = pyfuse3.EntryAttributes()
            absent.st_ino = cast(pyfuse3.InodeT, 0)
            absent.entry_timeout = self.opts.negative_timeout
            return absent
        return self._remember(found, parent)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for nodeid, count in inode_list:
            if nodeid >= CONTROL_BASE and nodeid < CONTROL_BASE + 1 + len(self.ctl_names):
                continue
            node = self.inodes.get(nodeid)
            fd = self.inodes.forget(nodeid, count)
            if fd is not None:
                os.close(fd)
            if node is not None and self.inodes.get(nodeid) is None:
                self.cache.forget_file(node.identity)

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if _CTL_DIR <= inode <= _CTL_DIR + len(self.ctl_names):
            return self._ctl_attr(inode)
        node = self._inode(inode)
        fd = self._open_fd(node)
        if fd >= 0:  # an open file (the kernel asks after every write): no thread hop
            try:
                return self._attr(node, os.fstat(fd))
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
        st = await self._run(None, self.backing.stat, node.ref)
        return self._attr(node, st)

    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if _CTL_DIR < inode <= _CTL_DIR + len(self.ctl_names):
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise FUSEError(errno.EPERM)
            return self._ctl_attr(inode)  # O_TRUNC of a control file: nothing to do
        node = self._inode(inode)
        handle = self.files.get(fh) if fh is not None else None
        times: tuple[int, int] | None = None
        if fields.update_atime or fields.update_mtime:
            times = (attr.st_atime_ns if fields.update_atime else -1,
                     attr.st_mtime_ns if fields.update_mtime else -1)
        size = attr.st_size if fields.update_size else None
        state = self.cache.file(node.identity) if size is not None else None
        token: tuple[int, Sig | None] = (0, None)
        if state is not None:
            token = self.cache.changing(state)
            self.cache.truncate(state, size)  # type: ignore[arg-type]
        st: os.stat_result | None = None
        try:
            st = await self._run(
                _caller(ctx), self.backing.setattr, node.ref,
                handle.fd if handle is not None else None,
                attr.st_mode if fields.update_mode else None,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1, size, times)
        finally:
            if state is not None:
                # Without the signature before the change, an outside change cannot be
                # told from ours: the next open drops the file (truncates are rare).
                self.cache.changed(state, token)
                self.cache.truncate(state, size)  # type: ignore[arg-type]
        assert st is not None
        return self._attr(node, st)

    async def readlink(self, inode: pyfuse3.InodeT,
                       ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        node = self._inode(inode)
        return cast(pyfuse3.FileNameT, await self._run(None, self.backing.readlink, node.ref))

    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._parent(parent_inode, name)
        found = await self._run(_caller(ctx), self.backing.mknod, parent.ref, name, mode,
                                  rdev)
        return self._remember(found, parent)

    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._parent(parent_inode, name)
        found = await self._run(_caller(ctx), self.backing.mkdir, parent.ref, name, mode)
        return self._remember(found, parent)

    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                      target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._parent(parent_inode, name)
        found = await self._run(_caller(ctx), self.backing.symlink, parent.ref, name,
                                  target)
        return self._remember(found, parent)

    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        parent = self._parent(new_parent_inode, new_name)
        found = await self._run(_caller(ctx), self.backing.link, node.ref, parent.ref,
                                new_name)
        return self._remember(found, parent)

    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        parent = self._parent(parent_inode, name)
        self._unlinked(await self._run(_caller(ctx), self.backing.unlink, parent.ref, name))

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        parent = self._parent(parent_inode, name)
        await self._run(_caller(ctx), self.backing.rmdir, parent.ref, name)

    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext) -> None:
        old = self._parent(parent_inode_old, name_old)
        new = self._parent(parent_inode_new, name_new)
        self._unlinked(await self._run(_caller(ctx), self.backing.rename, old.ref, name_old,
                                       new.ref, name_new, int(flags)))

    def _unlinked(self, st: os.stat_result | None) -> None:
        """A name went through the mount; if it was the file's last, mark the inode."""
        if st is not None and st.st_nlink <= 1:
            node = self.inodes.find(st.st_dev, st.st_ino)
            if node is not None:
                node.gone = True

    # -- files ---------------------------------------------------------------------

    def _file_info(self, fd: int, node: Inode, flags: int, st: os.stat_result,
                   own_off: bool) -> pyfuse3.FileInfo:
        """Register an open file. The kernel's page cache and ours are kept only if the
        file is unchanged since the last open (close-to-open consistency). O_DIRECT and
        the per-file policy (user.zcachefs.cache=off) bypass the daemon's tiers."""
        state = self.cache.file(node.identity)
        keep = self.cache.opened(state, (st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        direct = bool(flags & os.O_DIRECT)
        policy_off = own_off or node.cache_off
        if policy_off and not direct:
            self.cache.invalidate_file(state)  # pages cached before the policy changed
        cached = not direct and not policy_off and stat_mod.S_ISREG(st.st_mode)
        if cached:
            # The daemon reads what the kernel asks for, in runs, and drops it from the
            # backing page cache (RWF_DONTCACHE): the backing file's own readahead would
            # only read pages that are dropped unused and read again (+47% disk reads
            # in sequential 128 KiB reads here). FUSE's readahead above does the job.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        state.opens += 1
        self.node_fds.setdefault(node.nodeid, []).append(fd)
        self.files[fd] = FileHandle(fd, node, state, cached, nowait=not self._delay,
                                    append=bool(flags & os.O_APPEND),
                                    dontcache=self._dontcache)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fd),
                                direct_io=direct or self.opts.direct_io,
                                keep_cache=keep and not flags & os.O_TRUNC)

    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if _CTL_DIR < inode <= _CTL_DIR + len(self.ctl_names):
            return self._ctl_open(inode, flags, ctx)
        node = self._inode(inode)
        fd, st, off = await self._run(_caller(ctx), self.backing.open, node.ref, flags)
        if st.st_nlink == 0 and not node.gone and stat_mod.S_ISREG(st.st_mode):
            # Unlinked or replaced in SOURCE while the kernel still maps a name to it
            # (entry_timeout): ESTALE makes the VFS look the name up again and open
            # what it names now (or fail with ENOENT), not the old file.
            os.close(fd)
            raise FUSEError(errno.ESTALE)
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if node.told is not None and node.told != sig:
            # Changed outside since the kernel cached its attributes (attr_timeout):
            # make it ask again, or it reads with the old size. Attributes only: no
            # page lock is taken, so this is safe inside the open request.
            node.told = sig
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(inode, attr_only=True)
        return self._file_info(fd, node, flags, st, off)

    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     mode: int, flags: int, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._parent(parent_inode, name)
        fd, found = await self._run(_caller(ctx), self.backing.create, parent.ref, name,
                                    mode, flags)
        attr = self._remember(found, parent)
        return self._file_info(fd, self._inode(attr.st_ino), flags, found.st, False), attr

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self.files.get(fh)
        if handle is None:
            ctl = self.ctl_handles[fh]
            return ctl.content[off:off + size]
        if handle.cached:
            # The hit path: no await, no thread.
            got = self.cache.read(handle.state, off, size)
            if self.cache.pending.items:
                self.wake_background()
            if type(got) is bytes:
                return got
            return await self._read_miss(handle, cast(ReadPlan, got))
        if handle.nowait:
            buf = bytearray(size)
            try:
                n = os.preadv(handle.fd, (buf,), off, os.RWF_NOWAIT)
            except BlockingIOError:
                n = -1
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise FUSEError(exc.errno or errno.EIO) from None
                handle.nowait = False
                n = -1
            if n == size:
                return buf  # type: ignore[return-value]  # any buffer will do
        return await self._run(None, _pread, handle.fd, size, off)

    async def _read_miss(self, handle: FileHandle, plan: ReadPlan) -> bytes:
        """Read the runs of pages no tier holds from the backing file (only those), and
        let the cache keep them and assemble the answer."""
        ps = self.page_size
        runs = [(first * ps, count * ps) for first, count in plan.runs]
        pages, dontcache = await self._run(None, backing.read_runs, handle.fd, runs, ps,
                                           handle.dontcache)
        handle.dontcache = dontcache
        data = self.cache.fill_plan(handle.state, plan, pages, fallback=not dontcache)
        if self.cache.pending.items:
            self.wake_background()
        return data

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self.files.get(fh)
        if handle is None:
            return self._ctl_write(self.ctl_handles[fh], buf)
        # Drop what the write makes stale before and after it, and move the version
        # so a read that overlaps the write does not cache what it read. After it,
        # the pages it wrote are cached (write-allocate; partial pages merged).
        cache, state = self.cache, handle.state
        token = cache.begin_write(state, off, len(buf))
        try:
            n, before, sig = await self._run(None, backing.write_at, handle.fd, buf, off)
        except BaseException:
            cache.end_write(state, token, off, buf)
            raise
        if handle.append:
            # O_APPEND: the data went to the end of the file, wherever the kernel
            # thought that was; drop the range it really landed in, cache nothing.
            cache.end_write(state, token, off, buf[:n], before, sig, cache_it=False)
            cache.invalidate_range(state, sig[0] - n, n)
        else:
            cache.end_write(state, token, off, buf[:n] if n < len(buf) else buf, before,
                            sig, cache_it=handle.cached)
        if cache.pending.items:
            self.wake_background()
        return n

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None  # writes are already in the backing file; nothing is buffered

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self.files.get(fh)
        if handle is None:
            return
        await self._run(None, os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        if fh >= _CTL_FH:
            self.ctl_handles.pop(fh, None)
            return
        handle = self.files.pop(fh, None)
        if handle is not None:
            fds = self.node_fds.get(handle.inode.nodeid)
            if fds is not None:
                fds.remove(fh)
                if not fds:
                    del self.node_fds[handle.inode.nodeid]
            handle.state.opens -= 1
            await self._run(None, os.close, handle.fd)

    # -- directories ---------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if inode == _CTL_DIR:
            return cast(pyfuse3.FileHandleT, _CTL_FH - 1)
        node = self._inode(inode)
        fd = await self._run(_caller(ctx), self.backing.opendir, node.ref)
        self.dirs[fd] = DirHandle(fd, node)
        return cast(pyfuse3.FileHandleT, fd)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        if fh == _CTL_FH - 1:
            for i in range(start_id, len(self.ctl_names)):
                if not pyfuse3.readdir_reply(
                        token, cast(pyfuse3.FileNameT, self.ctl_names[i].encode()),
                        self._ctl_attr(_CTL_DIR + 1 + i), i + 1):
                    return
            return
        handle = self.dirs[fh]
        if start_id == 0 or handle.entries is None:
            # A fresh listing at offset 0 (first call or rewinddir); later offsets index
            # this snapshot, so they stay stable while the directory changes.
            listed, handle.dots = await self._run(None, Backing.list_dir, handle.fd)
            if handle.inode is self.inodes.root and self.ctl_name in listed:
                listed.remove(self.ctl_name)  # shadowed by the control directory
            handle.entries = listed
        entries = handle.entries
        pos = start_id
        while pos < 2:  # "." and "..": the kernel counts no lookups for these
            if not pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, entries[pos]),
                                         self._dot_attr(handle, pos), pos + 1):
                return
            pos += 1
        while pos < len(entries):
            batch = entries[pos:pos + _READDIR_BATCH]
            found = await self._run(None, self.backing.lookup_many, handle.inode.ref, batch)
            index = {name: i for i, name in enumerate(batch)}
            for k, (name, entry) in enumerate(found):
                attr = self._remember(entry, handle.inode)
                if not pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, name), attr,
                                             pos + index[name] + 1):
                    self._forget_one(attr.st_ino)
                    for _, rest in found[k + 1:]:
                        if rest.ref.fd >= 0:
                            os.close(rest.ref.fd)
                    return
            pos += len(batch)

    def _dot_attr(self, handle: DirHandle, which: int) -> pyfuse3.EntryAttributes:
        """Attributes for "." (0) and ".." (1); only st_ino and the type are used."""
        a = pyfuse3.EntryAttributes()
        node = handle.inode
        a.st_ino = cast(pyfuse3.InodeT, node.nodeid if which == 0 or node is self.inodes.root
                        else handle.dots)
        a.st_mode = cast(pyfuse3.ModeT, stat_mod.S_IFDIR)
        return a

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        if fh == _CTL_FH - 1:
            return
        handle = self.dirs.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        if fh == _CTL_FH - 1:
            return
        handle = self.dirs[fh]
        await self._run(None, os.fsync, handle.fd)

    # -- everything else -----------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = await self._run(None, self.backing.statvfs)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(sv, name))
        return out

    async def access(self, inode: pyfuse3.InodeT, mode: int,
                     ctx: pyfuse3.RequestContext) -> bool:
        node = self._inode(inode)
        return await self._run(_caller(ctx), self.backing.access, node.ref, mode)

    def _is_ctl(self, nodeid: int) -> bool:
        return _CTL_DIR <= nodeid <= _CTL_DIR + len(self.ctl_names)

    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                       ctx: pyfuse3.RequestContext) -> bytes:
        if self._is_ctl(inode):
            return self._ctl_getxattr(inode, name)
        node = self._inode(inode)
        if name == _CAPABILITY:
            # The kernel asks for it before every write to a file (to drop it on a
            # write); reading security.* needs no permission, so when the file is open
            # the answer comes from its descriptor here, without a thread hop.
            fd = self._open_fd(node)
            if fd >= 0:
                try:
                    return os.getxattr(fd, name)
                except OSError as exc:
                    raise FUSEError(exc.errno or errno.EIO) from None
        return await self._run(_caller(ctx), self.backing.getxattr, node.ref, name)

    async def setxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if self._is_ctl(inode):
            return self._ctl_setxattr(inode, name, value, ctx)
        node = self._inode(inode)
        if name == POLICY_XATTR.encode():
            choice = value.strip().lower()
            if choice not in (b"on", b"off"):
                log.warning("%s must be on or off, got %r", POLICY_XATTR, value[:40])
                raise FUSEError(errno.EINVAL)
            node.cache_off = choice == b"off"
        await self._run(_caller(ctx), self.backing.setxattr, node.ref, name, value)

    async def listxattr(self, inode: pyfuse3.InodeT,
                        ctx: pyfuse3.RequestContext) -> Sequence[pyfuse3.XAttrNameT]:
        if self._is_ctl(inode):
            if inode != _CTL_DIR:
                return []
            return [cast(pyfuse3.XAttrNameT, f"{_XATTR_PREFIX}{n}".encode())
                    for n in self.ctl_names if "." not in n]
        node = self._inode(inode)
        names = await self._run(_caller(ctx), self.backing.listxattr, node.ref)
        return [cast(pyfuse3.XAttrNameT, os.fsencode(n)) for n in names]

    async def removexattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                          ctx: pyfuse3.RequestContext) -> None:
        if self._is_ctl(inode):
            raise FUSEError(errno.EPERM)
        node = self._inode(inode)
        if name == POLICY_XATTR.encode():
            node.cache_off = False  # a directory above may still say off (next lookup)
        await self._run(_caller(ctx), self.backing.removexattr, node.ref, name)

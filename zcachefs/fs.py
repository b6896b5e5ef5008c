"""The pyfuse3 adapter: kernel requests in; calls on SOURCE, the cache and ctldir out.

Role: a protocol adapter only, and the one place that turns an exception into FUSEError
(an errno for the kernel). Each handler takes the caller's credentials and calls
backing.Backing (SOURCE), cache.Cache, or ctldir.ControlDir when `ctl.owns(nodeid)`
(`owns_handle(fh)`). Blocking calls on SOURCE run in worker threads (threads.ThreadPool
of `threads`; workers.Workers is their thread side) under the caller's credentials.
Reads first try preadv(RWF_NOWAIT) on the trio thread: when the backing page cache
has the data, that costs no thread hop.

Concurrency rule (S3QL's): code between two awaits is a critical section. Table
updates never straddle an await; after an await, state is looked up again.

Imports pyfuse3 (trio through threads and tasks); must not import psutil. Trio thread
only (apart from what `_run` hands to worker threads).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3
from pyfuse3 import FUSEError

from . import backing, process, writes
from .backing import POLICY_XATTR, Backing
from .cache import Cache, ReadPlan
from .control import Controls
from .creds import Caller
from .ctldir import ControlDir, Refused
from .entries import Entries
from .handles import DirHandle, FileHandle, Handles
from .inodes import CONTROL_BASE, Inode, InodeTable
from .options import MountOptions
from .tasks import Compressor
from .threads import ThreadPool
from .workers import Workers

log = logging.getLogger(__name__)
T = TypeVar("T")

# How many directory entries one worker call looks up for readdirplus: large enough to
# amortize the thread hop (~50 us), small enough that a full reply buffer wastes little.
_READDIR_BATCH = 128


def _caller(ctx: pyfuse3.RequestContext) -> Caller | None:
    return Caller(ctx.uid, ctx.gid, ctx.pid) if ctx.uid != 0 else None


class Operations(pyfuse3.Operations):
    """zcachefs as a pyfuse3 file system (passthrough to SOURCE)."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # writes go through: fsync means durable

    def __init__(self, root_fd: int, opts: MountOptions, ram: int = 1 << 30) -> None:
        super().__init__()
        st = os.fstat(root_fd)
        self.opts = opts
        self.cache = Cache(opts.page_size, opts.cache_size, opts.memlimit, opts.threshold,
                           opts.compressor, opts.accept_threshold_percent, opts.volatile,
                           keep_hits=opts.direct_io)
        self.controls = Controls(self.cache, ram, self._control_changed)
        self.ctl = ControlDir(self.controls, opts.control, os.geteuid(), time.time_ns())
        self.enable_acl = opts.default_permissions
        self.backing = Backing(root_fd)
        self.backing.kernel_checks = opts.default_permissions
        self.inodes = InodeTable(self.backing.root_ref, st.st_dev, st.st_ino, st.st_mode)
        self.entries = Entries(self.inodes, opts.attr_timeout, opts.entry_timeout)
        self.cache.inodes_known = self.inodes.__len__
        self.handles = Handles(st.st_dev if backing.is_local_fs(st.st_dev) else -1)
        self.files, self.dirs = self.handles.files, self.handles.dirs  # fh -> handle
        self.threads = ThreadPool(opts.threads)
        self.workers = Workers()
        self.compressor = Compressor(self.cache, self.threads)  # run by mount
        # Test hook: backing reads start on the fadvise fallback, as on a filesystem
        # without RWF_DONTCACHE (or a kernel before 6.14).
        self._dontcache = not os.environ.get("ZCACHEFS_DEBUG_NO_DONTCACHE")

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, caller: Caller | None, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking backing call in a worker thread; OSError becomes FUSEError."""
        try:
            return await self.threads.run(self.workers.work, caller, fn, *args)
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None

    def _inode(self, nodeid: int) -> Inode:
        """The node; unknown: ESTALE, or EPERM from CONTROL_BASE up (not SOURCE's ids)."""
        inode = self.inodes.get(nodeid)
        if inode is None:
            raise FUSEError(errno.EPERM if nodeid >= CONTROL_BASE else errno.ESTALE)
        return inode

    def _parent(self, nodeid: int, name: bytes) -> Inode:
        """The parent directory of an entry being created, removed or renamed; the
        control directory and its name in the root are not SOURCE's to change."""
        if self.ctl.shadows(nodeid, name):
            raise FUSEError(errno.EPERM)
        return self._inode(nodeid)

    @staticmethod
    def _now(fn: Callable[..., T], *args: Any) -> T:
        """A system call that cannot block, on the trio thread; OSError becomes FUSEError."""
        try:
            return fn(*args)
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None

    @staticmethod
    def _ctl(fn: Callable[..., T], *args: Any) -> T:
        """A request on the control directory; what it refuses becomes FUSEError."""
        try:
            return fn(*args)
        except Refused as exc:
            raise FUSEError(exc.errno or errno.EIO) from None

    def _control_changed(self) -> None:
        """After a knob change: act on it now, and return memory a smaller cache_size
        or drop_caches freed to the OS (RSS falls, not just malloc's free lists)."""
        self.compressor.wake()
        process.malloc_trim()

    def close_all(self) -> None:
        """Close every descriptor (after the session has ended)."""
        for fd in [*self.handles.take_all(), *self.inodes.held_fds()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.backing.close()
        self.cache.close()
        self.threads.close()

    # -- names ---------------------------------------------------------------------

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.ctl.owns(parent_inode) or self.ctl.shadows(parent_inode, name):
            return self._ctl(self.ctl.lookup, parent_inode, name)
        parent = self._inode(parent_inode)
        if name == b"." or (name == b".." and parent is self.inodes.root):
            name = cast(pyfuse3.FileNameT, b".")
        try:
            found = await self._run(_caller(ctx), self.backing.lookup, parent.ref, name)
        except FUSEError as exc:
            if exc.errno != errno.ENOENT or not self.opts.negative_timeout:
                raise
            return self.entries.negative(self.opts.negative_timeout)
        return self.entries.remember(found, parent)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for nodeid, count in inode_list:
            if self.ctl.owns(nodeid):
                continue
            gone = self.entries.forget(nodeid, count)
            if gone is not None:
                self.cache.files.forget(gone.identity)

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.ctl.owns(inode):
            return self.ctl.attr(inode)
        node = self._inode(inode)
        fd = self.handles.inline_fd(node)
        if fd >= 0:  # an open file (the kernel asks after every write): no thread hop
            return self.entries.attr(node, self._now(os.fstat, fd))
        st = await self._run(None, self.backing.stat, node.ref)
        return self.entries.attr(node, st)

    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.ctl.owns(inode):
            return self._ctl(self.ctl.setattr, inode, bool(
                fields.update_mode or fields.update_uid or fields.update_gid))
        node = self._inode(inode)
        handle = self.files.get(fh) if fh is not None else None
        times: tuple[int, int] | None = None
        if fields.update_atime or fields.update_mtime:
            times = (attr.st_atime_ns if fields.update_atime else -1,
                     attr.st_mtime_ns if fields.update_mtime else -1)
        size = attr.st_size if fields.update_size else None
        cut = None if size is None else writes.begin_truncate(self.cache, node.identity, size)
        try:
            st = await self._run(
                _caller(ctx), self.backing.setattr, node.ref,
                handle.fd if handle is not None else None,
                attr.st_mode if fields.update_mode else None,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1, size, times)
        finally:
            if cut is not None:
                writes.end_truncate(self.cache, cut)
        return self.entries.attr(node, st)

    async def readlink(self, inode: pyfuse3.InodeT,
                       ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        node = self._inode(inode)
        return cast(pyfuse3.FileNameT, await self._run(None, self.backing.readlink, node.ref))

    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._parent(parent_inode, name)
        found = await self._run(_caller(ctx), self.backing.mknod, parent.ref, name, mode, rdev)
        return self.entries.remember(found, parent)

    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._parent(parent_inode, name)
        found = await self._run(_caller(ctx), self.backing.mkdir, parent.ref, name, mode)
        return self.entries.remember(found, parent)

    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                      target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._parent(parent_inode, name)
        found = await self._run(_caller(ctx), self.backing.symlink, parent.ref, name, target)
        return self.entries.remember(found, parent)

    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        parent = self._parent(new_parent_inode, new_name)
        found = await self._run(_caller(ctx), self.backing.link, node.ref, parent.ref, new_name)
        return self.entries.remember(found, parent)

    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        parent = self._parent(parent_inode, name)
        self.entries.unlinked(await self._run(_caller(ctx), self.backing.unlink, parent.ref,
                                              name))

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        parent = self._parent(parent_inode, name)
        await self._run(_caller(ctx), self.backing.rmdir, parent.ref, name)

    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext) -> None:
        old = self._parent(parent_inode_old, name_old)
        new = self._parent(parent_inode_new, name_new)
        self.entries.unlinked(await self._run(_caller(ctx), self.backing.rename, old.ref,
                                              name_old, new.ref, name_new, int(flags)))

    # -- files ---------------------------------------------------------------------

    def _file_info(self, fd: int, node: Inode, flags: int, st: os.stat_result,
                   own_off: bool) -> pyfuse3.FileInfo:
        """Register an open file. The kernel's page cache and ours are kept only if the
        file is unchanged since the last open (close-to-open consistency). O_DIRECT and
        the per-file policy (user.zcachefs.cache=off) bypass the daemon's tiers."""
        direct = bool(flags & os.O_DIRECT)
        state, keep, cached = self.cache.open_file(
            node.identity, (st.st_size, st.st_mtime_ns, st.st_ctime_ns),
            stat_mod.S_ISREG(st.st_mode), direct, own_off or node.cache_off)
        if cached:
            # The daemon reads what the kernel asks for, in runs, and drops it from the
            # backing page cache (RWF_DONTCACHE): the backing file's own readahead would
            # only read pages that are dropped unused and read again (+47% disk reads
            # in sequential 128 KiB reads here). FUSE's readahead above does the job.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        handle = FileHandle(fd, node, state, cached, nowait=not self.workers.delay,
                            append=bool(flags & os.O_APPEND), dontcache=self._dontcache)
        self.handles.add_file(handle)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fd),
                                direct_io=direct or self.opts.direct_io,
                                keep_cache=keep and not flags & os.O_TRUNC)

    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.ctl.owns(inode):
            return self._ctl(self.ctl.open, inode, flags, ctx.uid)
        node = self._inode(inode)
        fd, st, off = await self._run(_caller(ctx), self.backing.open, node.ref, flags)
        if st.st_nlink == 0 and not node.gone and stat_mod.S_ISREG(st.st_mode):
            # Unlinked or replaced in SOURCE while the kernel still maps a name to it
            # (entry_timeout): ESTALE makes the VFS look the name up again and open
            # what it names now (or fail with ENOENT), not the old file.
            os.close(fd)
            raise FUSEError(errno.ESTALE)
        if self.entries.outdated(node, st):
            # Changed outside since the kernel cached its attributes (attr_timeout):
            # make it ask again, or it reads with the old size. Attributes only: no
            # page lock is taken, so this is safe inside the open request.
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(inode, attr_only=True)
        return self._file_info(fd, node, flags, st, off)

    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     mode: int, flags: int, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._parent(parent_inode, name)
        fd, found = await self._run(_caller(ctx), self.backing.create, parent.ref, name,
                                    mode, flags)
        attr = self.entries.remember(found, parent)
        return self._file_info(fd, self._inode(attr.st_ino), flags, found.st, False), attr

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self.files.get(fh)
        if handle is None:
            return self.ctl.read(fh, off, size)
        if handle.cached:
            # The hit path: no await, no thread.
            cache = self.cache
            got = cache.read(handle.state, off, size)
            if cache.has_pending:
                self.compressor.wake()
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
        return await self._run(None, os.pread, handle.fd, size, off)

    async def _read_miss(self, handle: FileHandle, plan: ReadPlan) -> bytes:
        """Read the runs of pages no tier holds from the backing file (only those), and
        let the cache keep them and assemble the answer."""
        cache = self.cache
        pages, dontcache = await self._run(None, backing.read_runs, handle.fd,
                                           cache.byte_runs(plan), cache.page_size,
                                           handle.dontcache)
        handle.dontcache = dontcache
        data = cache.fill_plan(handle.state, plan, pages, fallback=not dontcache)
        if cache.has_pending:
            self.compressor.wake()
        return data

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self.files.get(fh)
        if handle is None:
            return self._ctl(self.ctl.write, fh, buf)
        # Drop what the write makes stale before and after it, and move the version
        # so a read that overlaps the write does not cache what it read. After it,
        # the pages it wrote are cached (write-allocate; partial pages merged).
        cache, state = self.cache, handle.state
        token = writes.begin_write(cache, state, off, len(buf))
        try:
            n, before, sig = await self._run(None, backing.write_at, handle.fd, buf, off)
        except BaseException:
            writes.end_write(cache, state, token, off, buf)
            raise
        writes.wrote(cache, state, token, off, buf, n, before, sig, appended=handle.append,
                     cache_it=handle.cached)
        if cache.has_pending:
            self.compressor.wake()
        return n

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None  # writes are already in the backing file; nothing is buffered

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self.files.get(fh)
        if handle is not None:  # (a control file: nothing to do)
            await self._run(None, os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        if self.ctl.owns_handle(fh):
            self.ctl.release(fh)
            return
        handle = self.handles.pop_file(fh)
        if handle is not None:
            await self._run(None, os.close, handle.fd)

    # -- directories ---------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if self.ctl.owns(inode):
            return cast(pyfuse3.FileHandleT, self._ctl(self.ctl.opendir, inode))
        node = self._inode(inode)
        fd = await self._run(_caller(ctx), self.backing.opendir, node.ref)
        self.dirs[fd] = DirHandle(fd, node)
        return cast(pyfuse3.FileHandleT, fd)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        if self.ctl.owns_handle(fh):
            return self.ctl.readdir(start_id, functools.partial(pyfuse3.readdir_reply, token))
        handle = self.dirs[fh]
        if start_id == 0 or handle.entries is None:
            # A fresh listing at offset 0 (first call or rewinddir); later offsets index
            # this snapshot, so they stay stable while the directory changes.
            listed, handle.dots = await self._run(None, Backing.list_dir, handle.fd)
            if handle.inode is self.inodes.root:
                self.ctl.hide(listed)  # shadowed by the control directory
            handle.entries = listed
        entries = handle.entries
        pos = start_id
        while pos < 2:  # "." and "..": the kernel counts no lookups for these
            if not pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, entries[pos]),
                                         self.entries.dot(handle.inode, handle.dots, pos), pos + 1):
                return
            pos += 1
        while pos < len(entries):
            batch = entries[pos:pos + _READDIR_BATCH]
            found = await self._run(None, self.backing.lookup_many, handle.inode.ref, batch)
            index = {name: i for i, name in enumerate(batch)}
            for k, (name, entry) in enumerate(found):
                attr = self.entries.remember(entry, handle.inode)
                if not pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, name), attr,
                                             pos + index[name] + 1):
                    self.entries.unsent(attr.st_ino, found[k + 1:])
                    return
            pos += len(batch)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        if self.ctl.owns_handle(fh):
            return
        handle = self.dirs.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        if self.ctl.owns_handle(fh):
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

    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                       ctx: pyfuse3.RequestContext) -> bytes:
        if self.ctl.owns(inode):
            return self._ctl(self.ctl.getxattr, inode, name)
        node = self._inode(inode)
        if name == b"security.capability":
            # The kernel asks for it before every write to a file (to drop it on a
            # write); reading security.* needs no permission, so when the file is open
            # the answer comes from its descriptor here, without a thread hop.
            fd = self.handles.inline_fd(node)
            if fd >= 0:
                return self._now(os.getxattr, fd, name)
        return await self._run(_caller(ctx), self.backing.getxattr, node.ref, name)

    async def setxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if self.ctl.owns(inode):
            return self._ctl(self.ctl.setxattr, inode, name, value, ctx.uid)
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
        if self.ctl.owns(inode):
            return cast(list[pyfuse3.XAttrNameT], self.ctl.listxattr(inode))
        node = self._inode(inode)
        names = await self._run(_caller(ctx), self.backing.listxattr, node.ref)
        return [cast(pyfuse3.XAttrNameT, os.fsencode(n)) for n in names]

    async def removexattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                          ctx: pyfuse3.RequestContext) -> None:
        if self.ctl.owns(inode):
            return self._ctl(self.ctl.removexattr, inode)
        node = self._inode(inode)
        if name == POLICY_XATTR.encode():
            node.cache_off = False  # a directory above may still say off (next lookup)
        await self._run(_caller(ctx), self.backing.removexattr, node.ref, name)

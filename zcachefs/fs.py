"""The pyfuse3 adapter: kernel requests in, backing-directory calls out.

Role: a protocol adapter only. It is the one place that awaits and the one place that
turns OSError into FUSEError (an errno for the kernel). Every blocking call on SOURCE
runs in a worker thread (trio.to_thread, bounded by a CapacityLimiter of `threads`),
under the caller's credentials (see backing.py); the trio thread only updates tables.

Concurrency rule (S3QL's): code between two awaits is a critical section. Table
updates never straddle an await; after an await, state is looked up again.

Reads first try preadv(RWF_NOWAIT) on the trio thread: if the backing page cache has
the data the read costs no thread hop, otherwise it goes to a worker.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pyfuse3
import trio
from pyfuse3 import FUSEError

from . import backing
from .backing import O_PATH_FLAGS, Caller, proc_path
from .inodes import Inode, InodeTable
from .options import MountOptions

log = logging.getLogger(__name__)
T = TypeVar("T")

# O_DIRECT is honoured on the FUSE side (direct_io, no kernel page cache) and stripped
# on the backing side, where it would demand aligned buffers Python cannot give.
_STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT
# How many directory entries one worker call opens and stats for readdirplus.
_READDIR_BATCH = 128
# Seconds within which a pair of identical atime/mtime values is taken for UTIME_NOW:
# pyfuse3 turns FATTR_*_NOW into explicit times, but "now" needs only write permission
# while explicit times need ownership, so we must tell them apart.
_NOW_SLACK_NS = 2_000_000_000


@dataclass(slots=True)
class FileHandle:
    fd: int
    inode: Inode
    nowait: bool  # try RWF_NOWAIT reads on the trio thread


@dataclass(slots=True)
class DirHandle:
    fd: int
    inode: Inode
    entries: list[bytes] | None = None  # snapshot taken at offset 0
    dots: int = 0  # node id shown for ".." (the backing parent's st_ino)


def _caller(ctx: pyfuse3.RequestContext) -> Caller | None:
    return Caller(ctx.uid, ctx.gid, ctx.pid) if ctx.uid != 0 else None


# -- worker-thread functions (blocking; no table access) ---------------------------

def _open_at(dirfd: int, name: bytes) -> tuple[int, os.stat_result]:
    fd = os.open(name, O_PATH_FLAGS, dir_fd=dirfd)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _open_batch(dirfd: int, names: Sequence[bytes]) -> list[tuple[bytes, int, os.stat_result]]:
    out = []
    for name in names:
        try:
            fd, st = _open_at(dirfd, name)
        except FileNotFoundError:
            continue  # removed since the listing: skip it, as readdir(3) may
        out.append((name, fd, st))
    return out


def _list_dir(fd: int) -> tuple[list[bytes], int]:
    os.lseek(fd, 0, os.SEEK_SET)
    with os.scandir(fd) as it:
        names = [b".", b"..", *(os.fsencode(e.name) for e in it)]
    return names, os.stat("..", dir_fd=fd, follow_symlinks=False).st_ino


def _pread(fd: int, size: int, off: int) -> bytes:
    return os.pread(fd, size, off)


class Operations(pyfuse3.Operations):
    """zcachefs as a pyfuse3 file system (passthrough to SOURCE)."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # writes go through: fsync means durable

    def __init__(self, root_fd: int, opts: MountOptions) -> None:
        super().__init__()
        st = os.fstat(root_fd)
        self.opts = opts
        self.enable_acl = opts.default_permissions
        self.inodes = InodeTable(root_fd, st.st_dev, st.st_ino, st.st_mode)
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.limiter = trio.CapacityLimiter(opts.threads)
        self.switch_ids = backing.can_switch_credentials()
        self.inflight = 0
        self.peak_inflight = 0
        # Test hook: emulate a slow backing store (milliseconds per blocking call).
        self._delay = float(os.environ.get("ZCACHEFS_DEBUG_BACKING_DELAY_MS", "0")) / 1000

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, caller: Caller | None, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking backing call in a worker thread; OSError becomes FUSEError."""
        if not self.switch_ids:
            caller = None
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            if self._delay:
                return await trio.to_thread.run_sync(
                    self._delayed, caller, fn, *args, limiter=self.limiter)
            return await trio.to_thread.run_sync(
                backing.call_as, caller, fn, *args, limiter=self.limiter)
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        finally:
            self.inflight -= 1

    def _delayed(self, caller: Caller | None, fn: Callable[..., T], *args: Any) -> T:
        time.sleep(self._delay)
        return backing.call_as(caller, fn, *args)

    def _inode(self, nodeid: int) -> Inode:
        inode = self.inodes.get(nodeid)
        if inode is None:
            raise FUSEError(errno.ESTALE)
        return inode

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
        return a

    def _remember(self, fd: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        inode, extra = self.inodes.remember(fd, st.st_dev, st.st_ino, st.st_mode)
        if extra is not None:
            os.close(extra)
        return self._attr(inode, st)

    def close_all(self) -> None:
        """Close every descriptor (after the session has ended)."""
        for fd in [*self.files, *self.dirs, *self.inodes.all_fds()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()
        self.dirs.clear()

    # -- names ---------------------------------------------------------------------

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if name == b"." or (name == b".." and parent is self.inodes.root):
            fd, st = await self._run(_caller(ctx), _open_at, parent.fd, b".")
        else:
            fd, st = await self._run(_caller(ctx), _open_at, parent.fd, name)
        return self._remember(fd, st)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for nodeid, count in inode_list:
            fd = self.inodes.forget(nodeid, count)
            if fd is not None:
                os.close(fd)

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        st = await self._run(None, os.fstat, node.fd)
        return self._attr(node, st)

    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        handle = self.files.get(fh) if fh is not None else None
        real_fd = handle.fd if handle is not None else None
        times: tuple[int, int] | None = None
        if fields.update_atime or fields.update_mtime:
            times = (attr.st_atime_ns if fields.update_atime else -1,
                     attr.st_mtime_ns if fields.update_mtime else -1)
        st = await self._run(
            _caller(ctx), _setattr, node.fd, real_fd, stat_mod.S_ISLNK(node.mode),
            attr.st_mode if fields.update_mode else None,
            attr.st_uid if fields.update_uid else -1,
            attr.st_gid if fields.update_gid else -1,
            attr.st_size if fields.update_size else None, times)
        return self._attr(node, st)

    async def readlink(self, inode: pyfuse3.InodeT,
                       ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        node = self._inode(inode)
        return cast(pyfuse3.FileNameT, await self._run(None, backing.read_link, node.fd))

    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        fd, st = await self._run(_caller(ctx), _mknod, parent.fd, name, mode, rdev)
        return self._remember(fd, st)

    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        fd, st = await self._run(_caller(ctx), _mkdir, parent.fd, name, mode)
        return self._remember(fd, st)

    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                      target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        fd, st = await self._run(_caller(ctx), _symlink, parent.fd, name, target)
        return self._remember(fd, st)

    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        parent = self._inode(new_parent_inode)
        fd, st = await self._run(_caller(ctx), _link, node.fd, parent.fd, new_name)
        return self._remember(fd, st)

    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        parent = self._inode(parent_inode)
        await self._run(_caller(ctx), _unlink, parent.fd, name)

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        parent = self._inode(parent_inode)
        await self._run(_caller(ctx), _rmdir, parent.fd, name)

    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext) -> None:
        old = self._inode(parent_inode_old)
        new = self._inode(parent_inode_new)
        await self._run(_caller(ctx), backing.renameat2, old.fd, name_old, new.fd,
                        name_new, int(flags))

    # -- files ---------------------------------------------------------------------

    def _file_info(self, fd: int, node: Inode, flags: int,
                   st: os.stat_result) -> pyfuse3.FileInfo:
        """Register an open file; keep the kernel's page cache only if the file is
        unchanged since the last open (close-to-open consistency, like auto_cache)."""
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        keep = node.sig == sig and not flags & (os.O_DIRECT | os.O_TRUNC)
        node.sig = sig
        self.files[fd] = FileHandle(fd, node, nowait=not self._delay)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fd),
                                direct_io=bool(flags & os.O_DIRECT), keep_cache=keep)

    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        fd, st = await self._run(_caller(ctx), _reopen, node.fd, flags)
        return self._file_info(fd, node, flags, st)

    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     mode: int, flags: int, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._inode(parent_inode)
        fd, path_fd, st = await self._run(_caller(ctx), _create, parent.fd, name, mode, flags)
        attr = self._remember(path_fd, st)
        node = self._inode(attr.st_ino)
        return self._file_info(fd, node, flags, st), attr

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self.files[fh]
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

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self.files[fh]
        handle.inode.sig = None  # the mtime moves; our own write is no outside change
        return await self._run(None, os.pwrite, handle.fd, buf, off)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None  # writes are already in the backing file; nothing is buffered

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self.files[fh]
        await self._run(None, os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.files.pop(fh, None)
        if handle is not None:
            await self._run(None, os.close, handle.fd)

    # -- directories ---------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        node = self._inode(inode)
        fd = await self._run(_caller(ctx), _opendir, node.fd)
        self.dirs[fd] = DirHandle(fd, node)
        return cast(pyfuse3.FileHandleT, fd)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        handle = self.dirs[fh]
        if start_id == 0 or handle.entries is None:
            # A fresh listing at offset 0 (first call or rewinddir); later offsets index
            # this snapshot, so they stay stable while the directory changes.
            handle.entries, handle.dots = await self._run(None, _list_dir, handle.fd)
        entries = handle.entries
        pos = start_id
        while pos < len(entries):
            batch = entries[pos:pos + _READDIR_BATCH]
            if pos < 2:  # "." and "..": the kernel does not count lookups for these
                for i in range(pos, 2):
                    if not pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, entries[i]),
                                                 self._dot_attr(handle, i), i + 1):
                        return
                pos = 2
                continue
            opened = await self._run(None, _open_batch, handle.inode.fd, batch)
            index = {name: i for i, name in enumerate(batch)}
            for k, (name, fd, st) in enumerate(opened):
                attr = self._remember(fd, st)
                if not pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, name), attr,
                                             pos + index[name] + 1):
                    self._forget_one(attr.st_ino)
                    for _, rest_fd, _ in opened[k + 1:]:
                        os.close(rest_fd)
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

    def _forget_one(self, nodeid: int) -> None:
        fd = self.inodes.forget(nodeid, 1)
        if fd is not None:
            os.close(fd)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.dirs.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self.dirs[fh]
        await self._run(None, os.fsync, handle.fd)

    # -- everything else -----------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = await self._run(None, os.statvfs, self.inodes.root.fd)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(sv, name))
        return out

    async def access(self, inode: pyfuse3.InodeT, mode: int,
                     ctx: pyfuse3.RequestContext) -> bool:
        node = self._inode(inode)
        return await self._run(_caller(ctx), _access, node.fd, mode)

    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                       ctx: pyfuse3.RequestContext) -> bytes:
        node = self._inode(inode)
        return await self._run(_caller(ctx), _getxattr, node.fd, node.mode, name)

    async def setxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        node = self._inode(inode)
        await self._run(_caller(ctx), _setxattr, node.fd, node.mode, name, value)

    async def listxattr(self, inode: pyfuse3.InodeT,
                        ctx: pyfuse3.RequestContext) -> Sequence[pyfuse3.XAttrNameT]:
        node = self._inode(inode)
        names = await self._run(_caller(ctx), _listxattr, node.fd, node.mode)
        return [cast(pyfuse3.XAttrNameT, os.fsencode(n)) for n in names]

    async def removexattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                          ctx: pyfuse3.RequestContext) -> None:
        node = self._inode(inode)
        await self._run(_caller(ctx), _removexattr, node.fd, node.mode, name)


# -- more worker-thread functions --------------------------------------------------

def _reopen(path_fd: int, flags: int) -> tuple[int, os.stat_result]:
    fd = os.open(proc_path(path_fd), (flags & ~_STRIP_OPEN) | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _create(dirfd: int, name: bytes, mode: int, flags: int
            ) -> tuple[int, int, os.stat_result]:
    fd = os.open(name, (flags & ~(os.O_DIRECT | os.O_NOCTTY)) | os.O_CREAT | os.O_CLOEXEC,
                 mode & 0o7777, dir_fd=dirfd)
    try:
        path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
        return fd, path_fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _opendir(path_fd: int) -> int:
    return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_fd)


def _mknod(dirfd: int, name: bytes, mode: int, rdev: int) -> tuple[int, os.stat_result]:
    os.mknod(name, mode, rdev, dir_fd=dirfd)
    return _open_at(dirfd, name)


def _mkdir(dirfd: int, name: bytes, mode: int) -> tuple[int, os.stat_result]:
    os.mkdir(name, mode & 0o7777, dir_fd=dirfd)
    return _open_at(dirfd, name)


def _symlink(dirfd: int, name: bytes, target: bytes) -> tuple[int, os.stat_result]:
    os.symlink(target, name, dir_fd=dirfd)
    return _open_at(dirfd, name)


def _link(path_fd: int, dirfd: int, name: bytes) -> tuple[int, os.stat_result]:
    os.link(proc_path(path_fd), name, dst_dir_fd=dirfd, follow_symlinks=True)
    return _open_at(dirfd, name)


def _unlink(dirfd: int, name: bytes) -> None:
    os.unlink(name, dir_fd=dirfd)


def _rmdir(dirfd: int, name: bytes) -> None:
    os.rmdir(name, dir_fd=dirfd)


def _access(path_fd: int, mode: int) -> bool:
    if not os.access(proc_path(path_fd), mode):
        raise PermissionError(errno.EACCES, "access")
    return True


def _setattr(path_fd: int, real_fd: int | None, is_link: bool, mode: int | None,
             uid: int, gid: int, size: int | None,
             times: tuple[int, int] | None) -> os.stat_result:
    if mode is not None:
        if is_link:
            raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
        if real_fd is not None:
            os.fchmod(real_fd, stat_mod.S_IMODE(mode))
        else:
            os.chmod(proc_path(path_fd), stat_mod.S_IMODE(mode))
    if uid != -1 or gid != -1:
        backing.fchown_path(path_fd, uid, gid)
    if size is not None:
        if real_fd is not None:
            os.ftruncate(real_fd, size)
        else:
            fd = os.open(proc_path(path_fd), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
    if times is not None:
        _set_times(path_fd, is_link, times)
    return os.fstat(path_fd)


def _set_times(path_fd: int, is_link: bool, times: tuple[int, int]) -> None:
    atime, mtime = times
    now = time.time_ns()
    target: int | str = proc_path(path_fd)
    if is_link:
        raise OSError(errno.EOPNOTSUPP, "utimes of a symlink")
    if atime == mtime and abs(now - atime) < _NOW_SLACK_NS:
        os.utime(target)  # UTIME_NOW: needs write permission only, as touch(1) expects
        return
    if atime == -1 or mtime == -1:
        st = os.stat(target)
        atime = st.st_atime_ns if atime == -1 else atime
        mtime = st.st_mtime_ns if mtime == -1 else mtime
    os.utime(target, ns=(atime, mtime))


def _xattr_target(path_fd: int, mode: int) -> str:
    if stat_mod.S_ISLNK(mode):
        # Reaching a symlink's own xattrs needs a path we do not keep; ext4 allows only
        # trusted./security. ones there. Report "not supported" rather than guess.
        raise OSError(errno.EOPNOTSUPP, "xattr on a symlink")
    return proc_path(path_fd)


def _getxattr(path_fd: int, mode: int, name: bytes) -> bytes:
    return os.getxattr(_xattr_target(path_fd, mode), name)


def _setxattr(path_fd: int, mode: int, name: bytes, value: bytes) -> None:
    os.setxattr(_xattr_target(path_fd, mode), name, value)


def _listxattr(path_fd: int, mode: int) -> list[str]:
    return os.listxattr(_xattr_target(path_fd, mode))


def _removexattr(path_fd: int, mode: int, name: bytes) -> None:
    os.removexattr(_xattr_target(path_fd, mode), name)

"""The backing directory: fd-relative system calls the Python standard library lacks.

Role: every call zcachefs makes on SOURCE goes through an O_PATH descriptor of the
inode it concerns (or of its parent directory) and never through a path that could
loop back into the mount, so SOURCE may be the mountpoint itself. A `Ref` says how a
worker reaches an inode: a kernel file handle reopened for each call, or a held O_PATH
descriptor. The few calls that need AT_EMPTY_PATH or flags the os module does not
offer (renameat2, fchownat, utimensat, file handles) go through `_libc`; the caller's
credentials are `creds`' business.

Must not import pyfuse3, trio or psutil. Functions are thread-safe and block: the
adapter runs them in worker threads (with `creds.call_as`); `Ref` and `Found` are
immutable, so they may cross threads.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import _libc
from ._libc import AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW
from .creds import as_daemon, can_switch_credentials, drops_privileges_only

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Ref:
    """How a worker thread reaches a backing inode (immutable, so safe to share)."""

    fd: int  # a held O_PATH descriptor, or -1 to reopen `handle` for each call
    handle: bytes  # struct file_handle as bytes (b"" if the filesystem has none)
    mount_fd: int  # a descriptor on the handle's filesystem for open_by_handle_at


def proc_path(fd: int) -> str:
    """The /proc magic link that reopens an O_PATH descriptor."""
    return f"/proc/self/fd/{fd}"


def renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE support."""
    if flags == 0:
        os.rename(old, new, src_dir_fd=olddir, dst_dir_fd=newdir)
        return
    _libc.renameat2(olddir, old, newdir, new, flags)


def _lstat_or_none(name: bytes, dirfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return None


def fchown_path(fd: int, uid: int, gid: int) -> None:
    """chown an O_PATH descriptor without following a symlink (-1 leaves a field)."""
    _libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)


def read_link(fd: int) -> bytes:
    """readlink of an O_PATH descriptor of a symlink."""
    return os.fsencode(os.readlink("", dir_fd=fd))


# preadv2 flag: read through the page cache but drop what the read brought in once it
# is copied out (Linux 6.14+; EOPNOTSUPP where the filesystem has not opted in).
# Measured on this machine's ext4: a 256 MiB read left 0 pages resident, a plain read
# all of them (REFERENCE.md).
RWF_DONTCACHE = 0x80
# fadvise(DONTNEED) frees only whole folios: ext4 caches large files in folios of up to
# 2 MiB, and DONTNEED of a 128 KiB range inside one freed almost nothing (60.5 of 64
# MiB stayed cached). The fallback drops the 2 MiB-aligned range around each read.
_FOLIO = 2 << 20


def read_runs(fd: int, runs: list[tuple[int, int]], page_size: int,
              dontcache: bool) -> tuple[list[list[bytes]], bool]:
    """Read each (offset, length) run of a backing file for the cache, split into
    pages, leaving none of it in the backing file's page cache: the cache keeps its
    own copy, and one budget bounds both. Uses RWF_DONTCACHE when `dontcache` and the
    filesystem supports it; otherwise reads normally and drops the folio-aligned range
    with fadvise(DONTNEED). Returns (pages per run, whether RWF_DONTCACHE was used)."""
    out: list[list[bytes]] = []
    for offset, length in runs:
        view = _read_buffer(length)
        n = -1
        if dontcache:
            try:
                n = os.preadv(fd, (view,), offset, RWF_DONTCACHE)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                dontcache = False
        if n < 0:
            n = os.preadv(fd, (view,), offset)
            lo = offset & ~(_FOLIO - 1)
            hi = (offset + max(n, 1) + _FOLIO - 1) & ~(_FOLIO - 1)
            os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
        out.append([bytes(view[i:min(i + page_size, n)]) for i in range(0, n, page_size)])
    return out, dontcache


_buffers = threading.local()


def _read_buffer(length: int) -> memoryview:
    """A writable buffer of `length` bytes for `read_runs`, reused by its thread.

    The pages are copied out of it anyway (they must be bytes), so a fresh bytearray
    per read only added churn: above malloc's 128 KiB mmap threshold (process.py)
    every one was mmapped, zeroed, faulted in page by page and unmapped again (a 1 GiB
    cold pass: 227k minor faults before, 155k after). The buffer grows to the largest
    read its thread made (at most one FUSE request, 1 MiB) and goes with the thread."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < length:
        buf = bytearray(length)
        _buffers.buf = buf
    return memoryview(buf)[:length]


Sig = tuple[int, int, int]


def _sig(st: os.stat_result) -> Sig:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


# Filesystems on which fstat and fgetxattr of an open descriptor only read the inode in
# memory (no I/O, no network round trip): the adapter may call them inline.
_LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})


def is_local_fs(dev: int) -> bool:
    """Whether the filesystem of device `dev` is one of _LOCAL_FS (/proc/self/mountinfo)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[2] == want and " - " in line:
                    return line.split(" - ", 1)[1].split()[0] in _LOCAL_FS
    except OSError:
        pass
    return False


def write_at(fd: int, data: bytes, offset: int) -> tuple[int, Sig, Sig]:
    """pwrite; returns the bytes written and the file's (size, mtime_ns, ctime_ns)
    just before and just after, so the cache can tell its own change from another's
    (NFS's weak cache consistency: two fstats, ~1 us each)."""
    before = _sig(os.fstat(fd))
    n = os.pwrite(fd, data, offset)
    return n, before, _sig(os.fstat(fd))


# -- file handles ------------------------------------------------------------------

def name_to_handle(fd: int) -> tuple[bytes, int]:
    """(file handle as bytes, mount id) of an O_PATH descriptor."""
    return _libc.name_to_handle_at(fd, b"", AT_EMPTY_PATH)


def open_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2); ESTALE when the file no longer exists."""
    return _libc.open_by_handle_at(mount_fd, handle, flags)


# Flags of the caller's open(2) that must not reach the daemon's reopen of the inode:
# - O_DIRECT is honoured on the FUSE side (direct_io, no kernel page cache) and
#   stripped on the backing side, where it would demand aligned buffers Python cannot
#   give.
# - O_NOFOLLOW (SQLite opens every database with it) concerns the caller's last path
#   component, which the kernel has already resolved to this inode; our reopen goes
#   through the /proc/self/fd magic link, which O_NOFOLLOW refuses with ELOOP.
# - O_CREAT/O_EXCL/O_NOCTTY: the kernel handled them (the inode exists, no tty here).
# O_DIRECTORY, O_PATH and O_TMPFILE never get here: the kernel answers them itself
# (ENOTDIR; no FUSE request; EOPNOTSUPP, since pyfuse3 has no tmpfile handler).
_STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT | os.O_NOFOLLOW
# Window in which identical atime/mtime values are taken for UTIME_NOW: pyfuse3 turns
# FATTR_*_NOW into explicit times, but "now" needs only write permission while
# explicit times need ownership, so the two must be told apart.
_NOW_SLACK_NS = 2_000_000_000


POLICY_XATTR = "user.zcachefs.cache"  # per-file policy: "off" bypasses both tiers


@dataclass(frozen=True, slots=True)
class Found:
    """A backing inode just looked up or created."""

    ref: Ref
    st: os.stat_result
    cache_off: bool  # carries user.zcachefs.cache=off itself


def cache_off(fd: int, mode: int) -> bool:
    """Whether the inode carries the per-file policy xattr with value "off"."""
    if not (stat_mod.S_ISREG(mode) or stat_mod.S_ISDIR(mode)):
        return False
    try:
        return os.getxattr(proc_path(fd), POLICY_XATTR).strip().lower() == b"off"
    except OSError:
        return False


class Backing:
    """The backing directory SOURCE; all methods block and run in worker threads.

    Inodes are reached through `Ref`s. Methods raise OSError.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd  # O_PATH descriptor of SOURCE, opened before mounting
        # open_by_handle_at wants a real descriptor on the filesystem, not O_PATH.
        self.mount_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                dir_fd=root_fd)
        self.mount_id = -1
        self.use_handles = False
        try:
            handle, self.mount_id = name_to_handle(root_fd)
            os.close(open_handle(self.mount_fd, handle, os.O_PATH | os.O_CLOEXEC))
            self.use_handles = True  # needs CAP_DAC_READ_SEARCH (a root daemon)
        except OSError:
            pass
        self.root_ref = Ref(root_fd, b"", -1)
        # The kernel checks permissions itself (default_permissions, implied by
        # allow_other): a request that reaches us was allowed by it.
        self.kernel_checks = False

    def close(self) -> None:
        os.close(self.mount_fd)

    # -- reaching inodes -----------------------------------------------------------

    def _ref(self, fd: int) -> Ref:
        """Turn a fresh O_PATH descriptor into a Ref (closing it when a handle will do)."""
        try:
            handle, mount_id = name_to_handle(fd)
        except OSError:
            return Ref(fd, b"", -1)
        if self.use_handles and mount_id == self.mount_id:
            os.close(fd)
            return Ref(-1, handle, self.mount_fd)
        return Ref(fd, handle, -1)

    @contextmanager
    def fd(self, ref: Ref) -> Iterator[int]:
        """An O_PATH descriptor of the inode for the duration of one call."""
        if ref.fd >= 0:
            yield ref.fd
            return
        # open_by_handle_at needs CAP_DAC_READ_SEARCH, which a non-zero fsuid drops:
        # reach the inode as the daemon, then act on it with the caller's credentials.
        # (The caller passed the kernel's permission checks for the path to this inode.)
        fsuid = _libc.setfsuid(0)
        try:
            fd = open_handle(ref.mount_fd, ref.handle, os.O_PATH | os.O_CLOEXEC)
        finally:
            if fsuid != 0:
                _libc.setfsuid(fsuid)
        try:
            yield fd
        finally:
            os.close(fd)

    def lookup(self, parent: Ref, name: bytes) -> Found:
        with self.fd(parent) as dirfd:
            return self._lookup_at(dirfd, name)

    def _lookup_at(self, dirfd: int, name: bytes) -> Found:
        fd = os.open(name, O_PATH_FLAGS, dir_fd=dirfd)
        try:
            st = os.fstat(fd)
            off = cache_off(fd, st.st_mode)
        except BaseException:
            os.close(fd)
            raise
        return Found(self._ref(fd), st, off)

    def lookup_many(self, parent: Ref, names: list[bytes]) -> list[tuple[bytes, Found]]:
        """Look up a batch of names (readdirplus); names gone since listing are skipped."""
        out = []
        with self.fd(parent) as dirfd:
            for name in names:
                try:
                    found = self._lookup_at(dirfd, name)
                except FileNotFoundError:
                    continue
                out.append((name, found))
        return out

    def stat(self, ref: Ref) -> os.stat_result:
        with self.fd(ref) as fd:
            return os.fstat(fd)

    # -- names ---------------------------------------------------------------------

    def mknod(self, parent: Ref, name: bytes, mode: int, rdev: int
              ) -> Found:
        with self.fd(parent) as dirfd:
            os.mknod(name, mode, rdev, dir_fd=dirfd)
            return self._lookup_at(dirfd, name)

    def mkdir(self, parent: Ref, name: bytes, mode: int) -> Found:
        with self.fd(parent) as dirfd:
            os.mkdir(name, mode & 0o7777, dir_fd=dirfd)
            return self._lookup_at(dirfd, name)

    def symlink(self, parent: Ref, name: bytes, target: bytes
                ) -> Found:
        with self.fd(parent) as dirfd:
            os.symlink(target, name, dir_fd=dirfd)
            return self._lookup_at(dirfd, name)

    def link(self, ref: Ref, parent: Ref, name: bytes) -> Found:
        with self.fd(ref) as fd, self.fd(parent) as dirfd:
            os.link(proc_path(fd), name, dst_dir_fd=dirfd, follow_symlinks=True)
            return self._lookup_at(dirfd, name)

    def unlink(self, parent: Ref, name: bytes) -> os.stat_result | None:
        """Unlink; returns what the name held (None if it could not be told)."""
        with self.fd(parent) as dirfd:
            st = _lstat_or_none(name, dirfd)
            os.unlink(name, dir_fd=dirfd)
            return st

    def rmdir(self, parent: Ref, name: bytes) -> None:
        with self.fd(parent) as dirfd:
            os.rmdir(name, dir_fd=dirfd)

    def rename(self, old_parent: Ref, old: bytes, new_parent: Ref, new: bytes,
               flags: int) -> os.stat_result | None:
        """Rename; returns what the target name held before, if the rename replaced it."""
        with self.fd(old_parent) as olddir, self.fd(new_parent) as newdir:
            st = None if flags & RENAME_EXCHANGE else _lstat_or_none(new, newdir)
            renameat2(olddir, old, newdir, new, flags)
            return st

    def readlink(self, ref: Ref) -> bytes:
        with self.fd(ref) as fd:
            return read_link(fd)

    # -- files and directories -----------------------------------------------------

    def open(self, ref: Ref, flags: int) -> tuple[int, os.stat_result, bool]:
        """Open the inode for I/O; returns the descriptor, its stat and whether the
        file itself carries user.zcachefs.cache=off (read now, so a change counts at the
        next open)."""
        with self.fd(ref) as pfd:
            fd = os.open(proc_path(pfd), (flags & ~_STRIP_OPEN) | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                return fd, st, cache_off(pfd, st.st_mode)
            except BaseException:
                os.close(fd)
                raise

    def create(self, parent: Ref, name: bytes, mode: int, flags: int) -> tuple[int, Found]:
        """Create and open; returns the I/O descriptor and the new inode."""
        with self.fd(parent) as dirfd:
            fd = os.open(name, (flags & ~(os.O_DIRECT | os.O_NOCTTY)) | os.O_CREAT
                         | os.O_CLOEXEC, mode & 0o7777, dir_fd=dirfd)
        try:
            path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
            return fd, Found(self._ref(path_fd), os.fstat(fd), False)
        except BaseException:
            os.close(fd)
            raise

    def opendir(self, ref: Ref) -> int:
        """Open a directory for listing. Through the /proc magic link, not as "."
        relative to it: looking up "." needs search permission, while open(2) of a
        directory needs only read permission (a 0600 or 0477 directory can be listed
        by its owner, as on ext4)."""
        with self.fd(ref) as pfd:
            return os.open(proc_path(pfd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @staticmethod
    def list_dir(fd: int) -> tuple[list[bytes], int]:
        """Names of an open directory, with "." and "..", and the st_ino of "..".."""
        os.lseek(fd, 0, os.SEEK_SET)
        with os.scandir(fd) as it:
            names = [b".", b"..", *(os.fsencode(e.name) for e in it)]
        return names, os.stat("..", dir_fd=fd, follow_symlinks=False).st_ino

    def access(self, ref: Ref, mode: int) -> bool:
        with self.fd(ref) as fd:
            if not os.access(proc_path(fd), mode):
                raise PermissionError(errno.EACCES, "access")
        return True

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root_fd)

    def setattr(self, ref: Ref, real_fd: int | None, mode: int | None, uid: int, gid: int,
                size: int | None, times: tuple[int, int] | None) -> os.stat_result:
        """chown, truncate, chmod and utimens, in that order; returns the new stat.

        The order matters for the one request that combines them: the kernel's "kill
        the setuid/setgid bits" (a chmod it adds to a chown, a truncate or before a
        write by someone without CAP_FSETID). A chown or truncate that fails must leave
        the bits alone, as on ext4, so the mode is changed last."""
        with self.fd(ref) as pfd:
            is_link = stat_mod.S_ISLNK(os.fstat(pfd).st_mode)
            if uid != -1 or gid != -1:
                fchown_path(pfd, uid, gid)
            if size is not None:
                if real_fd is not None:
                    os.ftruncate(real_fd, size)
                else:
                    fd = os.open(proc_path(pfd), os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.ftruncate(fd, size)
                    finally:
                        os.close(fd)
            if mode is not None:
                if is_link:
                    raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
                self._chmod(pfd, real_fd, stat_mod.S_IMODE(mode))
            if times is not None:
                if is_link:
                    _set_link_times(pfd, times)  # touch -h, cp -a, rsync -a, tar
                else:
                    _set_times(proc_path(pfd), times)
            return os.fstat(pfd)

    def _chmod(self, pfd: int, real_fd: int | None, mode: int) -> None:
        """chmod as the caller; a non-owner's request that only clears setuid/setgid is
        the kernel's kill-privileges request and is done as the daemon (see
        `drops_privileges_only`)."""
        def chmod() -> None:
            if real_fd is not None:
                os.fchmod(real_fd, mode)
            else:
                os.chmod(proc_path(pfd), mode)
        try:
            chmod()
        except PermissionError:
            current = stat_mod.S_IMODE(os.fstat(pfd).st_mode)
            if not drops_privileges_only(current, mode) or not can_switch_credentials():
                raise
            if not self.kernel_checks and not os.access(proc_path(pfd), os.W_OK,
                                                        effective_ids=True):
                raise
            with as_daemon():
                chmod()

    # -- extended attributes -------------------------------------------------------

    @contextmanager
    def _xattr_path(self, ref: Ref) -> Iterator[str]:
        with self.fd(ref) as fd:
            if stat_mod.S_ISLNK(os.fstat(fd).st_mode):
                # A symlink's own xattrs need its path, which we do not keep (ext4
                # allows only trusted./security. there): say "not supported".
                raise OSError(errno.EOPNOTSUPP, "xattr on a symlink")
            yield proc_path(fd)

    def getxattr(self, ref: Ref, name: bytes) -> bytes:
        with self._xattr_path(ref) as path:
            return os.getxattr(path, name)

    def setxattr(self, ref: Ref, name: bytes, value: bytes) -> None:
        with self._xattr_path(ref) as path:
            os.setxattr(path, name, value)

    def listxattr(self, ref: Ref) -> list[str]:
        with self._xattr_path(ref) as path:
            return os.listxattr(path)

    def removexattr(self, ref: Ref, name: bytes) -> None:
        with self._xattr_path(ref) as path:
            os.removexattr(path, name)


def _set_link_times(pfd: int, times: tuple[int, int]) -> None:
    """utimensat(2) on the O_PATH descriptor itself (AT_EMPTY_PATH, Linux 5.8+): the
    only way to reach a symlink's own times without its name."""
    atime, mtime = times
    if atime == mtime and abs(time.time_ns() - atime) < _NOW_SLACK_NS:
        now = _libc.Timespec(0, _libc.UTIME_NOW)
        _libc.utimensat(pfd, b"", now, now, AT_EMPTY_PATH)
    else:
        _libc.utimensat(pfd, b"", _timespec(atime), _timespec(mtime), AT_EMPTY_PATH)


def _timespec(ns: int) -> _libc.Timespec:
    """A time in ns as a timespec; -1 leaves that time as it is (UTIME_OMIT)."""
    return _libc.Timespec(0, _libc.UTIME_OMIT) if ns == -1 else _libc.Timespec(*divmod(ns, 10**9))


def _set_times(path: str, times: tuple[int, int]) -> None:
    atime, mtime = times
    if atime == mtime and abs(time.time_ns() - atime) < _NOW_SLACK_NS:
        os.utime(path)  # UTIME_NOW: needs write permission only, as touch(1) expects
        return
    if atime == -1 or mtime == -1:
        st = os.stat(path)
        atime = st.st_atime_ns if atime == -1 else atime
        mtime = st.st_mtime_ns if mtime == -1 else mtime
    os.utime(path, ns=(atime, mtime))

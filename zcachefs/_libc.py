"""The one ctypes handle on the C library, with typed thin wrappers for the calls the
standard library lacks.

Role: every foreign call zcachefs makes goes through here: the *at calls that need
AT_EMPTY_PATH or flags the os module does not offer (renameat2, fchownat, utimensat),
file handles (name_to_handle_at, open_by_handle_at), per-thread credentials (setfsuid,
setfsgid and the raw setgroups syscall), mincore, mallopt and malloc_trim. Each wrapper
declares the C types and raises OSError with the errno when the call fails; setfsuid
and setfsgid cannot fail (they return the previous id), nor can mallopt and
malloc_trim (they return whether they did anything). madvise is not here: mmap
objects have it.

Must not import any other zcachefs module, nor pyfuse3, trio or psutil. Thread-safe:
ctypes releases the GIL during each call and errno is kept per thread (use_errno).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MAX_HANDLE_SZ = 128

# Raw syscall numbers for per-thread setgroups (glibc's wrapper changes every thread).
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "ppc64le": 81, "s390x": 206,
                  "riscv64": 159}.get(platform.machine())
HAVE_THREAD_SETGROUPS = _SYS_SETGROUPS is not None

_PAGE_MASK = mmap.PAGESIZE - 1


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class _FileHandle(ctypes.Structure):
    _fields_ = (("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ))


class Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                           ctypes.c_int]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec),
                            ctypes.c_int]
_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                    ctypes.POINTER(_FileHandle),
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


# -- the *at calls ----------------------------------------------------------------------

def renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    _check(_libc.renameat2(olddir, old, newdir, new, flags), "renameat2")


def fchownat(dirfd: int, name: bytes, uid: int, gid: int, flags: int) -> None:
    """fchownat(2); -1 for uid or gid leaves it unchanged."""
    _check(_libc.fchownat(dirfd, name, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags),
           "fchownat")


def utimensat(dirfd: int, name: bytes, atime: Timespec, mtime: Timespec, flags: int
              ) -> None:
    _check(_libc.utimensat(dirfd, name, (Timespec * 2)(atime, mtime), flags), "utimensat")


# -- file handles -----------------------------------------------------------------------

def name_to_handle_at(fd: int, name: bytes, flags: int) -> tuple[bytes, int]:
    """(struct file_handle as bytes, mount id)."""
    fh = _FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    _check(_libc.name_to_handle_at(fd, name, ctypes.byref(fh), ctypes.byref(mount_id),
                                   flags), "name_to_handle_at")
    return bytes(fh)[:8 + fh.handle_bytes], mount_id.value


def open_by_handle_at(mount_fd: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2) of a handle from `name_to_handle_at`; returns the descriptor."""
    buf = ctypes.create_string_buffer(handle, len(handle))
    return _check(_libc.open_by_handle_at(mount_fd, buf, flags), "open_by_handle_at")


# -- per-thread credentials -------------------------------------------------------------

def setfsuid(uid: int) -> int:
    """Set this thread's filesystem uid; returns the previous one."""
    return int(_libc.setfsuid(uid))


def setfsgid(gid: int) -> int:
    """Set this thread's filesystem gid; returns the previous one."""
    return int(_libc.setfsgid(gid))


def setgroups_thread(groups: list[int]) -> None:
    """setgroups(2) as the raw syscall: this thread only (glibc's wrapper changes
    every thread of the process). Needs HAVE_THREAD_SETGROUPS."""
    if _SYS_SETGROUPS is None:
        raise OSError(0, "setgroups: no syscall number for " + platform.machine())
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _check(_libc.syscall(_SYS_SETGROUPS, len(groups), arr), "setgroups")


# -- memory -----------------------------------------------------------------------------

def mincore(buf: mmap.mmap) -> bytes:
    """mincore(2) of a mapping: one byte per page, bit 0 set if the page is resident."""
    n = (len(buf) + _PAGE_MASK) // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(n)
    view = ctypes.c_char.from_buffer(buf)
    try:
        _check(_libc.mincore(ctypes.addressof(view), len(buf), vec), "mincore")
    finally:
        del view  # release the buffer export, or the mmap can never be closed
    return vec.raw


def mallopt(param: int, value: int) -> bool:
    """mallopt(3); False if the allocator refused (it sets no errno to raise)."""
    return bool(_libc.mallopt(param, value))


def malloc_trim(pad: int = 0) -> bool:
    """malloc_trim(3): give free heap memory back to the OS; True if any was."""
    return bool(_libc.malloc_trim(pad))

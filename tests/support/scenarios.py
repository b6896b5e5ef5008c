"""POSIX scenarios run twice, on a plain directory and on a zcachefs mount.

Each scenario drives one area of the file system interface inside `root` and records
what a program would observe: bytes, the stable parts of stat, and errno names. The
differential test asserts that both runs observe the same. The module is also a script
(`python scenarios.py NAME ROOT`), so a scenario can run as another user.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)


class Rec:
    """Records observations; an OSError becomes its errno name."""

    def __init__(self) -> None:
        self.obs: list[tuple[str, Any]] = []

    def do(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except OSError as exc:
            value = f"errno:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
            self.obs.append((label, value))
            return None
        self.obs.append((label, _norm(value)))
        return value

    def see(self, label: str, value: Any) -> None:
        self.obs.append((label, _norm(value)))


def _norm(value: Any) -> Any:
    if isinstance(value, os.stat_result):
        return sstat(value)
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 64 else hashlib.sha256(value).hexdigest()
    if isinstance(value, os.statvfs_result):  # free counts move; mount flags differ
        return [value.f_bsize, value.f_frsize, value.f_blocks, value.f_namemax]
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value if isinstance(value, (int, str, float, bool, type(None))) else repr(value)


def sstat(st: os.stat_result) -> dict[str, int]:
    """The parts of stat that must match between the plain directory and the mount."""
    out = {"mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
           "size": st.st_size}
    if stat.S_ISREG(st.st_mode):
        out["blocks"] = st.st_blocks
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        out["rdev"] = st.st_rdev
    return out


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, bytes(old), -100, bytes(new), ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


SCENARIOS: dict[str, Callable[[Path, Rec], None]] = {}


def scenario(fn: Callable[[Path, Rec], None]) -> Callable[[Path, Rec], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def create_read_write(root: Path, r: Rec) -> None:
    f = root / "f"
    fd = r.do("create", lambda: os.open(f, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640))
    r.do("excl-again", lambda: os.open(f, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640))
    r.do("write", lambda: os.write(fd, b"hello world"))
    r.do("pread", lambda: os.pread(fd, 5, 6))
    r.do("pread-eof", lambda: os.pread(fd, 100, 11))
    r.do("pread-past", lambda: os.pread(fd, 10, 1000))
    r.do("pwrite-hole", lambda: os.pwrite(fd, b"tail", 1 << 20))
    r.do("read-hole", lambda: os.pread(fd, 8, 4096))
    r.do("fstat", lambda: os.fstat(fd))
    r.do("stat", lambda: os.stat(f))
    os.close(fd)
    r.do("open-dir-for-write", lambda: os.open(root, os.O_WRONLY))
    r.do("open-missing", lambda: os.open(root / "nope", os.O_RDONLY))
    r.do("open-through-file", lambda: os.open(root / "f" / "x", os.O_RDONLY))
    r.do("mkdir-over-file", lambda: os.mkdir(f))
    big = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
    (root / "big").write_bytes(big)
    r.see("big", (root / "big").read_bytes())
    with open(root / "big", "rb") as fh:
        fh.seek(1_000_001)
        r.see("big-mid", fh.read(70_000))


@scenario
def append_and_trunc(root: Path, r: Rec) -> None:
    f = root / "a"
    f.write_bytes(b"12345")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    r.do("append", lambda: os.write(fd, b"678"))
    r.do("pwrite-append", lambda: os.pwrite(fd, b"9", 0))  # Linux appends anyway
    os.close(fd)
    r.see("after-append", f.read_bytes())
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    r.do("trunc-stat", lambda: os.fstat(fd))
    os.close(fd)
    f.write_bytes(b"x" * 10000)
    r.do("truncate-shrink", lambda: os.truncate(f, 100))
    r.see("shrunk", f.read_bytes())
    r.do("truncate-grow", lambda: os.truncate(f, 50000))
    r.see("grown", f.read_bytes())
    fd = os.open(f, os.O_RDWR)
    r.do("ftruncate", lambda: os.ftruncate(fd, 7))
    r.do("fstat", lambda: os.fstat(fd))
    os.close(fd)
    r.do("truncate-dir", lambda: os.truncate(root, 0))
    r.do("truncate-neg", lambda: os.truncate(f, -1))


@scenario
def metadata(root: Path, r: Rec) -> None:
    f = root / "m"
    f.write_bytes(b"m")
    r.do("chmod", lambda: os.chmod(f, 0o4751))
    r.do("stat", lambda: os.stat(f))
    r.do("chown", lambda: os.chown(f, 1234, 5678))
    r.do("stat2", lambda: os.stat(f))
    r.do("chown-uid-only", lambda: os.chown(f, 42, -1))
    r.do("stat3", lambda: os.stat(f))
    r.do("utime", lambda: os.utime(f, ns=(1_000_000_123, 2_000_000_456)))
    st = os.stat(f)
    r.see("times", (st.st_atime_ns, st.st_mtime_ns))
    subprocess.run(["touch", "-m", "-d", "@1500000000", str(f)], check=True)
    st = os.stat(f)
    r.see("touch-m keeps atime", (st.st_atime_ns, st.st_mtime_ns))
    subprocess.run(["touch", "-a", "-d", "@1600000000", str(f)], check=True)
    st = os.stat(f)
    r.see("touch-a keeps mtime", (st.st_atime_ns, st.st_mtime_ns))
    before = os.stat(f).st_mtime_ns
    os.utime(f)
    r.see("utime-now moves", os.stat(f).st_mtime_ns > before)
    d = root / "dd"
    d.mkdir(mode=0o700)
    r.do("dir-stat", lambda: os.stat(d))
    r.do("chmod-dir", lambda: os.chmod(d, 0o1777))
    r.do("dir-stat2", lambda: os.stat(d))
    r.do("statvfs", lambda: os.statvfs(root))
    r.do("access-r", lambda: os.access(f, os.R_OK))
    r.do("access-x", lambda: os.access(f, os.X_OK))


@scenario
def directories(root: Path, r: Rec) -> None:
    r.do("mkdir", lambda: os.mkdir(root / "d", 0o755))
    r.do("mkdir-again", lambda: os.mkdir(root / "d"))
    r.do("mkdir-deep-missing", lambda: os.mkdir(root / "x" / "y"))
    (root / "d" / "f").write_text("f")
    r.do("rmdir-nonempty", lambda: os.rmdir(root / "d"))
    r.do("rmdir-file", lambda: os.rmdir(root / "d" / "f"))
    r.do("unlink-dir", lambda: os.unlink(root / "d"))
    r.do("unlink-missing", lambda: os.unlink(root / "zz"))
    r.do("listdir", lambda: sorted(os.listdir(root / "d")))
    r.do("unlink", lambda: os.unlink(root / "d" / "f"))
    r.do("rmdir", lambda: os.rmdir(root / "d"))
    r.do("rmdir-missing", lambda: os.rmdir(root / "d"))
    for i in range(300):
        (root / f"n{i:03d}").write_bytes(b"")
    r.do("listdir-300", lambda: sorted(os.listdir(root)))
    with os.scandir(root) as it:
        r.see("scandir-types", sorted((e.name, e.is_file(), e.is_dir()) for e in it))
    r.do("nlink-root", lambda: os.stat(root).st_nlink)
    os.mkdir(root / "sub")
    r.do("nlink-after-mkdir", lambda: os.stat(root).st_nlink)
    r.do("long-name", lambda: os.mkdir(root / ("x" * 256)))
    r.do("max-name", lambda: os.mkdir(root / ("y" * 255)))
    r.do("weird-name", lambda: (root / "sp ace\n\x01ü").write_bytes(b"w"))
    r.do("weird-list", lambda: sorted(os.listdir(root / ".")))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    r.do("fsyncdir", lambda: os.fsync(fd))
    os.close(fd)


@scenario
def renames(root: Path, r: Rec) -> None:
    (root / "a").write_bytes(b"A")
    (root / "b").write_bytes(b"B")
    r.do("rename-replace", lambda: os.rename(root / "a", root / "b"))
    r.see("b", (root / "b").read_bytes())
    r.do("a-gone", lambda: os.stat(root / "a"))
    os.mkdir(root / "d1")
    os.mkdir(root / "d2")
    (root / "d2" / "x").write_bytes(b"")
    r.do("dir-onto-nonempty", lambda: os.rename(root / "d1", root / "d2"))
    r.do("file-onto-dir", lambda: os.rename(root / "b", root / "d1"))
    r.do("dir-onto-file", lambda: os.rename(root / "d1", root / "b"))
    r.do("dir-into-self", lambda: os.rename(root / "d1", root / "d1" / "sub"))
    r.do("dir-onto-empty", lambda: os.rename(root / "d2", root / "d1"))
    r.do("listing", lambda: sorted(os.listdir(root)))
    r.do("moved-content", lambda: os.listdir(root / "d1"))
    (root / "c").write_bytes(b"C")
    r.do("noreplace", lambda: renameat2(root / "c", root / "b", 1))
    r.do("noreplace-ok", lambda: renameat2(root / "c", root / "c2", 1))
    r.do("exchange", lambda: renameat2(root / "c2", root / "b", 2))
    r.see("b-after-exchange", (root / "b").read_bytes())
    r.see("c2-after-exchange", (root / "c2").read_bytes())
    r.do("exchange-missing", lambda: renameat2(root / "nope", root / "b", 2))
    r.do("rename-missing", lambda: os.rename(root / "nope", root / "b"))
    fd = os.open(root / "b", os.O_RDONLY)
    os.rename(root / "b", root / "d1" / "moved")
    r.do("read-after-rename", lambda: os.pread(fd, 10, 0))
    os.close(fd)
    r.do("stat-moved", lambda: os.stat(root / "d1" / "moved"))


@scenario
def links(root: Path, r: Rec) -> None:
    (root / "t").write_bytes(b"target")
    r.do("link", lambda: os.link(root / "t", root / "h"))
    a, b = os.stat(root / "t"), os.stat(root / "h")
    r.see("same-ino", a.st_ino == b.st_ino)
    r.see("nlink", (a.st_nlink, b.st_nlink))
    r.do("link-exists", lambda: os.link(root / "t", root / "h"))
    os.mkdir(root / "d")
    r.do("link-dir", lambda: os.link(root / "d", root / "d2"))
    r.do("unlink-one", lambda: os.unlink(root / "t"))
    r.do("other-name", lambda: (root / "h").read_bytes())
    r.do("nlink-after", lambda: os.stat(root / "h").st_nlink)
    r.do("symlink", lambda: os.symlink("h", root / "s"))
    r.do("readlink", lambda: os.readlink(root / "s"))
    r.do("lstat", lambda: stat.S_ISLNK(os.lstat(root / "s").st_mode))
    r.do("lstat-size", lambda: os.lstat(root / "s").st_size)
    r.do("follow", lambda: (root / "s").read_bytes())
    r.do("dangling", lambda: os.symlink("missing", root / "dl"))
    r.do("read-dangling", lambda: (root / "dl").read_bytes())
    r.do("nofollow", lambda: os.open(root / "s", os.O_RDONLY | os.O_NOFOLLOW))
    r.do("symlink-exists", lambda: os.symlink("x", root / "s"))
    r.do("readlink-file", lambda: os.readlink(root / "h"))
    r.do("lchown", lambda: os.chown(root / "s", 7, 8, follow_symlinks=False))
    r.do("lstat-owner", lambda: (os.lstat(root / "s").st_uid, os.stat(root / "s").st_uid))
    r.do("long-target", lambda: os.symlink("z" * 4000, root / "long"))
    r.do("readlink-long", lambda: os.readlink(root / "long"))
    r.do("abs-out", lambda: os.symlink("/", root / "toroot"))
    r.do("abs-out-is-link", lambda: stat.S_ISLNK(os.lstat(root / "toroot").st_mode))


@scenario
def special_files(root: Path, r: Rec) -> None:
    r.do("mkfifo", lambda: os.mkfifo(root / "fifo", 0o600))
    r.do("fifo-stat", lambda: os.stat(root / "fifo"))
    r.do("mknod-chr", lambda: os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3)))
    r.do("chr-stat", lambda: os.stat(root / "null"))
    r.do("mknod-reg", lambda: os.mknod(root / "reg", 0o600 | stat.S_IFREG))
    r.do("reg-stat", lambda: os.stat(root / "reg"))
    r.do("mknod-sock", lambda: os.mknod(root / "sock", 0o600 | stat.S_IFSOCK))
    r.do("sock-stat", lambda: os.stat(root / "sock"))
    r.do("mknod-exists", lambda: os.mkfifo(root / "fifo"))


@scenario
def xattrs(root: Path, r: Rec) -> None:
    f = root / "x"
    f.write_bytes(b"")
    r.do("get-missing", lambda: os.getxattr(f, "user.a"))
    r.do("set", lambda: os.setxattr(f, "user.a", b"1"))
    r.do("set-big", lambda: os.setxattr(f, "user.big", b"v" * 3000))
    r.do("set-create-exists", lambda: os.setxattr(f, "user.a", b"2", os.XATTR_CREATE))
    r.do("get", lambda: os.getxattr(f, "user.a"))
    r.do("get-big", lambda: os.getxattr(f, "user.big"))
    r.do("list", lambda: sorted(os.listxattr(f)))
    r.do("set-trusted", lambda: os.setxattr(f, "trusted.t", b"t"))
    r.do("get-trusted", lambda: os.getxattr(f, "trusted.t"))
    r.do("remove", lambda: os.removexattr(f, "user.a"))
    r.do("remove-missing", lambda: os.removexattr(f, "user.a"))
    r.do("bad-namespace", lambda: os.setxattr(f, "bogus.a", b"1"))
    r.do("list-after", lambda: sorted(os.listxattr(f)))
    d = root / "d"
    d.mkdir()
    r.do("dir-set", lambda: os.setxattr(d, "user.d", b"dir"))
    r.do("dir-get", lambda: os.getxattr(d, "user.d"))
    r.do("setfacl", lambda: subprocess.run(
        ["setfacl", "-m", "u:1000:r", str(f)], capture_output=True).returncode)
    r.do("getfacl", lambda: subprocess.run(
        ["getfacl", "-c", "-n", str(f)], capture_output=True).stdout)
    r.do("mode-after-acl", lambda: os.stat(f).st_mode)


@scenario
def unlinked_open(root: Path, r: Rec) -> None:
    f = root / "u"
    f.write_bytes(b"still here")
    fd = os.open(f, os.O_RDWR)
    r.do("unlink", lambda: os.unlink(f))
    r.do("read", lambda: os.pread(fd, 100, 0))
    r.do("write", lambda: os.pwrite(fd, b"X", 0))
    r.do("fstat-nlink", lambda: os.fstat(fd).st_nlink)
    r.do("fchmod", lambda: os.fchmod(fd, 0o600))
    r.do("ftruncate", lambda: os.ftruncate(fd, 3))
    r.do("read2", lambda: os.pread(fd, 100, 0))
    r.do("fsync", lambda: os.fsync(fd))
    r.do("fdatasync", lambda: os.fdatasync(fd))
    os.close(fd)
    r.do("gone", lambda: os.stat(f))


@scenario
def mmap_and_direct(root: Path, r: Rec) -> None:
    f = root / "mm"
    f.write_bytes(b"\0" * 8192)
    with open(f, "r+b") as fh:
        m = mmap.mmap(fh.fileno(), 8192, mmap.MAP_SHARED)
        m[100:105] = b"mmap!"
        m.flush()
        m.close()
    r.see("mmap-written", f.read_bytes())
    data = random.Random(3).randbytes(65536)
    f2 = root / "direct"
    f2.write_bytes(data)
    fd = os.open(f2, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 65536)
    r.do("direct-read", lambda: os.preadv(fd, [buf], 0))
    r.see("direct-bytes", bytes(buf))
    os.close(fd)
    fd = os.open(f2, os.O_WRONLY | os.O_DIRECT)
    buf[:4096] = b"D" * 4096
    r.do("direct-write", lambda: os.pwritev(fd, [memoryview(buf)[:4096]], 4096))
    os.close(fd)
    r.see("after-direct", f2.read_bytes())


@scenario
def exec_and_sqlite(root: Path, r: Rec) -> None:
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho ran \"$1\"\n")
    os.chmod(script, 0o755)
    r.do("exec", lambda: subprocess.run([str(script), "ok"], capture_output=True).stdout)
    db = root / "db.sqlite"
    out = subprocess.run(
        ["sqlite3", str(db)],
        input="PRAGMA journal_mode=WAL; CREATE TABLE t(a); "
              "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<5000) "
              "INSERT INTO t SELECT x FROM c; SELECT count(*), sum(a) FROM t; "
              "PRAGMA integrity_check;",
        capture_output=True, text=True)
    r.see("sqlite", (out.returncode, out.stdout, out.stderr))


def run_scenario(name: str, root: Path) -> list[tuple[str, Any]]:
    rec = Rec()
    SCENARIOS[name](root, rec)
    return rec.obs


if __name__ == "__main__":
    # python scenarios.py NAME ROOT  -> JSON observations on stdout
    print(json.dumps(run_scenario(sys.argv[1], Path(sys.argv[2]))))

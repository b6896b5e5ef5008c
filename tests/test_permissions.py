"""Permission outcomes for another user on an allow_other mount must equal those on the
plain directory: the kernel checks (default_permissions) and the backing ext4 checks
(the daemon takes the caller's fsuid/fsgid/groups) must agree, ACLs included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mounting import Mount

UID, GID, GROUP2 = 1000, 1000, 4243
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv")

# Run as the other user; prints JSON observations (errno names on failure).
PROBE = r'''
import errno, json, os, sys
root = sys.argv[1]
obs = []
def do(label, fn):
    try:
        v = fn()
    except OSError as e:
        v = "errno:" + errno.errorcode[e.errno]
    if isinstance(v, bytes):
        v = v.decode()
    obs.append([label, v])
p = lambda *a: os.path.join(root, *a)
def create(path):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644); os.close(fd)
    st = os.stat(path); return [st.st_uid, st.st_gid, oct(st.st_mode)]
do("read-private", lambda: open(p("private"), "rb").read())
do("read-public", lambda: open(p("public"), "rb").read())
do("write-public", lambda: open(p("public"), "ab").write(b"x"))
do("access-private", lambda: os.access(p("private"), os.R_OK))
do("create-ro-dir", lambda: create(p("ro_dir", "f")))
do("create-rw-dir", lambda: create(p("rw_dir", "mine")))
do("mkdir-rw-dir", lambda: os.mkdir(p("rw_dir", "d")) or oct(os.stat(p("rw_dir", "d")).st_mode))
do("unlink-sticky-other", lambda: os.unlink(p("sticky", "rootfile")))
do("rename-sticky-other", lambda: os.rename(p("sticky", "rootfile"), p("sticky", "x")))
do("chmod-public", lambda: os.chmod(p("public"), 0o777))
do("chmod-own", lambda: os.chmod(p("rw_dir", "mine"), 0o600))
do("chown-own-to-root", lambda: os.chown(p("rw_dir", "mine"), 0, 0))
do("chgrp-own-to-group2", lambda: os.chown(p("rw_dir", "mine"), -1, 4243)
   or os.stat(p("rw_dir", "mine")).st_gid)
do("utime-now-world-writable", lambda: os.utime(p("world_writable")))
do("utime-explicit-world-writable", lambda: os.utime(p("world_writable"), (1, 1)))
do("truncate-world-writable", lambda: os.truncate(p("world_writable"), 1))
do("truncate-public", lambda: os.truncate(p("public"), 1))
do("read-acl-file", lambda: open(p("acl_file"), "rb").read())
do("write-acl-file", lambda: open(p("acl_file"), "ab").write(b"x"))
do("read-group2-file", lambda: open(p("group2_file"), "rb").read())
do("create-setgid-dir", lambda: create(p("setgid_dir", "g")))
do("mkdir-setgid-dir", lambda: os.mkdir(p("setgid_dir", "gd")) or
   [os.stat(p("setgid_dir", "gd")).st_gid, oct(os.stat(p("setgid_dir", "gd")).st_mode)])
do("hardlink-private", lambda: os.link(p("private"), p("rw_dir", "stolen")))
do("list-private-dir", lambda: os.listdir(p("private_dir")))
do("enter-private-dir", lambda: os.stat(p("private_dir", "inner")))
do("setxattr-public", lambda: os.setxattr(p("public"), "user.x", b"1"))
do("setxattr-own", lambda: os.setxattr(p("rw_dir", "mine"), "user.x", b"1"))
do("getxattr-own", lambda: os.getxattr(p("rw_dir", "mine"), "user.x"))
do("mknod-fifo", lambda: os.mkfifo(p("rw_dir", "fifo")) or os.stat(p("rw_dir", "fifo")).st_uid)
do("dotdot-escape", lambda: sorted(os.listdir(p("rw_dir", "..")))[:3])
json.dump(obs, sys.stdout)
'''


def populate(root: Path) -> None:
    os.chmod(root, 0o755)
    (root / "private").write_bytes(b"secret")
    os.chmod(root / "private", 0o600)
    (root / "public").write_bytes(b"public")
    os.chmod(root / "public", 0o644)
    (root / "ro_dir").mkdir(mode=0o755)
    (root / "rw_dir").mkdir()
    os.chmod(root / "rw_dir", 0o777)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "sticky" / "rootfile").write_bytes(b"r")
    os.chmod(root / "sticky" / "rootfile", 0o666)
    (root / "world_writable").write_bytes(b"ww")
    os.chmod(root / "world_writable", 0o666)
    (root / "acl_file").write_bytes(b"acl")
    os.chmod(root / "acl_file", 0o600)
    subprocess.run(["setfacl", "-m", f"u:{UID}:r", str(root / "acl_file")], check=True)
    (root / "group2_file").write_bytes(b"g2")
    os.chown(root / "group2_file", 0, GROUP2)
    os.chmod(root / "group2_file", 0o640)
    (root / "setgid_dir").mkdir()
    os.chown(root / "setgid_dir", 0, 4242)
    os.chmod(root / "setgid_dir", 0o2777)
    (root / "private_dir").mkdir(mode=0o700)
    (root / "private_dir" / "inner").write_bytes(b"")


def probe(root: Path) -> list[list[object]]:
    out = subprocess.run(
        ["setpriv", f"--reuid={UID}", f"--regid={GID}", f"--groups={GROUP2}",
         sys.executable, "-c", PROBE, str(root)],
        capture_output=True, text=True, timeout=60, check=True, cwd="/")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_other_user_sees_same_permission_outcomes(world_tmp: Path) -> None:
    plain, src, mnt = world_tmp / "plain", world_tmp / "src", world_tmp / "mnt"
    for d in (plain, src, mnt):
        d.mkdir()
    os.chmod(mnt, 0o755)
    populate(plain)
    populate(src)
    with Mount(src, mnt, "allow_other", log=world_tmp / "daemon.log"):
        expected = probe(plain)
        got = probe(mnt)
    diffs = [(e, g) for e, g in zip(expected, got, strict=True) if e != g]
    assert not diffs, "\n".join(f"plain {e}\nmount {g}" for e, g in diffs)
    seen = dict((k, v) for k, v in got)
    # The outcomes are real denials and grants, not vacuous matches.
    assert seen["read-private"] == "errno:EACCES"
    assert seen["unlink-sticky-other"] == "errno:EPERM"
    assert seen["read-acl-file"] == "acl"
    assert seen["read-group2-file"] == "g2"
    assert seen["create-rw-dir"][:2] == [UID, GID]
    assert seen["utime-explicit-world-writable"] == "errno:EPERM"
    assert seen["utime-now-world-writable"] is None


def test_without_allow_other_other_users_are_refused(world_tmp: Path) -> None:
    src, mnt = world_tmp / "src", world_tmp / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"x")
    os.chmod(src / "f", 0o644)
    with Mount(src, mnt, log=world_tmp / "daemon.log"):
        res = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
                              "cat", str(mnt / "f")], capture_output=True, text=True)
    assert res.returncode != 0 and "Permission denied" in res.stderr

"""A non-root user on an allow_other mount (daemon running as root) cannot read what
the backing modes deny, and cannot get out of SOURCE through symlinks or `..`.

Layout (a world-traversable tmp dir; SOURCE and the mountpoint at the same depth, so a
relative symlink means the same outside file from both):

    base/outside_secret          0600 root  "TOPSECRET-file"
    base/outside_private/        0700 root  secret: "TOPSECRET-dir"
    base/a/src/                  SOURCE
    base/b/mnt/                  MOUNTPOINT

The probe runs as uid 1000 (setpriv), records every outcome (bytes or errno name), and
the test asserts no secret ever shows up, each denial has the right errno, and nothing
outside SOURCE changed. The swap attacks change SOURCE directly (the user can reach it)
between the mount's lookup and its use.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.mounting import Mount
from tests.support.probe import FINISH, PRELUDE, run_probe

UID = GID = 1000
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv")

PROBE = PRELUDE + r'''
import time
mnt, src, base = sys.argv[1], sys.argv[2], sys.argv[3]

def read(*parts):
    with open(os.path.join(mnt, *parts), "rb") as f:
        return f.read()

def ino(path):
    st = os.stat(path)
    return [st.st_dev, st.st_ino]

m = lambda *p: os.path.join(mnt, *p)
do("read-private", lambda: read("private"))
do("read-private-dir-inner", lambda: read("private_dir", "inner"))
do("list-private-dir", lambda: os.listdir(m("private_dir")))
do("read-group-only", lambda: read("group_only"))
do("getxattr-private", lambda: os.getxattr(m("private"), "user.secret"))
do("read-abs-link", lambda: read("abs_link"))
do("read-abs-dir-link", lambda: read("abs_dir_link", "secret"))
do("list-abs-dir-link", lambda: os.listdir(m("abs_dir_link")))
do("read-rel-link", lambda: read("rel_link"))
do("read-rel-dir-link", lambda: read("rel_dir_link"))
do("read-dotdot-link-src", lambda: read("dotdot_link", "src", "private"))
do("open-nofollow-link", lambda: os.open(m("abs_link"), os.O_RDONLY | os.O_NOFOLLOW))
do("read-loop-link", lambda: read("loop_link"))
do("readlink-abs", lambda: os.readlink(m("abs_link")))
do("read-public", lambda: read("public"))
# `..` is resolved by the kernel: above the mount root is the mountpoint's parent.
do("dotdot-of-root", lambda: sorted(os.listdir(m(".."))))
do("dotdot-of-subdir-is-root", lambda: ino(m("rw_dir", "..")) == ino(mnt))
do("dotdot-of-control-dir", lambda: ino(m(".zcachefs", "..")) == ino(mnt))
def openat_dotdot():
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            st = os.fstat(up)
            return [st.st_dev, st.st_ino]
        finally:
            os.close(up)
    finally:
        os.close(fd)
do("openat-dotdot-of-root", openat_dotdot)
do("deep-dotdot", lambda: read("rw_dir", "..", "rw_dir", "..", "private"))
do("hardlink-private", lambda: os.link(m("private"), m("rw_dir", "stolen")))
do("hardlink-outside", lambda: os.link(os.path.join(base, "outside_secret"),
                                       m("rw_dir", "stolen2")))
do("create-in-private-dir", lambda: os.open(m("private_dir", "x"), os.O_CREAT | os.O_WRONLY))
# Symlinks the user makes inside the mount, pointing out of it.
os.symlink(os.path.join(base, "outside_secret"), m("rw_dir", "my_link"))
os.symlink(os.path.join(base, "outside_private"), m("rw_dir", "my_dir_link"))
do("read-my-link", lambda: read("rw_dir", "my_link"))
do("write-my-link", lambda: os.open(m("rw_dir", "my_link"), os.O_WRONLY))
do("truncate-my-link", lambda: os.truncate(m("rw_dir", "my_link"), 0))
do("chmod-my-link", lambda: os.chmod(m("rw_dir", "my_link"), 0o777))
do("read-my-dir-link", lambda: read("rw_dir", "my_dir_link", "secret"))
do("create-through-my-dir-link", lambda: os.open(m("rw_dir", "my_dir_link", "new"),
                                                 os.O_CREAT | os.O_WRONLY))
do("lutime-my-link", lambda: os.utime(m("rw_dir", "my_link"), (1, 1),
                                      follow_symlinks=False))
do("lchown-my-link", lambda: os.chown(m("rw_dir", "my_link"), int(sys.argv[4]),
                                      int(sys.argv[4]), follow_symlinks=False))
do("lsetxattr-my-link", lambda: os.setxattr(m("rw_dir", "my_link"), "user.x", b"1",
                                            follow_symlinks=False))
do("rename-my-link-over-private", lambda: os.rename(m("rw_dir", "my_link"), m("private")))
# Swap attacks: change SOURCE directly between the mount's lookup and its use.
os.mkdir(m("swap", "d"))
with open(m("swap", "d", "f"), "wb") as f:
    f.write(b"mine")
with open(m("swap", "g"), "wb") as f:
    f.write(b"mine too")
do("swap-before", lambda: read("swap", "d", "f") + read("swap", "g"))
os.rename(os.path.join(src, "swap", "d"), os.path.join(src, "swap", "d_old"))
os.symlink(os.path.join(base, "outside_private"), os.path.join(src, "swap", "d"))
os.unlink(os.path.join(src, "swap", "g"))
os.symlink(os.path.join(base, "outside_secret"), os.path.join(src, "swap", "g"))
do("swap-dir-now", lambda: read("swap", "d", "secret"))
do("swap-dir-list-now", lambda: os.listdir(m("swap", "d")))
do("swap-file-now", lambda: read("swap", "g"))
time.sleep(1.5)  # past the kernel's entry and attribute timeouts
do("swap-dir-later", lambda: read("swap", "d", "secret"))
do("swap-dir-list-later", lambda: os.listdir(m("swap", "d")))
do("swap-file-later", lambda: read("swap", "g"))
''' + FINISH

SECRETS = ("TOPSECRET",)


@pytest.fixture
def base(world_tmp: Path) -> Path:
    return world_tmp


def populate(base: Path) -> tuple[Path, Path]:
    (base / "outside_secret").write_bytes(b"TOPSECRET-file")
    os.chmod(base / "outside_secret", 0o600)
    os.setxattr(base / "outside_secret", "user.mark", b"TOPSECRET-xattr")
    (base / "outside_private").mkdir(mode=0o700)
    (base / "outside_private" / "secret").write_bytes(b"TOPSECRET-dir")
    src, mnt = base / "a" / "src", base / "b" / "mnt"
    for d in (src.parent, mnt.parent, src, mnt):
        d.mkdir()
        os.chmod(d, 0o755)
    (src / "private").write_bytes(b"TOPSECRET-private")
    os.chmod(src / "private", 0o600)
    os.setxattr(src / "private", "user.secret", b"TOPSECRET-x")
    (src / "private_dir").mkdir(mode=0o700)
    (src / "private_dir" / "inner").write_bytes(b"TOPSECRET-inner")
    (src / "group_only").write_bytes(b"TOPSECRET-group")
    os.chmod(src / "group_only", 0o640)
    (src / "public").write_bytes(b"public")
    os.chmod(src / "public", 0o644)
    os.symlink(base / "outside_secret", src / "abs_link")
    os.symlink(base / "outside_private", src / "abs_dir_link")
    os.symlink("../../outside_secret", src / "rel_link")
    os.symlink("../../outside_private/secret", src / "rel_dir_link")
    os.symlink("..", src / "dotdot_link")
    os.symlink("loop_link", src / "loop_link")
    for name in ("rw_dir", "swap"):
        (src / name).mkdir()
        os.chmod(src / name, 0o777)
    return src, mnt


def outside_state(base: Path) -> list[object]:
    st = os.lstat(base / "outside_secret")
    return [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
            os.listxattr(base / "outside_secret"),
            (base / "outside_secret").read_bytes(),
            sorted(os.listdir(base / "outside_private")),
            oct(os.stat(base / "outside_private").st_mode)]


def test_no_escape_through_modes_symlinks_or_dotdot(base: Path) -> None:
    src, mnt = populate(base)
    before = outside_state(base)
    with Mount(src, mnt, "allow_other", log=base / "daemon.log"):
        res = run_probe(PROBE, str(mnt), str(src), str(base), str(UID), uid=UID, gid=GID,
                        timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        obs: dict[str, object] = json.loads(res.stdout)
        after_private = (src / "private").read_bytes()
    dump = json.dumps(obs)
    assert not any(s in dump for s in SECRETS), json.dumps(obs, indent=1)

    denied = {
        "read-private", "read-private-dir-inner", "list-private-dir", "read-group-only",
        "getxattr-private", "read-abs-link", "read-abs-dir-link", "list-abs-dir-link",
        "read-rel-link", "read-rel-dir-link", "read-my-link", "write-my-link",
        "truncate-my-link", "read-my-dir-link", "create-through-my-dir-link",
        "create-in-private-dir", "deep-dotdot", "swap-dir-later", "swap-dir-list-later",
        "swap-file-later",
    }
    wrong = {k: obs[k] for k in denied if obs[k] != "errno:EACCES"}
    assert not wrong, wrong
    assert obs["chmod-my-link"] == "errno:EPERM"  # follows to root's file: not the owner
    assert obs["open-nofollow-link"] == "errno:ELOOP"
    assert obs["read-loop-link"] == "errno:ELOOP"
    assert obs["hardlink-private"] == "errno:EPERM"  # protected_hardlinks, checked as uid
    assert obs["hardlink-outside"] == "errno:EXDEV"
    assert obs["rename-my-link-over-private"] == "errno:EACCES"  # root's dir, not ours
    # The symlink itself is the user's: changing *it* is fine, and must not touch its target.
    assert obs["lchown-my-link"] is None
    assert obs["lutime-my-link"] in (None, "errno:ENOTSUP")  # see the test below
    assert obs["lsetxattr-my-link"] == "errno:EPERM"  # no user.* xattrs on symlinks
    assert obs["readlink-abs"] == str(base / "outside_secret")
    assert obs["read-public"] == "public"
    # `..` never leads into SOURCE's parent: above the root is the mountpoint's parent.
    assert obs["dotdot-of-root"] == ["mnt"]
    assert obs["dotdot-of-subdir-is-root"] is True
    assert obs["dotdot-of-control-dir"] is True
    st = os.stat(mnt.parent)
    assert obs["openat-dotdot-of-root"] == [st.st_dev, st.st_ino]
    assert obs["read-dotdot-link-src"] == "errno:ENOENT"  # mnt/.. is base/b: no src there
    # Swapped under the mount: the stale names may still lead to the user's own old
    # files, or to a denial, never to the secret.
    assert obs["swap-before"] == "minemine too"
    assert obs["swap-dir-now"] in ("errno:ENOENT", "errno:EACCES")
    assert obs["swap-dir-list-now"] in (["f"], "errno:EACCES")
    assert obs["swap-file-now"] in ("mine too", "errno:EACCES", "errno:ENOENT")
    # Nothing outside SOURCE changed, and root's files in SOURCE are intact.
    assert outside_state(base) == before
    assert after_private == b"TOPSECRET-private"
    assert os.lstat(src / "rw_dir" / "my_link").st_uid == UID
    if obs["lutime-my-link"] is None:
        assert os.lstat(src / "rw_dir" / "my_link").st_mtime == 1
    assert not (base / "outside_private" / "new").exists()


def test_owner_can_set_the_times_of_a_symlink(base: Path) -> None:
    src, mnt = populate(base)
    with Mount(src, mnt, "allow_other", log=base / "daemon.log"):
        res = run_probe("import os, sys; p = os.path.join(sys.argv[1], 'rw_dir', 'l'); "
                        "os.symlink('public', p); os.utime(p, (5, 5), follow_symlinks=False)",
                        str(mnt), uid=UID, gid=GID, check=False)
    assert res.returncode == 0, res.stderr
    assert os.lstat(src / "rw_dir" / "l").st_mtime == 5
    assert os.stat(src / "public").st_mtime != 5

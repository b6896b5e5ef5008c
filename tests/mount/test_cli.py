"""The command line and the daemon's life: errors, daemon mode, signals, kill -9,
mounting over the source directory itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mounting import Mount, force_unmount, is_fuse_mounted, require_fuse, wait_until


def zcachefs(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zcachefs", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    return src, mnt


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing", "{mnt}"], "source '{tmp}/missing' does not exist"),
    (["{src}", "{tmp}/missing"], "mountpoint '{tmp}/missing' does not exist"),
    (["{file}", "{mnt}"], "is not a directory"),
    (["{src}", "{file}"], "mountpoint '{file}' is not a directory"),
    (["-o", "bogus", "{src}", "{mnt}"], "unknown option 'bogus'"),
    (["-o", "threads=0", "{src}", "{mnt}"], "bad value for option 'threads'"),
    (["-o", "threads=abc", "{src}", "{mnt}"], "bad value for option 'threads'"),
    (["-o", "attr_timeout=-1", "{src}", "{mnt}"], "bad value for option 'attr_timeout'"),
    (["-o", "threads", "{src}", "{mnt}"], "needs a value"),
    (["-o", "fsname", "{src}", "{mnt}"], "needs a value"),
    (["-o", "max_read=abc", "{src}", "{mnt}"], "bad value for option 'max_read'"),
    (["-o", "threads=1,,bogus=1", "{src}", "{mnt}"], "unknown option 'bogus'"),
    (["{src}"], "the following arguments are required"),
    (["--frobnicate", "{src}", "{mnt}"], "unrecognized arguments"),
])
def test_bad_invocations_print_one_line(args: list[str], message: str, dirs: tuple[Path, Path],
                                        tmp_path: Path) -> None:
    src, mnt = dirs
    file = tmp_path / "file"
    file.write_text("x")
    fmt = {"tmp": tmp_path, "src": src, "mnt": mnt, "file": file}
    res = zcachefs(*[a.format(**fmt) for a in args])
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("zcachefs: ")
    assert message.format(**fmt) in lines[0]
    assert not is_fuse_mounted(mnt)


def test_generic_fstab_flags_are_ignored(mount_factory: object, tmp_path: Path) -> None:
    m = mount_factory(options="defaults,auto,noauto,nofail,_netdev,user,users,rw,"  # type: ignore[operator]
                      "x-systemd.automount,comment=foo,fsname=mysrc")
    with open("/proc/self/mountinfo") as f:
        entry = [line for line in f if f" {m.mountpoint} " in line]
    assert " fuse.zcachefs mysrc " in entry[0]


def test_daemon_mode_returns_once_mounted(dirs: tuple[Path, Path]) -> None:
    require_fuse()
    src, mnt = dirs
    (src / "hello").write_text("world")
    res = zcachefs(str(src), str(mnt))
    try:
        assert res.returncode == 0, res.stderr
        assert is_fuse_mounted(mnt)
        assert (mnt / "hello").read_text() == "world"  # usable on the very next line
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        assert wait_until(lambda: not is_fuse_mounted(mnt))
        force_unmount(mnt)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_and_exits_zero(sig: signal.Signals, dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    m = Mount(src, mnt).start()
    try:
        (mnt / "f").write_text("data")
        m.proc.send_signal(sig)  # type: ignore[union-attr]
        assert m.proc.wait(timeout=10) == 0  # type: ignore[union-attr]
        assert not is_fuse_mounted(mnt)
        assert (src / "f").read_text() == "data"
        assert "unmounted" in m.read_log()
    finally:
        m.stop()


def test_fusermount_unmount_exits_zero(zmount: Mount) -> None:
    subprocess.run(["fusermount3", "-u", str(zmount.mountpoint)], check=True)
    assert zmount.proc.wait(timeout=10) == 0  # type: ignore[union-attr]


def test_kill9_then_lazy_unmount_then_remount(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    m = Mount(src, mnt).start()
    try:
        (mnt / "before").write_text("kept")
        os.kill(m.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)  # type: ignore[union-attr]
        assert is_fuse_mounted(mnt)  # a dead mount stays until cleared
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=True)
        assert not is_fuse_mounted(mnt)
    finally:
        m.stop()
    with Mount(src, mnt):
        assert (mnt / "before").read_text() == "kept"


def test_mount_over_the_source_directory(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "old").write_bytes(b"present before the mount")
    (d / "sub").mkdir()
    with Mount(d, d):
        assert is_fuse_mounted(d)
        assert (d / "old").read_bytes() == b"present before the mount"
        (d / "new").write_bytes(b"written through the mount")
        (d / "sub" / "deep").write_bytes(b"deep")
        os.rename(d / "new", d / "sub" / "moved")
        assert sorted(os.listdir(d)) == ["old", "sub"]
        assert sorted(os.listdir(d / "sub")) == ["deep", "moved"]
        os.symlink("old", d / "link")
        assert (d / "link").read_bytes() == b"present before the mount"
    assert not is_fuse_mounted(d)
    assert (d / "sub" / "moved").read_bytes() == b"written through the mount"
    assert os.readlink(d / "link") == "old"


def test_debug_option_logs_requests(mount_factory: object) -> None:
    m = mount_factory(options="debug")  # type: ignore[operator]
    (m.mountpoint / "x").write_text("x")
    time.sleep(0.1)
    assert "DEBUG" in m.read_log()

"""A tree of 100,000 files can be walked and read; descriptors do not leak: once the
kernel forgets the inodes (drop_caches), the daemon's descriptors fall back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.mounting import Mount, wait_until

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (/proc/sys/vm/drop_caches)")

N_FILES = 100_000


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def drop_kernel_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@needs_root
@pytest.mark.slow
def test_walk_and_read_100k_files(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    for d in range(100):
        sub = src / f"d{d:02d}"
        sub.mkdir()
        for i in range(N_FILES // 100):
            (sub / f"f{i}").write_bytes(b"%d/%d" % (d, i))
    with Mount(src, mnt, log=tmp_path / "daemon.log") as m:
        baseline = open_fds(m.pid)
        seen = 0
        for dirpath, _dirs, files in os.walk(mnt):
            d = int(Path(dirpath).name[1:]) if Path(dirpath).name.startswith("d") else -1
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as fh:
                    assert fh.read() == b"%d/%s" % (d, name[1:].encode())
                seen += 1
        assert seen == N_FILES
        peak = open_fds(m.pid)
        drop_kernel_caches()
        assert wait_until(lambda: open_fds(m.pid) <= baseline + 10, timeout=60), (
            f"fds: baseline {baseline}, after walk {peak}, after forget {open_fds(m.pid)}")

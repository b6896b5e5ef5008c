"""The request loop's poll spin (pyfuse3 patch, `poll_spin`) through a real mount: a
reader served from memory has its next request found by a spin, misses served by worker
threads still complete and match, and poll_spin=0 never spins. Counters only (the
daemon's unmount line), never timing: whether a spin finds the next request is the
machine's business, so the one assertion about it uses a window (5 ms) far longer than
any round trip."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.mounting import Mount, control_stats

PAGE = 4096

multi_cpu = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                               reason="the spin is off on one CPU")


def patched_pyfuse3() -> bool:
    import pyfuse3

    return bool(getattr(pyfuse3, "POLL_SPIN", False))


def pages(n: int) -> bytes:
    return b"".join(b"%08d" % i * (PAGE // 8) for i in range(n))


def spins_at_unmount(m: Mount) -> tuple[int, int] | None:
    """(spins, found a request) from the daemon's unmount line; None: no spin line."""
    m.stop()
    found = re.search(r"poll spins: (\d+), (\d+) found a request", m.read_log())
    return (int(found[1]), int(found[2])) if found else None


def read_in_pages(path: Path, n: int) -> bytes:
    """n 4 KiB reads, one request each (the mounts below use direct_io)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return b"".join(os.pread(fd, PAGE, i * PAGE) for i in range(n))
    finally:
        os.close(fd)


@multi_cpu
def test_a_reader_served_from_memory_is_caught_by_the_spin(mount_factory: object) -> None:
    if not patched_pyfuse3():
        pytest.fail("pyfuse3 is not zcachefs's build: run `make venv`")
    m: Mount = mount_factory(options="direct_io,poll_spin=5000,page_size=4K")  # type: ignore[operator]
    data = pages(256)
    (m.source / "f").write_bytes(data)
    assert read_in_pages(m.mountpoint / "f", 256) == data  # cold: misses in threads
    before = control_stats(m.mountpoint)
    for _ in range(4):
        assert read_in_pages(m.mountpoint / "f", 256) == data  # hits
    after = control_stats(m.mountpoint)
    assert after["backing_reads"] == before["backing_reads"]
    counted = spins_at_unmount(m)
    assert counted is not None
    spins, caught = counted
    assert 0 < caught <= spins


@multi_cpu
def test_misses_complete_and_match_while_the_loop_spins(mount_factory: object) -> None:
    """A long window: a miss's worker thread ends the spin through the thread pool's
    eventfd; the bytes of every cold, warm and written page match."""
    if not patched_pyfuse3():
        pytest.fail("pyfuse3 is not zcachefs's build: run `make venv`")
    m: Mount = mount_factory(  # type: ignore[operator]
        options="direct_io,poll_spin=10000,page_size=4K,memlimit=1M,cache_size=64K")
    data = bytearray(pages(1024))  # 4 MiB in a 1 MiB pool: misses all along
    (m.source / "f").write_bytes(data)
    path = m.mountpoint / "f"
    for round_ in range(3):
        assert read_in_pages(path, 1024) == data
        fd = os.open(path, os.O_WRONLY)
        try:
            off = (round_ * 97 % 1024) * PAGE
            os.pwrite(fd, b"%d" % round_ * PAGE, off)
            data[off:off + PAGE] = (b"%d" % round_ * PAGE)
        finally:
            os.close(fd)
    assert read_in_pages(path, 1024) == data
    assert (m.source / "f").read_bytes() == data
    assert control_stats(m.mountpoint)["misses"] > 0
    counted = spins_at_unmount(m)
    assert counted is not None and counted[0] > 0


def test_poll_spin_0_never_spins(mount_factory: object) -> None:
    m: Mount = mount_factory(options="direct_io,poll_spin=0,page_size=4K")  # type: ignore[operator]
    data = pages(64)
    (m.source / "f").write_bytes(data)
    for _ in range(3):
        assert read_in_pages(m.mountpoint / "f", 64) == data
    assert spins_at_unmount(m) is None
    assert "poll_spin=0)" in m.read_log()

"""The cache through a real mount: hits proven by the daemon's counters and by the
number of backing reads (never by timing), coherence after writes, truncates and
outside changes, and the pool staying within memlimit."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from mounting import Mount, control_stats, settle

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (/proc/sys/vm/drop_caches)")

PAGE = 4096


stats = control_stats


def compressible(n_pages: int, seed: int = 1) -> bytes:
    """Log-like lines: every page compresses well under half a page."""
    rnd = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < n_pages * PAGE:
        out += b"%06d INFO request served from cache tier %d in %d us\n" % (
            i, rnd.randrange(3), rnd.randrange(1000))
        i += 1
    return bytes(out[: n_pages * PAGE])


def read_all(path: Path, chunk: int = 128 * 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def dmount(mount_factory: object) -> Mount:
    # direct_io: every read reaches the daemon, so its tiers are what serve it.
    return mount_factory(options="direct_io,memlimit=16M,cache_size=256K")  # type: ignore[operator,no-any-return]


def test_second_read_is_served_by_the_cache(dmount: Mount) -> None:
    data = compressible(1000)
    (dmount.source / "f").write_bytes(data)
    assert read_all(dmount.mountpoint / "f") == data
    first = stats(dmount.mountpoint)
    assert first["backing_read_bytes"] >= len(data)
    assert read_all(dmount.mountpoint / "f") == data
    second = stats(dmount.mountpoint)
    assert second["backing_reads"] == first["backing_reads"]  # no backing I/O at all
    assert second["hits"] > first["hits"]  # 1000 pages > 64 in tier 1: the pool served
    assert second["stored_pages"] > 0
    assert second["orig_data_size"] / second["compr_data_size"] > 2


def test_pool_hits_are_exclusive(dmount: Mount) -> None:
    data = compressible(400)
    (dmount.source / "f").write_bytes(data)
    read_all(dmount.mountpoint / "f")
    s1 = settle(dmount.mountpoint)
    with open(dmount.mountpoint / "f", "rb") as f:
        assert f.read(PAGE) == data[:PAGE]  # an early page: in the pool, not tier 1
        s2 = stats(dmount.mountpoint)
        f.seek(0)
        assert f.read(PAGE) == data[:PAGE]  # now in tier 1: the pool copy is gone
    s3 = stats(dmount.mountpoint)
    assert s2["hits"] == s1["hits"] + 1
    assert s3["hits"] == s2["hits"] and s3["cache_hits"] == s2["cache_hits"] + 1
    # One page left tier 1 for the pool in exchange: the pool holds as many as before.
    assert settle(dmount.mountpoint)["stored_pages"] == s1["stored_pages"]


def test_zero_and_poor_pages(dmount: Mount) -> None:
    (dmount.source / "z").write_bytes(bytes(200 * PAGE) + b"\xab" * (50 * PAGE)
                                      + os.urandom(100 * PAGE))
    read_all(dmount.mountpoint / "z")
    s = settle(dmount.mountpoint)
    assert s["zero_pages"] > 100
    assert s["same_filled_pages"] > 10
    assert s["reject_compress_poor"] > 30
    assert s["orig_data_size"] == s["stored_pages"] * PAGE  # zero pages excluded


def test_writes_truncates_and_outside_changes_never_serve_stale_bytes(dmount: Mount) -> None:
    src, mnt = dmount.source / "f", dmount.mountpoint / "f"
    model = bytearray(compressible(300, seed=2))
    src.write_bytes(model)
    rnd = random.Random(5)
    for step in range(150):
        op = rnd.random()
        if op < 0.35:
            off, data = rnd.randrange(0, len(model) + PAGE), rnd.randbytes(rnd.randrange(1, 9000))
            with open(mnt, "r+b") as f:
                f.seek(off)
                f.write(data)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
        elif op < 0.45:
            size = rnd.randrange(0, len(model) + 3 * PAGE)
            os.truncate(mnt, size)
            model = model[:size] + bytes(max(0, size - len(model)))
        elif op < 0.55:
            # A change made outside the mount: seen at the next open.
            time.sleep(0.002)
            off = rnd.randrange(0, max(1, len(model)))
            data = rnd.randbytes(100)
            with open(src, "r+b") as f:
                f.seek(off)
                f.write(data)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
        else:
            assert read_all(mnt) == bytes(model), f"step {step}"
    assert read_all(mnt) == bytes(model)


def test_pool_stays_within_memlimit_and_lowering_it_shrinks(mount_factory: object) -> None:
    m = mount_factory(options="direct_io,memlimit=2M,cache_size=64K")  # type: ignore[operator]
    for i in range(4):
        (m.source / f"f{i}").write_bytes(compressible(600, seed=i))
    for _ in range(2):
        for i in range(4):
            read_all(m.mountpoint / f"f{i}")
    s = settle(m.mountpoint)
    assert s["mem_used_total"] <= 2 << 20
    assert s["mem_used_max"] <= 2 << 20
    assert s["pool_limit_hit"] > 0 and s["evicted_pages"] > 0
    (m.mountpoint / ".zcachefs" / "memlimit").write_text("512K\n")
    deadline = time.monotonic() + 10
    while stats(m.mountpoint)["mem_used_total"] > 512 << 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(m.mountpoint)["mem_used_total"] <= 512 << 10


def test_codec_switch_keeps_old_pages_readable(dmount: Mount) -> None:
    data = compressible(500, seed=9)
    (dmount.source / "f").write_bytes(data)
    (dmount.mountpoint / ".zcachefs" / "compressor").write_text("lzo\n")
    read_all(dmount.mountpoint / "f")  # stored with lzo
    (dmount.mountpoint / ".zcachefs" / "compressor").write_text("lz4\n")
    before = stats(dmount.mountpoint)
    assert read_all(dmount.mountpoint / "f") == data
    after = stats(dmount.mountpoint)
    assert after["hits"] > before["hits"] and after["backing_reads"] == before["backing_reads"]


def test_deleted_file_with_reused_inode_never_serves_old_pages(dmount: Mount) -> None:
    old = compressible(50, seed=11)
    new = compressible(50, seed=12)
    src = dmount.source
    for i in range(20):
        (src / f"a{i}").write_bytes(old)
    for i in range(20):
        read_all(dmount.mountpoint / f"a{i}")
    inos = {os.stat(src / f"a{i}").st_ino for i in range(20)}
    for i in range(20):
        os.unlink(src / f"a{i}")  # outside the mount: the daemon is not told
    reused = 0
    for i in range(40):
        (src / f"b{i}").write_bytes(new)
        reused += os.stat(src / f"b{i}").st_ino in inos
        assert read_all(dmount.mountpoint / f"b{i}") == new
    assert reused > 0  # ext4 hands the freed numbers out again


def test_o_direct_bypasses_the_cache(dmount: Mount) -> None:
    import mmap

    (dmount.source / "f").write_bytes(compressible(64))
    before = stats(dmount.mountpoint)
    fd = os.open(dmount.mountpoint / "f", os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 65536)
    os.preadv(fd, [buf], 0)
    os.close(fd)
    after = stats(dmount.mountpoint)
    assert after["cache_misses"] == before["cache_misses"]
    assert after["backing_reads"] == before["backing_reads"]


def test_per_file_policy_bypasses_both_tiers(dmount: Mount) -> None:
    mnt = dmount.mountpoint
    (dmount.source / "media").mkdir()
    (dmount.source / "media" / "movie").write_bytes(compressible(40))
    (dmount.source / "doc").write_bytes(compressible(40, seed=3))
    os.setxattr(mnt / "media", "user.zcachefs.cache", b"off")
    os.setxattr(mnt / "doc", "user.zcachefs.cache", b"off")
    assert os.getxattr(dmount.source / "doc", "user.zcachefs.cache") == b"off"  # real xattr
    before = stats(mnt)
    for _ in range(2):
        read_all(mnt / "media" / "movie")
        read_all(mnt / "doc")
    after = stats(mnt)
    assert after["cache_misses"] == before["cache_misses"]  # never looked up in the tiers
    assert after["backing_reads"] == before["backing_reads"]
    os.setxattr(mnt / "doc", "user.zcachefs.cache", b"on")
    read_all(mnt / "doc")
    assert stats(mnt)["backing_reads"] > after["backing_reads"]  # cached again
    os.removexattr(mnt / "doc", "user.zcachefs.cache")
    with pytest.raises(OSError) as exc:
        os.setxattr(mnt / "doc", "user.zcachefs.cache", b"maybe")
    assert exc.value.errno == 22  # EINVAL


@needs_root
def test_file_states_do_not_outlive_forgotten_inodes(mount_factory: object) -> None:
    """A walk over many files must not leave a cache state per file in the daemon."""
    m = mount_factory(options="direct_io,memlimit=1M,cache_size=64K,pressure=off")  # type: ignore[operator]
    for i in range(300):
        (m.source / f"f{i}").write_bytes(b"x" * 10)
    for i in range(300):
        assert (m.mountpoint / f"f{i}").read_bytes() == b"x" * 10
    (m.mountpoint / ".zcachefs" / "drop_caches").write_text("1\n")
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")  # the kernel forgets the inodes
    deadline = time.monotonic() + 10
    while stats(m.mountpoint)["cache_files"] > 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(m.mountpoint)["cache_files"] <= 5

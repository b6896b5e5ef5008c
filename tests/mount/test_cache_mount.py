"""The cache through a real mount: hits proven by the daemon's counters and by the
number of backing reads (never by timing), coherence after writes, truncates and
outside changes, and the pool staying within memlimit."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.support.mounting import Mount, control_stats, settle

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
    return mount_factory(options="page_size=4K,direct_io,memlimit=16M,cache_size=256K")  # type: ignore[operator,no-any-return]


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


def test_pool_hits_keep_their_copy_and_cost_no_compression(dmount: Mount) -> None:
    data = compressible(400)
    (dmount.source / "f").write_bytes(data)
    read_all(dmount.mountpoint / "f")
    s1 = settle(dmount.mountpoint)
    with open(dmount.mountpoint / "f", "rb") as f:
        assert f.read(PAGE) == data[:PAGE]  # an early page: in the pool, not tier 1
        s2 = stats(dmount.mountpoint)
        f.seek(0)
        assert f.read(PAGE) == data[:PAGE]  # direct_io: the hit went to tier 1 too
    s3 = stats(dmount.mountpoint)
    assert s2["hits"] == s1["hits"] + 1
    assert s3["hits"] == s2["hits"] and s3["cache_hits"] == s2["cache_hits"] + 1
    # The pool kept its copy: a whole re-read is all hits, and nothing is compressed
    # again (no new puts) however often the pages go round.
    for _ in range(2):
        assert read_all(dmount.mountpoint / "f") == data
    s4 = settle(dmount.mountpoint)
    assert s4["backing_reads"] == s1["backing_reads"]
    assert s4["stored_pages"] == s4["puts"] == 400  # each page compressed exactly once


def test_a_partial_hit_reads_only_the_missing_pages(dmount: Mount) -> None:
    data = bytearray(compressible(64))
    (dmount.source / "f").write_bytes(data)
    mnt = dmount.mountpoint / "f"
    read_all(mnt)
    import mmap

    buf = mmap.mmap(-1, PAGE)  # O_DIRECT wants an aligned buffer
    buf[:] = b"c" * PAGE
    fd = os.open(mnt, os.O_RDWR | os.O_DIRECT)  # uncached: its pages leave the cache
    try:
        assert os.pwrite(fd, buf, 10 * PAGE) == PAGE
    finally:
        os.close(fd)
    data[10 * PAGE:11 * PAGE] = b"c" * PAGE
    before = stats(dmount.mountpoint)
    with open(mnt, "rb") as f:
        f.seek(8 * PAGE)
        assert f.read(32 * PAGE) == bytes(data[8 * PAGE:40 * PAGE])
    after = stats(dmount.mountpoint)
    assert after["backing_read_bytes"] - before["backing_read_bytes"] == PAGE
    assert after["backing_reads"] - before["backing_reads"] == 1
    assert after["misses"] - before["misses"] == 1


def test_whole_pages_written_through_the_mount_are_cached(dmount: Mount) -> None:
    mnt = dmount.mountpoint / "w"
    data = compressible(200, seed=4) + b"tail"
    with open(mnt, "wb") as f:
        for off in range(0, len(data), 64 * 1024):
            f.write(data[off:off + 64 * 1024])
    s1 = stats(dmount.mountpoint)
    assert s1["write_fills"] == 201  # every page, the short last one included
    assert read_all(mnt) == data
    s2 = stats(dmount.mountpoint)
    assert s2["backing_reads"] == s1["backing_reads"]  # served from the cache
    # The mount's own writes do not make the next open drop the file.
    assert read_all(mnt) == data
    assert stats(dmount.mountpoint)["backing_reads"] == s1["backing_reads"]
    # Partial pages written are merged into their cached copies: still no backing read.
    model = bytearray(data)
    rnd = random.Random(3)
    with open(mnt, "r+b") as f:
        for _ in range(50):
            off, chunk = rnd.randrange(len(model)), rnd.randbytes(rnd.randrange(1, 3 * PAGE))
            f.seek(off)
            f.write(chunk)
            model[off:off + len(chunk)] = chunk
    assert read_all(mnt) == bytes(model)
    assert stats(dmount.mountpoint)["backing_reads"] == s1["backing_reads"]
    assert (dmount.source / "w").read_bytes() == bytes(model)


def test_the_pool_is_compacted_after_rewrites(dmount: Mount) -> None:
    """Rewrites leave holes in the pool's slabs; the background task moves pages out of
    the emptiest slabs and gives them back, and every page still reads byte-exact."""
    mnt = dmount.mountpoint / "c"
    data = bytearray(compressible(2000, seed=5))
    mnt.write_bytes(data)
    read_all(mnt)  # every page through tier 1 into the pool
    rnd = random.Random(6)
    with open(mnt, "r+b") as f:  # 3 pages in 4 rewritten with 1 KiB of noise each
        for i in range(2000):
            if i % 4:
                off = i * PAGE + rnd.randrange(PAGE - 1024)
                f.seek(off)
                chunk = rnd.randbytes(1024)
                f.write(chunk)
                data[off:off + 1024] = chunk
    read_all(mnt)
    deadline = time.monotonic() + 20
    while stats(dmount.mountpoint)["compacted_pages"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    s = settle(dmount.mountpoint)
    assert s["compacted_pages"] > 0
    assert read_all(mnt) == data == (dmount.source / "c").read_bytes()
    assert stats(dmount.mountpoint)["backing_reads"] == s["backing_reads"]  # all held


def test_zero_and_poor_pages(dmount: Mount) -> None:
    (dmount.source / "z").write_bytes(bytes(200 * PAGE) + b"\xab" * (50 * PAGE)
                                      + os.urandom(100 * PAGE))
    read_all(dmount.mountpoint / "z")
    (dmount.mountpoint / ".zcachefs" / "cache_size").write_text("4K\n")  # all to the pool
    s = settle(dmount.mountpoint)
    assert s["zero_pages"] > 100
    assert s["same_filled_pages"] > 10
    assert s["reject_compress_poor"] >= 99  # tried once each ...
    assert s["raw_pages"] >= 99  # ... and kept as they are: served byte-exact
    assert s["orig_data_size"] == s["stored_pages"] * PAGE  # zero pages excluded
    assert read_all(dmount.mountpoint / "z") == (dmount.source / "z").read_bytes()
    assert stats(dmount.mountpoint)["backing_reads"] == s["backing_reads"]


def test_raw_pages_evicted_and_read_again_are_not_compressed_again(
        mount_factory: object) -> None:
    m = mount_factory(options="page_size=4K,direct_io,memlimit=512K,cache_size=64K")  # type: ignore[operator]
    (m.source / "r").write_bytes(os.urandom(400 * PAGE))  # 1.6 MiB: the pool holds 1/4
    for _ in range(3):
        read_all(m.mountpoint / "r")
        s = settle(m.mountpoint)
    assert s["reject_raw_full"] > 0  # raw pages take free room only: most are refused
    assert s["reject_compress_poor"] <= 400  # each page tried at most once
    assert s["raw_skips"] > 0  # the others are known: not compressed again


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
    m = mount_factory(options="page_size=4K,direct_io,memlimit=2M,cache_size=64K")  # type: ignore[operator]
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
    m = mount_factory(options="page_size=4K,direct_io,memlimit=1M,cache_size=64K,pressure=off")  # type: ignore[operator]
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


def resident_fraction(path: Path) -> float:
    """Share of a file's pages in the page cache (mincore of a private mapping)."""
    import mmap

    from zcachefs.slabs import resident_pages

    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            vec = resident_pages(m)
        finally:
            m.close()
    return sum(b & 1 for b in vec) / len(vec)


def uncached_file(path: Path, nbytes: int) -> None:
    path.write_bytes(compressible(nbytes // PAGE, seed=21))
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert resident_fraction(path) < 0.01


@pytest.mark.parametrize("fallback", [False, True], ids=["dontcache", "fadvise"])
def test_a_cold_read_leaves_the_backing_file_uncached(mount_factory: object,
                                                      fallback: bool) -> None:
    """The cache keeps its own copy: the backing file's page cache must not hold a
    second one (RWF_DONTCACHE, or fadvise(DONTNEED) of 2 MiB-aligned ranges)."""
    env = {"ZCACHEFS_DEBUG_NO_DONTCACHE": "1"} if fallback else {}
    m = mount_factory(options="page_size=4K,memlimit=64M,cache_size=1M", env=env)  # type: ignore[operator]
    uncached_file(m.source / "big", 32 << 20)
    before = stats(m.mountpoint)
    with open(m.mountpoint / "big", "rb") as f:
        while f.read(128 * 1024):
            pass
    after = stats(m.mountpoint)
    assert after["backing_read_bytes"] - before["backing_read_bytes"] >= 32 << 20
    resident = resident_fraction(m.source / "big")
    how = "fadvise" if fallback else "dontcache"
    print(f"[measured] backing file resident after a cold read ({how}): {resident:.2%}")
    assert resident < 0.05
    fallbacks = after["backing_fallbacks"] - before["backing_fallbacks"]
    assert (fallbacks > 0) == fallback


@pytest.mark.parametrize("timeout", [0, 30])
def test_a_failed_lookup_is_cached_for_negative_timeout(mount_factory: object,
                                                        timeout: int) -> None:
    """SQLite stats <db>-journal and <db>-wal before every read transaction: the kernel
    must be able to remember that they do not exist. A name created through the mount
    is seen at once; one created outside, after negative_timeout (as with entry_timeout
    for names that exist)."""
    m = mount_factory(options=f"negative_timeout={timeout}")  # type: ignore[operator]
    for name in ("inside", "outside"):
        assert not (m.mountpoint / name).exists()
    (m.mountpoint / "inside").write_bytes(b"1")  # through the mount: the kernel knows
    assert (m.mountpoint / "inside").read_bytes() == b"1"
    (m.source / "outside").write_bytes(b"2")
    # With a timeout the kernel answers from its negative entry (the daemon is not
    # asked); without one it asks and finds the new file.
    assert (m.mountpoint / "outside").exists() == (timeout == 0)


def patched_pyfuse3() -> bool:
    """Our pyfuse3 build (scripts/build-pyfuse3) honours auto_inval_data=off."""
    import pyfuse3

    return bool(getattr(pyfuse3, "AUTO_INVAL_DATA_OPTIONAL", False))


@pytest.mark.parametrize("auto_inval", ["off", "on"])
def test_own_writes_keep_the_kernels_page_cache(mount_factory: object,
                                                auto_inval: str) -> None:
    """auto_inval_data=off (the default): the kernel's cached pages of a file survive
    the mount's own writes and hold what was written. on (libfuse's default): the first
    read after a write sees a new mtime in its GETATTR and drops them all."""
    if auto_inval == "off" and not patched_pyfuse3():
        pytest.fail("pyfuse3 is not zcachefs's build: run `make venv`")
    m = mount_factory(options=f"page_size=4K,auto_inval_data={auto_inval}")  # type: ignore[operator]
    data = bytearray(compressible(256))  # 1 MiB
    (m.source / "f").write_bytes(data)
    path = m.mountpoint / "f"
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pread(fd, len(data), 0) == data
        assert resident_fraction(path) > 0.9
        time.sleep(0.05)  # past the timestamps' granularity: the write changes mtime
        os.pwrite(fd, b"x" * PAGE, 10 * PAGE)
        data[10 * PAGE:11 * PAGE] = b"x" * PAGE
        assert os.pread(fd, PAGE, 200 * PAGE) == data[200 * PAGE:201 * PAGE]
        kept = resident_fraction(path)
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert (m.source / "f").read_bytes() == data
    if auto_inval == "off":
        assert kept > 0.9
    else:
        assert kept < 0.5  # what is left: the read at page 200 and its readahead


def test_an_outside_change_is_seen_at_the_next_open_with_the_kernels_cache(
        mount_factory: object) -> None:
    """Without auto_inval_data the kernel is told at open: a file changed outside the
    mount (same size, so no size change gives it away) is read anew when reopened."""
    m = mount_factory(options="page_size=4K")  # type: ignore[operator]
    old = compressible(64)
    (m.source / "f").write_bytes(old)
    assert (m.mountpoint / "f").read_bytes() == old
    assert resident_fraction(m.mountpoint / "f") > 0.9
    time.sleep(0.05)
    new = compressible(64, seed=7)
    fd = os.open(m.source / "f", os.O_WRONLY)  # outside: the daemon is not told
    try:
        os.pwrite(fd, new, 0)
    finally:
        os.close(fd)
    assert (m.mountpoint / "f").read_bytes() == new

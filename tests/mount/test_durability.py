"""Crashes and durability: lose nothing, never serve a stale byte.

- kill -9 of the daemon in the middle of a write workload: every write that fsync
  returned for is in the backing file; after `fusermount3 -uz` and a new mount, fio
  verifies the data written before the crash.
- fio --verify=crc32c (sequential and random, several jobs, truncates and reopens in
  between) on a mount with a tiny memlimit and cache_size, while codecs, memlimit and
  cache_size change under it.
- Changes made to backing files outside the mount are seen at the next open
  (hypothesis drives random changes and reads, both with and without direct_io).

Every mount is unmounted and every helper process reaped in teardown.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.control import ctl, set_ctl
from tests.support.mounting import Mount, force_unmount, is_fuse_mounted, wait_until

MountFactory = Callable[..., Mount]
SOAK = os.environ.get("ZCACHEFS_SOAK") == "1"

needs_fio = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")


def fio(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # No verify state files: fio would leave them in the current directory.
    return subprocess.run(["fio", "--output-format=json", "--verify_state_save=0", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def fio_errors(res: subprocess.CompletedProcess[str]) -> list[str]:
    """Jobs that reported an error (fio's exit status alone misses some)."""
    start = res.stdout.find("{")
    errors = [f"fio exit {res.returncode}: {res.stderr[-2000:]} {res.stdout[:start][-2000:]}"
              ] if res.returncode != 0 else []
    with contextlib.suppress(ValueError):
        report = json.loads(res.stdout[start:])
        errors += [f"{j['jobname']}: error {j['error']}" for j in report["jobs"]
                   if j["error"]]
    return errors


# -- kill -9 during writes ----------------------------------------------------------------

# A writer: non-overlapping records, each written, then fsync()ed (or fdatasync()ed),
# and only then appended to an acknowledgement log on the local disk (itself fsynced).
# Stops at the first error (the dead mount).
WRITER = r'''
import os, random, sys
root, log, wid = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(wid)
fds = [os.open(os.path.join(root, "w%d.%d" % (wid, i)), os.O_RDWR | os.O_CREAT, 0o644)
       for i in range(3)]
ends = [0, 0, 0]
with open(log, "a") as ack:
    seq = 0
    while True:
        i = rnd.randrange(3)
        size = rnd.choice((1, 100, 4096, 5000, 65536, 200000))
        data = random.Random(wid * 1000003 + seq).randbytes(size)
        try:
            if rnd.random() < 0.3:  # a hole first: sparse files must survive too
                ends[i] += rnd.randrange(1, 9000)
            os.pwrite(fds[i], data, ends[i])
            (os.fsync if seq % 2 else os.fdatasync)(fds[i])
        except OSError as exc:
            print("stopped by", exc.errno, flush=True)
            break
        ack.write("%d %d %d %d %d\n" % (wid, i, ends[i], size, seq))
        ack.flush()
        os.fsync(ack.fileno())
        ends[i] += size
        seq += 1
'''


def check_acknowledged(root: Path, log: Path) -> int:
    """Every acknowledged record is in the files under `root`; returns how many."""
    n = 0
    for line in log.read_text().splitlines():
        wid, i, off, size, seq = map(int, line.split())
        want = random.Random(wid * 1000003 + seq).randbytes(size)
        with open(root / f"w{wid}.{i}", "rb") as f:
            f.seek(off)
            got = f.read(size)
        assert got == want, f"acknowledged write lost or damaged: {line}"
        n += 1
    return n


PRE_JOB = ["--name=pre", "--rw=write", "--bs=64k", "--size=8M", "--nrfiles=2",
           "--numjobs=2", "--verify=crc32c", "--fallocate=none",
           "--buffer_compress_percentage=50", "--refill_buffers=1"]


@needs_fio
@pytest.mark.parametrize("opts", ["memlimit=4M,cache_size=256K",
                                  "direct_io,memlimit=4M,cache_size=256K"])
def test_kill9_during_writes_loses_no_fsynced_write(opts: str, tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    logs = [tmp_path / f"ack{w}.log" for w in range(3)]
    writers: list[subprocess.Popen[str]] = []
    fio_bg: subprocess.Popen[str] | None = None
    m = Mount(src, mnt, opts, log=tmp_path / "daemon.log").start()
    try:
        # Before the crash: fio lays down verifiable data and fsyncs it.
        pre = fio(f"--directory={mnt}", *PRE_JOB, "--do_verify=0", "--end_fsync=1")
        assert not fio_errors(pre)
        # The crash: writers and a random-write fio are busy when the daemon dies.
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(mnt), str(log),
                                     str(w)], stdout=subprocess.PIPE, text=True)
                   for w, log in enumerate(logs)]
        fio_bg = subprocess.Popen(
            ["fio", f"--directory={mnt}", "--name=busy", "--rw=randrw", "--bs=4k",
             "--size=4M", "--fsync=4", "--time_based", "--runtime=60", "--fallocate=none"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        assert wait_until(lambda: all(log.exists() and log.stat().st_size > 4000
                                      for log in logs), 60)
        os.kill(m.pid, signal.SIGKILL)
        assert m.proc is not None
        m.proc.wait(timeout=10)
        for w in writers:
            out, _ = w.communicate(timeout=60)  # the dead connection fails their next call
            assert out.startswith("stopped by"), out
        assert fio_bg.wait(timeout=60) != 0  # it died with the mount, it did not finish
        assert is_fuse_mounted(mnt)
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=True)
        assert not is_fuse_mounted(mnt)
    finally:
        for p in [*writers, *([fio_bg] if fio_bg else [])]:
            if p.poll() is None:
                force_unmount(mnt)
                p.kill()
            p.wait()
        m.stop()
    # The backing files hold every acknowledged write ...
    acked = check_acknowledged(src, tmp_path / "ack0.log") + \
        check_acknowledged(src, tmp_path / "ack1.log") + \
        check_acknowledged(src, tmp_path / "ack2.log")
    assert acked > 30
    print(f"[measured] acknowledged writes checked after kill -9 ({opts}): {acked}")
    # ... and a new mount serves them, and fio's data verifies through it.
    with Mount(src, mnt, opts, log=tmp_path / "daemon2.log"):
        for log in logs:
            check_acknowledged(mnt, log)
        post = fio(f"--directory={mnt}", *PRE_JOB, "--verify_only=1")
        assert not fio_errors(post)
        post2 = fio(f"--directory={mnt}", *PRE_JOB, "--verify_only=1")  # from the cache
        assert not fio_errors(post2)
        assert ctl(mnt, "hits") + ctl(mnt, "cache_hits") > 0 or "direct_io" not in opts


# -- fio verification under constant eviction ---------------------------------------------

JOBFILE = """
[global]
directory={mnt}
verify=crc32c
verify_fatal=1
fallocate=none
buffer_compress_percentage=60
buffer_compress_chunk=4096
refill_buffers=1
randseed={seed}
[seq]
rw=write
bs={bs}
size=512k
# (bs divides size: with a partial last block fio's verify_only pass reads past the end,
# on a plain directory too)
numjobs=3
[rand]
rw=randwrite
bs=4k
size=384k
numjobs=2
[randbig]
rw=randwrite
bs=12k
size=240k
numjobs=2
[hot]
rw=randwrite
bs=4k
size=64k
"""


class Knobs(threading.Thread):
    """Turns codecs, memlimit, cache_size and drop_caches while fio runs."""

    def __init__(self, mnt: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.mnt = mnt
        self.rnd = random.Random(seed)
        self.halt = threading.Event()
        self.changes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        choices = [("compressor", ["lz4", "lzo", "none"])] * 4 + \
            [("memlimit", ["300K", "1M", "2M", "600K", "1M"])] * 3 + \
            [("cache_size", ["4K", "16K", "64K", "128K"])] * 2 + \
            [("threshold", ["1K", "2K", "3K", "4K"]), ("memlimit", ["0"]),
             ("drop_caches", ["1"])]
        try:
            while not self.halt.wait(0.03):
                name, values = self.rnd.choice(choices)
                set_ctl(self.mnt, name, self.rnd.choice(values))
                self.changes += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


def _compare_with_backing(m: Mount) -> int:
    """Every file read through the mount equals the backing file; returns bytes read."""
    n = 0
    for path in sorted(m.source.iterdir()):
        if path.is_file():
            through = (m.mountpoint / path.name).read_bytes()
            assert through == path.read_bytes(), path.name
            n += len(through)
    return n


def _eviction_rounds(m: Mount, tmp_path: Path, rounds: int) -> dict[str, int]:
    rnd = random.Random(rounds)
    knobs = Knobs(m.mountpoint, rounds)
    knobs.start()
    try:
        for r in range(rounds):
            job = tmp_path / f"round{r}.fio"
            job.write_text(JOBFILE.format(mnt=m.mountpoint, seed=1000 + r,
                                          bs=rnd.choice(["4k", "8k", "16k", "64k"])))
            # Write with verification, then verify again from new opens; the small hot
            # job fits in the pool, so its later passes are served by the cache.
            hot = ["--verify_only=1", "--section=hot"]
            for extra in ([], ["--verify_only=1"], hot, hot, hot):
                res = fio(str(job), *extra)
                assert not fio_errors(res), (r, extra, fio_errors(res))
            # Truncates through the mount (shorter, longer, to zero), then reopen and
            # compare every byte with the backing file.
            for path in sorted(m.mountpoint.glob("*.*.*")):
                size = path.stat().st_size
                os.truncate(path, rnd.choice([0, size // 3, max(size - 1, 0), size + 5000]))
            _compare_with_backing(m)
    finally:
        knobs.stop()
    if knobs.error is not None:
        raise knobs.error
    assert knobs.changes > 10
    # Last, with the knobs still: the hot data must verify when the cache serves it.
    served = ctl(m.mountpoint, "hits") + ctl(m.mountpoint, "cache_hits")
    for name, value in (("memlimit", "1M"), ("cache_size", "16K"), ("threshold", "2K"),
                        ("compressor", "lz4")):
        set_ctl(m.mountpoint, name, value)
    for extra in ([], ["--verify_only=1"], ["--verify_only=1"]):  # (it was truncated)
        res = fio(str(job), "--section=hot", *extra)
        assert not fio_errors(res), fio_errors(res)
    out = {n: ctl(m.mountpoint, n) for n in ("puts", "hits", "cache_hits", "evicted_pages",
                                             "pool_limit_hit")}
    out["knob_changes"] = knobs.changes
    out["served_by_cache_at_the_end"] = out["hits"] + out["cache_hits"] - served
    return out


@needs_fio
@pytest.mark.parametrize("opts", ["direct_io", "keep"])
def test_fio_verify_with_constant_eviction_and_knob_changes(
        opts: str, mount_factory: MountFactory, tmp_path: Path) -> None:
    extra = "direct_io," if opts == "direct_io" else ""
    m = mount_factory(options=f"{extra}page_size=4K,memlimit=1M,cache_size=16K")
    s = _eviction_rounds(m, tmp_path, 3)
    print(f"[measured] eviction run ({opts}): {s}")
    assert s["puts"] > 0 and s["evicted_pages"] > 0  # constant eviction
    if opts == "direct_io":  # (with the kernel's page cache, the kernel may serve them)
        assert s["served_by_cache_at_the_end"] > 0  # verified data came from our cache
    assert m.proc is not None and m.proc.poll() is None


@needs_fio
@pytest.mark.slow
@pytest.mark.skipif(not SOAK, reason="soak test: run with `make soak` (ZCACHEFS_SOAK=1)")
def test_soak_fio_verify_with_constant_eviction(mount_factory: MountFactory,
                                                tmp_path: Path) -> None:
    m = mount_factory(options="page_size=4K,direct_io,memlimit=1M,cache_size=16K")
    s = _eviction_rounds(m, tmp_path, 40)
    print(f"[measured] eviction soak: {s}")
    assert s["evicted_pages"] > 0 and s["served_by_cache_at_the_end"] > 0


# -- outside changes ---------------------------------------------------------------------

SIZES = st.integers(min_value=0, max_value=5 * 4096 + 100)


class Outside:
    """Changes made to a backing file by someone else (not through the mount)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pwrite(self, off: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def same_size_keep_mtime(self, seed: int) -> None:
        st_ = self.path.stat()
        size = st_.st_size
        self.path.write_bytes(random.Random(seed).randbytes(size))
        os.utime(self.path, ns=(st_.st_atime_ns, st_.st_mtime_ns))

    def truncate(self, size: int) -> None:
        os.truncate(self.path, size)

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def mmap_write(self, off: int, data: bytes) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "r+b") as f, mmap.mmap(f.fileno(), size) as mm:
            off %= size
            chunk = data[: size - off]
            mm[off:off + len(chunk)] = chunk
            mm.flush()

    def replace(self, data: bytes) -> None:
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.write_bytes(data)
        os.rename(tmp, self.path)


change = st.one_of(
    st.tuples(st.just("pwrite"), SIZES, st.binary(min_size=1, max_size=9000)),
    st.tuples(st.just("same_size_keep_mtime"), st.integers(0, 1 << 30)),
    st.tuples(st.just("truncate"), SIZES),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=6000)),
    st.tuples(st.just("mmap_write"), SIZES, st.binary(min_size=1, max_size=5000)),
)
reader = st.tuples(st.just("read"), st.integers(0, 6 * 4096), st.integers(1, 3 * 4096))
steps = st.lists(st.one_of(change, reader, reader), min_size=1, max_size=25)


def _apply(outside: Outside, step: tuple[object, ...]) -> None:
    name, *args = step
    getattr(outside, str(name))(*args)


MODES = {
    "direct_io": "page_size=4K,direct_io,memlimit=64K,cache_size=8K",
    "kernel_cache_zero_timeouts": "page_size=4K,memlimit=64K,cache_size=8K,attr_timeout=0,"
                                  "entry_timeout=0,negative_timeout=0",
    "kernel_cache": "page_size=4K,memlimit=64K,cache_size=8K",
}


@pytest.fixture(scope="module")
def oob_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Mount]]:
    """One mount per kernel-cache mode, shared by the hypothesis examples."""
    base = tmp_path_factory.mktemp("oob")
    mounts: dict[str, Mount] = {}
    try:
        for mode, opts in MODES.items():
            (base / f"src_{mode}").mkdir()
            (base / f"mnt_{mode}").mkdir()
            mounts[mode] = Mount(base / f"src_{mode}", base / f"mnt_{mode}", opts,
                                 log=base / f"{mode}.log").start()
        yield mounts
    finally:
        for m in mounts.values():
            m.stop()


@pytest.mark.parametrize("mode", [
    "direct_io", "kernel_cache_zero_timeouts",
    "kernel_cache"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(initial=st.binary(min_size=0, max_size=5 * 4096), script=steps)
def test_outside_changes_are_seen_at_the_next_open(
        mode: str, oob_mounts: dict[str, Mount], initial: bytes,
        script: list[tuple[object, ...]]) -> None:
    m = oob_mounts[mode]
    src = m.source / "f"
    src.write_bytes(initial)
    outside = Outside(src)
    through = m.mountpoint / "f"
    assert through.read_bytes() == initial  # cached now (tiers and kernel)
    for step in script:
        if step[0] == "read":
            _, off, size = step
            with open(through, "rb") as f:  # a partial read caches part of the file
                f.seek(int(str(off)))
                f.read(int(str(size)))
            continue
        _apply(outside, step)
        # The next open sees exactly what the backing file holds.
        assert through.read_bytes() == src.read_bytes(), step


@pytest.mark.parametrize("opts", [
    "direct_io,entry_timeout=0,attr_timeout=0", "entry_timeout=0,attr_timeout=0",
    "direct_io", "default"])
def test_file_replaced_outside_is_seen_at_the_next_open(
        opts: str, mount_factory: MountFactory) -> None:
    """rename() over the file in SOURCE: a new inode. The next open must find it, not
    the old one, even while a reader still holds the old one open (as editors and
    `rsync` replace files under long-running readers)."""
    m = mount_factory(options=f"{opts},memlimit=1M,cache_size=64K".replace("default,", ""))
    src, through = m.source / "f", m.mountpoint / "f"
    rnd = random.Random(7)
    src.write_bytes(b"first version")
    for i in range(10):
        data = rnd.randbytes(rnd.choice([0, 10, 4096, 20000]))
        with open(through, "rb") as old_reader:  # keeps the old inode alive
            old = old_reader.read()
            Outside(src).replace(data)
            assert through.read_bytes() == data, (i, len(old))


@pytest.mark.parametrize("opts", ["direct_io", "default"])
def test_file_unlinked_outside_is_gone_at_the_next_open(
        opts: str, mount_factory: MountFactory) -> None:
    """The kernel still has the name (entry_timeout) and a reader keeps the inode: the
    next open by name fails with ENOENT instead of serving the deleted file."""
    m = mount_factory(options=f"{opts},memlimit=1M,cache_size=64K".replace("default,", ""))
    src, through = m.source / "f", m.mountpoint / "f"
    src.write_bytes(b"doomed")
    with open(through, "rb") as reader:
        assert reader.read() == b"doomed"
        src.unlink()
        with pytest.raises(FileNotFoundError):
            through.read_bytes()
        assert os.pread(reader.fileno(), 6, 0) == b"doomed"  # the old handle still works


def test_file_unlinked_through_the_mount_can_be_reopened_from_proc(
        mount_factory: MountFactory) -> None:
    """Deleted-but-open files reopen through /proc/PID/fd as on any filesystem (the
    ESTALE for stale names is only for names the kernel does not know are gone)."""
    m = mount_factory(options="memlimit=1M,cache_size=64K")
    through = m.mountpoint / "f"
    through.write_bytes(b"still here")
    fd = os.open(through, os.O_RDONLY)
    try:
        through.unlink()
        with open(f"/proc/self/fd/{fd}", "rb") as again:
            assert again.read() == b"still here"
    finally:
        os.close(fd)


def test_file_changed_outside_while_open_is_seen_by_a_new_open(
        mount_factory: MountFactory) -> None:
    """A long-lived reader keeps its handle; a new open after the change must not be
    served from pages cached for the old content."""
    m = mount_factory(options="memlimit=1M,cache_size=64K")
    src, through = m.source / "f", m.mountpoint / "f"
    old = b"a" * 3000 + b"b" * 9000
    new = b"c" * 3000 + b"d" * 9000
    src.write_bytes(old)
    with open(through, "rb") as keep:
        assert keep.read() == old
        Outside(src).pwrite(0, new)
        assert through.read_bytes() == new


def test_direct_io_open_bypasses_and_does_not_poison_the_cache(
        mount_factory: MountFactory) -> None:
    m = mount_factory(options="memlimit=1M,cache_size=64K")
    src, through = m.source / "f", m.mountpoint / "f"
    src.write_bytes(b"x" * 8192 + b"y" * 100)
    assert through.read_bytes() == b"x" * 8192 + b"y" * 100
    fd = os.open(through, os.O_RDWR | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4096)
        buf.write(b"z" * 4096)
        with contextlib.suppress(OSError):  # O_DIRECT may need alignment the fs refuses
            os.pwrite(fd, buf, 0)
    finally:
        os.close(fd)
    assert through.read_bytes() == src.read_bytes()


def test_errno_on_a_dead_mount_is_not_a_hang(tmp_path: Path) -> None:
    """After kill -9, clients get an error (ENOTCONN/ECONNABORTED), not a hang."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"data")
    m = Mount(src, mnt, log=tmp_path / "daemon.log").start()
    try:
        os.kill(m.pid, signal.SIGKILL)
        assert m.proc is not None
        m.proc.wait(timeout=10)
        res = subprocess.run(["cat", str(mnt / "f")], capture_output=True, timeout=30)
        assert res.returncode != 0
        assert (os.strerror(errno.ENOTCONN) in res.stderr.decode()
                or os.strerror(errno.ECONNABORTED) in res.stderr.decode())
    finally:
        m.stop()
    assert not is_fuse_mounted(mnt)

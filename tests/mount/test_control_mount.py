"""The control surface of a real mount: every knob and every counter through the control
files, the xattrs on the control directory and the `zcachefs` client; every error and
that it changes nothing; the directory staying out of SOURCE; runtime changes logged;
memlimit, drop_caches and reset_stats doing what they say; stats.prom being valid
Prometheus text; what another user may do; docs/control.md being up to date.

Evidence comes from the counters and from the backing-read counters, never from timing;
"promptly" is a poll with a generous deadline.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.client import parse_prometheus, zcachefs
from tests.support.mounting import Mount, control_stats
from tests.support.mounting import settle as settle_mount
from tests.support.probe import FINISH, PRELUDE, run_probe
from zcachefs import control, stats
from zcachefs.control import Controls
from zcachefs.settings import ACTIONS
from zcachefs.settings import CONTROLS as KNOBS

PAGE = 4096
# direct_io: every read reaches the daemon, so its tiers serve it. pressure=off: the
# counters must not move because another test elsewhere is using up memory.
OPTS = "page_size=4K,direct_io,memlimit=8M,cache_size=1M,pressure=off"
CTL = ".zcachefs"
UID, GID = 1000, 1000
ROOT = Path(__file__).resolve().parents[2]
ENOATTR = errno.ENODATA  # Linux spells ENOATTR as ENODATA
KNOB_NAMES = [k.name for k in KNOBS]
KNOB_BY_NAME = {k.name: k for k in KNOBS}
COUNTER_NAMES = list(stats.COUNTERS)
XATTR_NAMES = [n for n in Controls.names() if "." not in n]  # stats.json/.prom: files only
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root and setpriv")
needs_attr = pytest.mark.skipif(shutil.which("getfattr") is None, reason="needs attr")


# -- helpers (test_stat_cli.py uses them too) -------------------------------------------


def compressible(n_pages: int, seed: int = 1) -> bytes:
    """Log-like text: each page compresses to well under half a page."""
    out = bytearray()
    i = seed * 1_000_003
    while len(out) < n_pages * PAGE:
        out += b"%010d INFO GET /static/%d.css served from tier %d\n" % (i, i % 97, i % 3)
        i += 1
    return bytes(out[:n_pages * PAGE])


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def ctl(m: Mount, name: str = "") -> Path:
    return m.mountpoint / CTL / name if name else m.mountpoint / CTL


def stats_json(m: Mount, control_name: str = CTL) -> dict[str, float]:
    return control_stats(m.mountpoint, control_name)


def settle(m: Mount, timeout: float = 20.0) -> dict[str, float]:
    return settle_mount(m.mountpoint, timeout)


def poll(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def warm_up(m: Mount, pages: int = 1024, reads: int = 2) -> None:
    """Read a compressible file twice: the pool fills, then serves hits (and the pages
    it served come back to it marked referenced: second chance)."""
    data = compressible(pages)
    (m.source / "big").write_bytes(data)
    for _ in range(reads):
        assert read_all(m.mountpoint / "big") == data
    settle(m)


def world_mount(mount_factory: Callable[..., Mount], world_tmp: Path) -> Mount:
    """A mount (OPTS, allow_other) whose directories other users can traverse, warmed up."""
    (world_tmp / "src").mkdir()
    (world_tmp / "mnt").mkdir()
    m = mount_factory(source=world_tmp / "src", mountpoint=world_tmp / "mnt",
                      options=OPTS + ",allow_other")
    warm_up(m)
    return m


def logged(m: Mount, text: str) -> bool:
    return text in m.read_log()


def write_file(path: Path, value: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def set_by(how: str, m: Mount, name: str, value: str) -> None:
    if how == "file":
        write_file(ctl(m, name), value.encode() + b"\n")
    elif how == "xattr":
        os.setxattr(ctl(m), f"user.zcachefs.{name}", value.encode())
    else:
        r = zcachefs("set", str(m.mountpoint), f"{name}={value}")
        assert r.returncode == 0 and not r.stderr, r.stderr


def state(m: Mount) -> dict[str, str]:
    """Everything the control surface shows (knobs and counters), as text."""
    return {n: ctl(m, n).read_text() for n in Controls.names() if not n.startswith("stats")}


def metric(name: str) -> str:
    return stats.metric_name(name)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def warm(mount_factory: Callable[..., Mount]) -> Mount:
    m = mount_factory(options=OPTS)
    warm_up(m)
    return m


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One warm mount for the tests that must leave it as they found it."""
    base = tmp_path_factory.mktemp("shared")
    (base / "src").mkdir()
    (base / "mnt").mkdir()
    m = Mount(base / "src", base / "mnt", OPTS, log=base / "daemon.log")
    try:
        m.start()
        warm_up(m)
        yield m
    finally:
        m.stop()


# -- what is there ----------------------------------------------------------------------


def test_the_directory_holds_every_knob_counter_and_rendering(shared: Mount) -> None:
    names = set(os.listdir(ctl(shared)))
    assert names == set(Controls.names())
    assert set(KNOB_NAMES) <= names and set(COUNTER_NAMES) <= names
    assert {"stats", "stats.json", "stats.prom"} <= names


def test_modes_say_who_may_write(shared: Mount) -> None:
    st = os.stat(ctl(shared))
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0)
    for name in Controls.names():
        st = os.stat(ctl(shared, name))
        want = 0o644 if name in KNOB_BY_NAME and KNOB_BY_NAME[name].writable else 0o444
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == (oct(want), 0, 0), name
    assert oct(os.stat(ctl(shared, "memlimit")).st_mode & 0o777) == "0o644"
    assert oct(os.stat(ctl(shared, "page_size")).st_mode & 0o777) == "0o444"
    assert oct(os.stat(ctl(shared, "hits")).st_mode & 0o777) == "0o444"


@needs_attr
def test_getfattr_dump_lists_every_knob_and_counter(shared: Mount) -> None:
    out = subprocess.run(["getfattr", "--absolute-names", "-d", "-m", "-", str(ctl(shared))],
                         capture_output=True, text=True, check=True).stdout
    dumped = dict(re.findall(r'^(user\.zcachefs\.\w+)="(.*)"$', out, re.MULTILINE))
    assert set(dumped) == {f"user.zcachefs.{n}" for n in XATTR_NAMES}
    for name in [*KNOB_NAMES, *COUNTER_NAMES]:
        assert f"user.zcachefs.{name}" in dumped, name
        assert dumped[f"user.zcachefs.{name}"] == ctl(shared, name).read_text().strip(), name
    assert sorted(os.listxattr(ctl(shared))) == sorted(f"user.zcachefs.{n}"
                                                       for n in XATTR_NAMES)
    assert os.listxattr(ctl(shared, "memlimit")) == []  # only the directory has them


def test_every_counter_agrees_across_files_xattrs_and_the_client(shared: Mount) -> None:
    s = settle(shared)
    assert set(s) == set(COUNTER_NAMES)
    cli = zcachefs("stat", "--json", str(shared.mountpoint))
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    lines = dict(line.split() for line in ctl(shared, "stats").read_text().splitlines())
    prom = parse_prometheus(ctl(shared, "stats.prom").read_text())
    for name in COUNTER_NAMES:
        value = s[name]
        assert float(ctl(shared, name).read_text()) == value, name
        assert float(os.getxattr(ctl(shared), f"user.zcachefs.{name}")) == value, name
        assert from_cli[name] == value, name
        assert float(lines[name]) == value, name
        assert prom[metric(name)]["samples"] == [("", value)], name
    assert stats_json(shared) == s  # reading the control surface moved nothing


def test_counters_move_under_a_workload(mount_factory: Callable[..., Mount]) -> None:
    """Every counter is shown to count something real (a dead counter fails)."""
    m = mount_factory(options=OPTS)
    src, mnt = m.source, m.mountpoint
    (src / "zeros").write_bytes(bytes(64 * PAGE))
    (src / "same").write_bytes(b"\x5a" * (64 * PAGE))
    (src / "random").write_bytes(os.urandom(64 * PAGE))
    (src / "small").write_bytes(compressible(16, seed=3))
    (src / "big").write_bytes(compressible(1536, seed=4))
    for name in ("zeros", "same", "random", "small", "small"):
        read_all(mnt / name)
    read_all(mnt / "big")  # pushes the small files out of tier 1 into the pool
    read_all(mnt / "big")
    s = settle(m)
    assert s["zero_pages"] == 64 and s["same_filled_pages"] == 64
    assert s["reject_compress_poor"] >= 64
    seen = {n: v for n, v in s.items() if v}
    with open(mnt / "big", "r+b") as f:  # a write through the mount drops its pages
        f.write(b"x")
    s = settle(m)
    seen.update({n: v for n, v in s.items() if v})
    (ctl(m, "memlimit")).write_text("1M\n")  # evicts, then refuses stores
    assert poll(lambda: stats_json(m)["mem_used_total"] <= 1 << 20)
    read_all(mnt / "big")
    read_all(mnt / "random")  # evicted first; known not to compress; no free room
    (src / "fresh").write_bytes(compressible(512, seed=5))
    read_all(mnt / "fresh")  # new pages near the limit: refused until seen again
    s = settle(m)
    seen.update({n: v for n, v in s.items() if v})
    # pressure_shrinks and reclaimed_pages need real memory pressure (tests/
    # test_pressure.py makes some); reject_alloc_fail a failed mmap (tests/unit/test_pool.py
    # simulates one); backing_fallbacks a filesystem without RWF_DONTCACHE
    # (tests/mount/test_cache_mount.py forces the fallback).
    quiet = {"pressure_shrinks", "reclaimed_pages", "reject_alloc_fail", "backing_fallbacks"}
    assert set(COUNTER_NAMES) - set(seen) == quiet
    assert all(s[name] == 0 for name in quiet)
    assert 0 < s["hit_ratio"] < 1 and s["compression_ratio"] > 1
    assert s["memlimit"] == s["memlimit_effective"] == 1 << 20


# -- knobs through all three interfaces -------------------------------------------------

# (value written, value read back) for the file, the xattr and the client, in that order.
KNOB_VALUES: dict[str, list[tuple[str, str]]] = {
    "memlimit": [("6M", "6291456"), ("12M", "12582912"), ("7340032", "7340032")],
    "cache_size": [("2M", "2097152"), ("512K", "524288"), ("3M", "3145728")],
    "compressor": [("lzo", "lzo"), ("none", "none"), ("lz4", "lz4")],
    "threshold": [("1024", "1024"), ("3000", "3000"), ("2K", "2048")],
    "accept_threshold_percent": [("80", "80"), ("50%", "50"), ("95", "95")],
    "log_level": [("debug", "debug"), ("INFO", "info"), ("Debug", "debug")],
}


def test_every_knob_is_covered() -> None:
    covered = set(KNOB_VALUES) | set(ACTIONS) | {"page_size"}
    assert covered == set(KNOB_NAMES)
    assert [k.name for k in KNOBS if not k.writable] == ["page_size"]


@pytest.mark.parametrize("name", list(KNOB_VALUES))
def test_knob_set_and_read_through_files_xattrs_and_client(
        mount_factory: Callable[..., Mount], name: str) -> None:
    m = mount_factory(options=OPTS)
    old = ctl(m, name).read_text().strip()
    for how, (value, expect) in zip(("file", "xattr", "cli"), KNOB_VALUES[name], strict=True):
        set_by(how, m, name, value)
        assert ctl(m, name).read_text() == expect + "\n", how
        assert os.getxattr(ctl(m), f"user.zcachefs.{name}") == expect.encode(), how
        if name in stats.COUNTERS:  # memlimit, cache_size: also in the client's stats
            got = json.loads(zcachefs("stat", "--json", str(m.mountpoint)).stdout)
            assert got[name] == int(expect), how
        line = f"control: {name} changed from {old} to {expect}"
        assert poll(functools.partial(logged, m, line)), f"{how}: not logged: {line}"
        old = expect
    if name == "compressor":
        row = zcachefs("stat", str(m.mountpoint)).stdout.splitlines()[1].split()
        assert row[1] == "lz4"


def test_raising_log_level_is_itself_logged(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    set_by("xattr", m, "log_level", "warning")
    assert ctl(m, "log_level").read_text() == "warning\n"
    assert poll(lambda: "log_level changed from info to warning" in m.read_log(), timeout=3)


def test_page_size_is_read_only_everywhere(shared: Mount) -> None:
    before = state(shared)
    assert ctl(shared, "page_size").read_text() == "4096\n"
    assert os.getxattr(ctl(shared), "user.zcachefs.page_size") == b"4096"
    with pytest.raises(PermissionError):
        write_file(ctl(shared, "page_size"), b"8192")
    with pytest.raises(OSError) as exc:
        os.setxattr(ctl(shared), "user.zcachefs.page_size", b"8192")
    assert exc.value.errno == errno.EROFS
    r = zcachefs("set", str(shared.mountpoint), "page_size=8192")
    assert r.returncode == 1 and r.stderr.strip().endswith("page_size: read-only")
    assert state(shared) == before


@pytest.mark.parametrize("how", ["file", "xattr", "cli"])
def test_drop_caches_through_each_interface(mount_factory: Callable[..., Mount],
                                            how: str) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m)
    assert stats_json(m)["stored_pages"] > 0
    if how == "cli":
        r = zcachefs("drop", str(m.mountpoint))
        assert r.returncode == 0 and not r.stderr, r.stderr
    else:
        set_by(how, m, "drop_caches", "1")
    s = stats_json(m)
    assert s["stored_pages"] == s["cache_pages"] == 0
    assert ctl(m, "drop_caches").read_text() == "0\n"
    assert poll(lambda: "control: drop_caches done" in m.read_log())


@pytest.mark.parametrize("how", ["file", "xattr", "cli"])
def test_reset_stats_through_each_interface(mount_factory: Callable[..., Mount],
                                            how: str) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m)
    assert stats_json(m)["hits"] > 0
    set_by(how, m, "reset_stats", "1")
    assert stats_json(m)["hits"] == 0
    assert os.getxattr(ctl(m), "user.zcachefs.reset_stats") == b"0"
    assert poll(lambda: "control: reset_stats done" in m.read_log())


# -- errors: each one changes nothing ---------------------------------------------------


@needs_attr
def test_unknown_names_are_enoattr(shared: Mount) -> None:
    before = state(shared)
    d = str(ctl(shared))
    for name in ("user.zcachefs.bogus", "user.zcachefs.stats.json", "user.zcachefs.",
                 "user.other", "user.zcachefs.memlimit.x"):
        r = subprocess.run(["setfattr", "-n", name, "-v", "1", d], capture_output=True,
                           text=True)
        assert r.returncode != 0 and "No such attribute" in r.stderr, (name, r.stderr)
        r = subprocess.run(["getfattr", "-n", name, d], capture_output=True, text=True)
        assert r.returncode != 0 and "No such attribute" in r.stderr, (name, r.stderr)
        for call in (lambda n=name: os.setxattr(d, n, b"1"),
                     lambda n=name: os.getxattr(d, n)):
            with pytest.raises(OSError) as exc:
                call()
            assert exc.value.errno == ENOATTR, name
    with pytest.raises(FileNotFoundError):
        write_file(ctl(shared, "bogus"), b"1")
    r = zcachefs("set", str(shared.mountpoint), "bogus=1")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "bogus: unknown name" in r.stderr
    assert state(shared) == before


@needs_attr
@pytest.mark.parametrize("name", ["page_size", "hits", "stats", "compression_ratio"])
def test_read_only_names_are_erofs(shared: Mount, name: str) -> None:
    before = state(shared)
    r = subprocess.run(["setfattr", "-n", f"user.zcachefs.{name}", "-v", "1",
                        str(ctl(shared))], capture_output=True, text=True)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    with pytest.raises(OSError) as exc:
        os.setxattr(ctl(shared), f"user.zcachefs.{name}", b"1")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(PermissionError):  # the file is 0444; root is refused too
        write_file(ctl(shared, name), b"1")
    r = zcachefs("set", str(shared.mountpoint), f"{name}=1")
    assert r.returncode == 1 and r.stderr.strip().endswith(f"{name}: read-only"), r.stderr
    assert state(shared) == before


BAD_VALUES: list[tuple[str, bytes]] = [
    ("memlimit", b"banana"), ("memlimit", b"-1"), ("memlimit", b"100T"), ("memlimit", b""),
    ("memlimit", b"1" * 100), ("memlimit", b"\xff\xfe"), ("memlimit", b"1M\x002M"),
    ("cache_size", b"1"), ("cache_size", b"lots"),
    ("compressor", b"zstd-9"), ("compressor", b""),
    ("threshold", b"0"), ("threshold", b"5000"),
    ("accept_threshold_percent", b"0"), ("accept_threshold_percent", b"101"),
    ("accept_threshold_percent", b"half"),
    ("log_level", b"loud"),
    ("drop_caches", b"2"), ("reset_stats", b"yes"),
]


def test_bad_values_cover_every_writable_knob() -> None:
    assert {n for n, _ in BAD_VALUES} == {k.name for k in KNOBS if k.writable}


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=lambda v: repr(v)[:20])
def test_bad_values_are_einval_and_change_nothing(shared: Mount, name: str,
                                                  value: bytes) -> None:
    before = state(shared)
    with pytest.raises(OSError) as exc:
        os.setxattr(ctl(shared), f"user.zcachefs.{name}", value)
    assert exc.value.errno == errno.EINVAL
    assert state(shared) == before
    with pytest.raises(OSError) as exc:
        write_file(ctl(shared, name), value + b"\n")
    assert exc.value.errno == errno.EINVAL
    assert state(shared) == before
    if b"\0" not in value:  # a NUL cannot be passed in argv
        r = zcachefs("set", str(shared.mountpoint), f"{name}={os.fsdecode(value)}")
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "invalid value" in r.stderr
        assert state(shared) == before
    assert poll(lambda: f"control: rejected user.zcachefs.{name}:" in shared.read_log())


@needs_attr
def test_setfattr_reports_einval(shared: Mount) -> None:
    before = state(shared)
    r = subprocess.run(["setfattr", "-n", "user.zcachefs.memlimit", "-v", "banana",
                        str(ctl(shared))], capture_output=True, text=True)
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
    assert state(shared) == before


def _state_but_inodes(m: Mount) -> dict[str, str]:
    """`state` without the inodes gauge: how many inodes the kernel holds is its own
    choice (a drop_caches elsewhere on the machine makes it forget "big", and the
    rename below looks it up again)."""
    return {k: v for k, v in state(m).items() if k != "inodes"}


def test_the_control_directory_cannot_be_changed(shared: Mount) -> None:
    before = _state_but_inodes(shared)
    d, mnt = ctl(shared), shared.mountpoint
    attempts: list[Callable[[], object]] = [
        lambda: os.open(d / "new", os.O_CREAT | os.O_WRONLY, 0o644),
        lambda: os.mkdir(d / "newdir"),
        lambda: os.unlink(d / "memlimit"),
        lambda: os.rename(d / "memlimit", d / "other"),
        lambda: os.symlink("x", d / "link"),
        lambda: os.link(d / "memlimit", mnt / "hardlink"),
        lambda: os.chmod(d / "memlimit", 0o666),
        lambda: os.chown(d / "memlimit", 1000, 1000),
        lambda: os.removexattr(d, "user.zcachefs.memlimit"),
        lambda: os.rmdir(d),
        lambda: os.rename(d, mnt / "moved"),
        lambda: os.mkdir(d),
        lambda: os.rename(mnt / "big", d),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(OSError):
            attempt()
        assert _state_but_inodes(shared) == before, i
    assert sorted(os.listdir(d)) == sorted(Controls.names())
    assert os.listdir(shared.source) == ["big"]


# -- out of SOURCE ----------------------------------------------------------------------


def test_not_listed_in_the_root_and_never_reaches_source(
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    (m.source / "a").write_bytes(b"a")
    (m.source / "sub").mkdir()
    os.setxattr(m.source, "user.mine", b"1")
    src_before = sorted(os.listdir(m.source))
    assert sorted(os.listdir(m.mountpoint)) == src_before
    assert CTL not in [e.name for e in os.scandir(m.mountpoint)]
    assert os.path.isdir(ctl(m))  # reachable by name all the same
    warm_up(m, pages=64)
    set_by("file", m, "memlimit", "6M")
    set_by("xattr", m, "cache_size", "2M")
    set_by("cli", m, "threshold", "1024")
    set_by("file", m, "drop_caches", "1")
    for attempt in (lambda: os.open(ctl(m, "new"), os.O_CREAT | os.O_WRONLY),
                    lambda: os.setxattr(ctl(m), "user.other", b"1")):
        with pytest.raises(OSError):
            attempt()
    assert sorted(os.listdir(m.source)) == sorted([*src_before, "big"])
    assert not os.path.lexists(m.source / CTL)
    assert os.listxattr(m.source) == ["user.mine"]
    assert CTL not in os.listdir(m.mountpoint)
    assert (m.mountpoint / "sub").is_dir() and CTL not in os.listdir(m.mountpoint / "sub")


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_real_entry_of_that_name_in_source_is_shadowed(
        mount_factory: Callable[..., Mount], tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if kind == "dir":
        (src / CTL).mkdir()
        (src / CTL / "secret").write_bytes(b"secret")
        (src / CTL / "memlimit").write_bytes(b"mine")
    else:
        (src / CTL).write_bytes(b"a file of my own")
    (src / "other").write_bytes(b"x")
    m = mount_factory(source=src, options=OPTS)
    assert sorted(os.listdir(m.mountpoint)) == ["other"]
    assert sorted(os.listdir(ctl(m))) == sorted(Controls.names())
    assert ctl(m, "memlimit").read_text() == "8388608\n"
    set_by("file", m, "memlimit", "6M")
    set_by("xattr", m, "cache_size", "2M")
    assert not os.path.exists(ctl(m, "secret"))
    if kind == "dir":
        assert sorted(os.listdir(src / CTL)) == ["memlimit", "secret"]
        assert (src / CTL / "memlimit").read_bytes() == b"mine"
        assert os.listxattr(src / CTL) == []
    else:
        assert (src / CTL).read_bytes() == b"a file of my own"


def test_control_option_renames_the_directory(mount_factory: Callable[..., Mount],
                                              tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / CTL).write_bytes(b"just a file now")
    m = mount_factory(source=src, options=OPTS + ",control=.zc")
    assert sorted(os.listdir(m.mountpoint)) == [CTL]  # the real file shows; .zc does not
    assert (m.mountpoint / CTL).read_bytes() == b"just a file now"
    zc = m.mountpoint / ".zc"
    assert sorted(os.listdir(zc)) == sorted(Controls.names())
    os.setxattr(zc, "user.zcachefs.memlimit", b"6M")
    assert (zc / "memlimit").read_text() == "6291456\n"
    assert stats_json(m, ".zc")["memlimit"] == 6 << 20
    with pytest.raises(OSError) as exc:
        os.getxattr(m.mountpoint / CTL, "user.zcachefs.memlimit")
    assert exc.value.errno in (ENOATTR, errno.ENOTSUP)
    assert sorted(os.listdir(src)) == [CTL]


# -- what the knobs do ------------------------------------------------------------------


def test_changes_and_rejections_are_logged(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    set_by("file", m, "memlimit", "6M")
    set_by("xattr", m, "compressor", "lzo")
    set_by("cli", m, "cache_size", "2M")
    set_by("file", m, "reset_stats", "1")
    with pytest.raises(OSError):
        set_by("xattr", m, "threshold", "0")
    want = ["control: memlimit changed from 8388608 to 6291456",
            "control: compressor changed from lz4 to lzo",
            "control: cache_size changed from 1048576 to 2097152",
            "control: reset_stats done",
            "control: rejected user.zcachefs.threshold: threshold:"]
    assert poll(lambda: all(w in m.read_log() for w in want)), m.read_log()
    log = m.read_log()
    assert [log.index(w) for w in want] == sorted(log.index(w) for w in want)


def test_lowering_memlimit_shrinks_the_pool_promptly(
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m, pages=3072, reads=1)
    before = settle(m)
    assert before["mem_used_total"] > 2 << 20
    set_by("xattr", m, "memlimit", "1M")
    assert poll(lambda: stats_json(m)["mem_used_total"] <= 1 << 20), stats_json(m)
    after = settle(m)
    assert after["memlimit"] == after["memlimit_effective"] == 1 << 20
    assert after["evicted_pages"] > before["evicted_pages"]
    assert 0 < after["stored_pages"] < before["stored_pages"]
    read_all(m.mountpoint / "big")  # new stores keep within the new limit
    assert settle(m)["mem_used_total"] <= 1 << 20


def test_lowering_memlimit_shrinks_a_pool_of_referenced_pages(
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m, pages=3072, reads=2)  # every pool page has been hit once: referenced
    assert settle(m)["mem_used_total"] > 2 << 20
    set_by("xattr", m, "memlimit", "1M")
    assert poll(lambda: stats_json(m)["mem_used_total"] <= 1 << 20), stats_json(m)


def test_raising_memlimit_drops_nothing(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m)
    before = settle(m)
    assert before["stored_pages"] > 0
    set_by("file", m, "memlimit", "32M")
    time.sleep(0.5)  # room for the background task to (wrongly) do something
    after = settle(m)
    assert after["memlimit"] == 32 << 20
    for name in ("stored_pages", "orig_data_size", "compr_data_size", "evicted_pages",
                 "cache_pages", "invalidates"):
        assert after[name] == before[name], name


def test_drop_caches_empties_both_tiers(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    (m.source / "zeros").write_bytes(bytes(32 * PAGE))
    read_all(m.mountpoint / "zeros")
    warm_up(m)
    before = settle(m)
    assert before["stored_pages"] > 0 and before["zero_pages"] > 0
    assert before["cache_pages"] > 0
    set_by("file", m, "drop_caches", "1")
    s = stats_json(m)
    for name in ("stored_pages", "zero_pages", "same_filled_pages", "cache_pages",
                 "orig_data_size", "compr_data_size"):
        assert s[name] == 0, name
    # Evidence that nothing was left: the next read goes to the backing file, whole.
    read_all(m.mountpoint / "big")
    after = settle(m)
    assert after["backing_read_bytes"] - s["backing_read_bytes"] >= 1024 * PAGE
    assert after["hits"] == s["hits"]  # the pool had nothing to serve


def test_drop_caches_gives_the_pool_memory_back(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m)
    assert settle(m)["mem_used_total"] > 0
    set_by("file", m, "drop_caches", "1")
    assert poll(lambda: stats_json(m)["mem_used_total"] == 0, timeout=5), stats_json(m)


def test_drop_caches_is_not_counted_as_invalidation(
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m)
    before = settle(m)
    assert before["stored_pages"] > 0
    set_by("file", m, "drop_caches", "1")
    assert stats_json(m)["invalidates"] == before["invalidates"]


def test_reset_stats_zeroes_counters_and_keeps_gauges(
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    warm_up(m)
    before = settle(m)
    event = [n for n, (kind, _) in stats.COUNTERS.items() if kind == "counter"]
    assert {"hits", "misses", "puts", "backing_reads"} <= {n for n in event if before[n]}
    set_by("xattr", m, "reset_stats", "1")
    after = stats_json(m)
    for name in event:
        assert after[name] == 0, name
    assert after["hit_ratio"] == 0  # derived from counters that are now zero
    assert after["mem_used_max"] == after["mem_used_total"]
    gauges = [n for n, (kind, _) in stats.COUNTERS.items()
              if kind == "gauge" and n not in ("hit_ratio", "mem_used_max")]
    for name in gauges:
        assert after[name] == before[name], name
    read_all(m.mountpoint / "big")  # and they count again from zero
    assert stats_json(m)["hits"] > 0


def test_misses_count_every_page_read_from_source(
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    (m.source / "f").write_bytes(compressible(256))
    read_all(m.mountpoint / "f")  # cold: all 256 pages come from SOURCE
    s = settle(m)
    assert s["backing_read_bytes"] == 256 * PAGE
    assert s["misses"] == 256
    # Requests need not start on a page boundary: a page shared by two requests is a
    # tier-1 hit the second time. Every page still counts as one miss.
    assert s["cache_misses"] == 256 and s["hits"] == 0
    assert s["hit_ratio"] < 0.01


# -- Prometheus -------------------------------------------------------------------------


def test_stats_prom_is_valid_prometheus_text(shared: Mount) -> None:
    s = settle(shared)
    text = ctl(shared, "stats.prom").read_text()
    families = parse_prometheus(text)
    assert set(families) == {metric(n) for n in COUNTER_NAMES}
    for name, (kind, doc) in stats.COUNTERS.items():
        fam = families[metric(name)]
        assert fam["type"] == kind and fam["help"] == doc, name
        assert fam["samples"] == [("", s[name])], name
    for name, fam in families.items():
        assert name.startswith("zcachefs_")
        if fam["type"] == "counter":
            assert name.endswith("_total"), name


def test_only_counters_end_in_total(shared: Mount) -> None:
    families = parse_prometheus(ctl(shared, "stats.prom").read_text())
    for name, fam in families.items():
        assert name.endswith("_total") == (fam["type"] == "counter"), name


def test_the_prometheus_reader_rejects_bad_text() -> None:
    good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
    parse_prometheus(good)
    for bad in [good.rstrip("\n"), good + "b 1\n", good.replace("a_total 1", "a_total x"),
                good + "# TYPE a_total counter\n", "a 1\n# HELP a x\n# TYPE a gauge\n",
                good.replace("a_total 1", "a-total 1"), "# HELP a x\n# TYPE a gauge\n"]:
        with pytest.raises((AssertionError, ValueError)):
            parse_prometheus(bad)


# -- another user -----------------------------------------------------------------------

PROBE = PRELUDE + r'''
d = sys.argv[1]
def write(name, value):
    fd = os.open(os.path.join(d, name), os.O_WRONLY)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)
do("read-file", lambda: open(os.path.join(d, "hits")).read())
do("read-json", lambda: len(json.load(open(os.path.join(d, "stats.json")))))
do("read-prom", lambda: open(os.path.join(d, "stats.prom")).read().count("# TYPE"))
do("read-knob", lambda: open(os.path.join(d, "memlimit")).read())
do("getxattr", lambda: os.getxattr(d, "user.zcachefs.hits"))
do("listxattr", lambda: len(os.listxattr(d)))
do("write-knob", lambda: write("memlimit", b"4M"))
do("write-action", lambda: write("drop_caches", b"1"))
do("write-counter", lambda: write("hits", b"1"))
do("setxattr-knob", lambda: os.setxattr(d, "user.zcachefs.memlimit", b"4M"))
do("setxattr-action", lambda: os.setxattr(d, "user.zcachefs.drop_caches", b"1"))
do("setxattr-counter", lambda: os.setxattr(d, "user.zcachefs.hits", b"1"))
do("create", lambda: os.open(os.path.join(d, "x"), os.O_CREAT | os.O_WRONLY))
''' + FINISH


@needs_setpriv
def test_another_user_reads_counters_but_cannot_turn_knobs(
        mount_factory: Callable[..., Mount], world_tmp: Path) -> None:
    m = world_mount(mount_factory, world_tmp)
    before = state(m)
    out = run_probe(PROBE, str(ctl(m)), uid=UID, gid=GID)
    obs = json.loads(out.stdout)
    assert float(obs["read-file"]) == float(before["hits"]) > 0
    assert obs["read-json"] == len(COUNTER_NAMES)
    assert obs["read-prom"] == len(COUNTER_NAMES)
    assert obs["read-knob"] == "8388608\n"
    assert float(obs["getxattr"]) == float(before["hits"])
    assert obs["listxattr"] == len(XATTR_NAMES)
    denied = ("errno:EACCES", "errno:EPERM")
    for label in ("write-knob", "write-action", "write-counter", "setxattr-knob",
                  "setxattr-action", "setxattr-counter", "create"):
        assert obs[label] in denied, (label, obs[label])
    assert state(m) == before
    for name in Controls.names():  # what the modes promise, as the other user sees it
        st = os.stat(ctl(m, name))
        assert st.st_uid == 0 and not st.st_mode & 0o022, name


# -- the docs ---------------------------------------------------------------------------


def test_docs_are_generated_from_the_code(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "gen_control_doc.py"
    doc = ROOT / "docs" / "control.md"
    r = subprocess.run([sys.executable, str(script), "--check", str(doc)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + " (run scripts/gen_control_doc.py)"
    text = doc.read_text()
    for name in [*KNOB_NAMES, *COUNTER_NAMES]:
        assert f"| `{name}` |" in text, name
    # The check can fail: a stale table is caught, and regenerating repairs it.
    stale = tmp_path / "control.md"
    stale.write_text(text.replace(KNOB_BY_NAME["memlimit"].ctl_doc, "an old description"))
    r = subprocess.run([sys.executable, str(script), "--check", str(stale)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "out of date" in r.stderr
    subprocess.run([sys.executable, str(script), str(stale)], check=True,
                   capture_output=True)
    assert stale.read_text() == text


def test_control_module_is_what_the_docs_describe() -> None:
    # The docs generator reads settings.CONTROLS/stats.COUNTERS; so do the files and xattrs.
    assert Controls.names()[:len(KNOBS)] == KNOB_NAMES
    assert control.RENDERED == ("stats", "stats.json", "stats.prom")

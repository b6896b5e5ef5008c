"""Bad input: every malformed mount option, control-file write and xattr set gets a
clear error, the daemon stays up and its state does not change.

The inputs are generated (hypothesis), invalid by construction from the documented
grammar (sizes `4096`, `64K`, `1.5G`, `2GiB`, `10%`; codecs lz4/lzo/none; the ranges of
`--help`), never chosen by asking the parser: negative numbers, zero where zero is
invalid, overflow, garbage units, unknown codecs, empty values, huge strings and bytes
that are not UTF-8 or hold NUL.

- mount options: `zcachefs -o ...` exits non-zero with exactly one line on stderr and
  mounts nothing;
- control files (`MOUNTPOINT/.zcachefs/<knob>`): the write fails with EINVAL (EACCES
  when the file is read-only, EPERM for a name that does not exist);
- xattrs on `MOUNTPOINT/.zcachefs`: EINVAL for a bad value, ENOATTR for an unknown
  name, EROFS for a read-only one.

After each control or xattr case the daemon must still answer and every knob value and
counter must be what it was.
"""

from __future__ import annotations

import errno
import os
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mounting import Mount, force_unmount, is_fuse_mounted, settle
from zcachefs.control import Controls

ENOATTR = errno.ENODATA  # Linux spells ENOATTR this way
KNOBS = ("memlimit", "cache_size", "compressor", "threshold", "accept_threshold_percent",
         "page_size", "log_level")
# Every read-only name the daemon has (a counter added later is covered too); the
# dotted renderings are files only, never xattrs.
READ_ONLY = tuple(n for n in Controls.names() if not Controls.writable(n) and "." not in n)
CODECS = ("lz4", "lzo", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Every distinct input tried, per channel (reported; the issue asks for at least 100).
TRIED: dict[str, set[tuple[str, bytes]]] = {"option": set(), "file": set(), "xattr": set()}

# -- invalid values, by construction ---------------------------------------------------

GARBAGE_ALPHABET = "acdfhjlnopqrsuvwxyz@#!?^&*()[]{}<>|~/\\:;"  # no unit letter, no comma


def _text(s: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return s.map(str.encode)


negative = _text(st.builds(lambda n, u: f"-{n}{u}", st.integers(1, 10**12),
                           st.sampled_from(["", "K", "M", "G", "T", "%", "KiB", ".5"])))
garbage_unit = _text(st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6),
                               st.text(GARBAGE_ALPHABET, min_size=1, max_size=4)))
garbage_word = _text(st.text(GARBAGE_ALPHABET + "0123456789", min_size=1, max_size=12)
                     .filter(lambda s: not s.strip().isdigit() and s.strip() != ""))
underscored = _text(st.builds(lambda a, b: f"{a}_{b}", st.integers(1, 999), st.integers(0, 999)))
hexlike = _text(st.integers(1, 10**6).map(lambda n: f"0x{n:x}"))
overflow = _text(st.one_of(
    st.integers(20, 300).map(lambda k: "9" * k),  # > 2**50 bytes
    st.integers(1025, 10**9).map(lambda n: f"{n}T"),  # > 1024 TiB
    st.integers(10**6, 10**9).map(lambda n: f"{n}G"),  # > any RAM here
    st.integers(101, 10**9).map(lambda n: f"{n}%"),  # a percentage over 100
    st.sampled_from(["1.0e999", "9.9e400G", "nan%", "inf%", "-inf%", "1e309.5"]),
))
empty = _text(st.sampled_from(["", " ", "\t", "   \t  "]))
huge = st.one_of(st.integers(65, 4000).map(lambda k: b"7" * k),
                 _text(st.text(string.ascii_letters, min_size=65, max_size=4000)))
not_utf8 = st.builds(lambda a, b: a + b"\xff" + b, st.binary(max_size=20), st.binary(max_size=20))
with_nul = st.builds(lambda a, b: a + b"\x00" + b, st.sampled_from([b"1", b"4M", b"lz4", b"90"]),
                     st.binary(max_size=10))
binary = st.one_of(not_utf8, with_nul)
common = st.one_of(negative, garbage_unit, garbage_word, underscored, hexlike, empty, huge,
                   binary)


def too_small(lo: int) -> st.SearchStrategy[bytes]:
    """Positive sizes below `lo` bytes, written several ways."""
    return _text(st.one_of(st.integers(0, lo - 1).map(str),
                           st.sampled_from(["0", "0K", "0%", "0.0M", "1K", "3K", "0.003M"])))


def int_outside(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    return _text(st.one_of(st.integers(hi + 1, 10**30), st.integers(-10**9, lo - 1))
                 .map(str))


def words_except(allowed: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    return _text(st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=14)
                 .filter(lambda s: s.strip().lower() not in allowed))


BAD_KNOB_VALUES: dict[str, st.SearchStrategy[bytes]] = {
    "memlimit": st.one_of(common, overflow),
    "cache_size": st.one_of(common, overflow, too_small(4096)),
    "compressor": st.one_of(words_except(CODECS), empty, huge, binary,
                            _text(st.sampled_from(["zstd", "lz5", "gzip", "lz4hc", "lzo1x-999",
                                                   "deflate", "LZ4 lzo"]))),
    "threshold": st.one_of(common, overflow, _text(st.integers(4097, 10**9).map(str)),
                           _text(st.sampled_from(["0", "0%", "5K", "1M", "0.0"]))),
    "accept_threshold_percent": st.one_of(int_outside(1, 100), garbage_word, empty, huge, binary,
                                          _text(st.sampled_from(["50.5", "1e2", "0%", "101%"]))),
    "log_level": st.one_of(words_except(LOG_LEVELS), empty, huge, binary,
                           _text(st.sampled_from(["warn", "critical", "trace", "DEBUG2"]))),
    # The actions take 1 (run) or 0 (what the file reads: nothing to do).
    "drop_caches": st.one_of(_text(st.integers(-10**6, 10**6).filter(lambda n: n not in (0, 1))
                                   .map(str)), words_except(("0", "1")), empty, huge, binary),
    "reset_stats": st.one_of(_text(st.integers(2, 10**6).map(str)), words_except(("0", "1")),
                             empty, huge, binary),
}


# -- mount options -----------------------------------------------------------------------

def _no_nul(s: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return s.filter(lambda b: b"\x00" not in b and b"," not in b)


SECONDS_BAD = st.one_of(negative, garbage_word, empty, huge, not_utf8,
                        _text(st.sampled_from(["nan", "inf", "-inf", "86401", "1e9", "1 s",
                                               "5min", "0x10"])))
BAD_OPTIONS: dict[str, st.SearchStrategy[bytes]] = {
    "memlimit": st.one_of(common, overflow),
    "cache_size": st.one_of(common, overflow, too_small(4096)),
    "min_free": st.one_of(common, overflow),
    "page_size": st.one_of(common, overflow, _text(st.sampled_from(
        ["0", "1K", "2K", "3K", "5K", "6K", "12K", "128K", "1M", "4097", "65535", "100%"]))),
    "compressor": st.one_of(words_except(CODECS), empty, huge, not_utf8),
    "threshold": st.one_of(common, overflow, _text(st.sampled_from(["0", "0%", "5K", "1M"]))),
    "accept_threshold_percent": st.one_of(int_outside(1, 100), garbage_word, empty, huge),
    "threads": st.one_of(int_outside(1, 1024), garbage_word, empty, huge, not_utf8,
                         _text(st.sampled_from(["1.5", "16k", "sixteen"]))),
    "pressure_psi": st.one_of(int_outside(0, 100), garbage_word, empty, huge, not_utf8),
    "pressure_interval": SECONDS_BAD,
    "attr_timeout": SECONDS_BAD,
    "entry_timeout": SECONDS_BAD,
    "direct_io": st.one_of(words_except(("1", "0", "on", "off", "yes", "no", "true", "false")),
                           huge, not_utf8),
    "pressure": st.one_of(words_except(("1", "0", "on", "off", "yes", "no", "true", "false")),
                          huge, not_utf8),
    "debug": words_except(("1", "0", "on", "off", "yes", "no", "true", "false")),
    "control": st.one_of(empty, _text(st.sampled_from([".", "..", "a/b", "/x", ".zcachefs/"])),
                         st.integers(256, 2000).map(lambda k: b"c" * k)),
    "max_read": st.one_of(int_outside(1, 1 << 30), garbage_word),
    "blksize": st.one_of(int_outside(1, 1 << 30), garbage_word),
}
KNOWN_NAMES = set(BAD_OPTIONS) | {
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner",
    "group", "rw", "nodelalloc", "allow_other", "allow_root", "default_permissions", "ro",
    "auto_unmount", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
    "dirsync", "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
    "lazytime", "nolazytime", "blkdev", "fsname", "subtype", "context", "fscontext",
    "defcontext", "rootcontext", "comment"}
unknown_name = st.text(string.ascii_lowercase + "_", min_size=1, max_size=20).filter(
    lambda s: s not in KNOWN_NAMES and not s.startswith("x-"))

option_case = st.one_of(
    st.sampled_from(sorted(BAD_OPTIONS)).flatmap(
        lambda name: _no_nul(BAD_OPTIONS[name]).map(lambda v: name.encode() + b"=" + v)),
    unknown_name.map(str.encode),  # an unknown flag
    st.tuples(unknown_name, st.text(string.printable.replace(",", ""), max_size=10))
    .map(lambda t: f"{t[0]}={t[1]}".encode()),  # an unknown option with a value
    st.sampled_from([n for n in sorted(BAD_OPTIONS) if n not in ("direct_io", "debug")] +
                    ["fsname", "subtype", "max_read"]).map(str.encode),  # value missing
)


@pytest.fixture(scope="module")
def cli_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("badopts")
    src, mnt = base / "src", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    yield src, mnt
    force_unmount(mnt)  # only if a bad option was accepted (the test has failed then)
    if is_fuse_mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(option=option_case)
def test_bad_mount_option_exits_with_one_line(cli_dirs: tuple[Path, Path],
                                              option: bytes) -> None:
    src, mnt = cli_dirs
    TRIED["option"].add(("-o", option))
    # Not -f: if the option were (wrongly) accepted, the command returns once mounted.
    res = subprocess.run([sys.executable, "-m", "zcachefs", "-o", option, str(src), str(mnt)],
                         capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    mounted = is_fuse_mounted(mnt)
    if mounted:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        force_unmount(mnt)
    err = res.stderr.decode(errors="replace")
    assert not mounted, f"accepted and mounted: {option!r}"
    assert res.returncode != 0, option
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zcachefs: "), (option, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "0.001", "-1", "61", "nan", "inf"])
def test_a_pressure_interval_that_would_spin_or_sleep_forever_is_rejected(
        value: str, cli_dirs: tuple[Path, Path]) -> None:
    src, mnt = cli_dirs
    res = subprocess.run([sys.executable, "-m", "zcachefs", "-o", f"pressure_interval={value}",
                          str(src), str(mnt)], capture_output=True, text=True, timeout=60)
    mounted = is_fuse_mounted(mnt)
    if mounted:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        force_unmount(mnt)
    assert not mounted and res.returncode != 0
    assert len(res.stderr.splitlines()) == 1


# -- control files and xattrs on a live mount ------------------------------------------


def ctl_state(mnt: Path) -> dict[str, str]:
    """Every knob's value and every counter (one read each)."""
    d = mnt / ".zcachefs"
    out = {name: (d / name).read_text() for name in KNOBS}
    out["stats"] = (d / "stats").read_text()
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, dict[str, str]]]:
    """A mount with data in both tiers and non-zero counters; pressure off so nothing
    but our inputs could change its state."""
    base = tmp_path_factory.mktemp("badctl")
    src, mnt = base / "src", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"".join(b"line %06d of compressible text\n" % i
                                     for i in range(20000)))
    m = Mount(src, mnt, "page_size=4K,direct_io,memlimit=4M,cache_size=64K,pressure=off",
              log=base / "daemon.log").start()
    try:
        for _ in range(2):
            assert (mnt / "f").read_bytes() == (src / "f").read_bytes()
        settle(mnt)  # the compressor drains tier 1's overflow in the background
        before = ctl_state(mnt)
        assert "stored_pages 0\n" not in before["stats"]
        yield m, before
    finally:
        m.stop()


def _still_the_same(m: Mount, before: dict[str, str], case: object) -> None:
    assert m.proc is not None and m.proc.poll() is None, f"daemon died after {case!r}"
    assert ctl_state(m.mountpoint) == before, f"state changed by {case!r}"


knob_value = st.sampled_from(sorted(BAD_KNOB_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), BAD_KNOB_VALUES[name]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=knob_value)
def test_bad_control_file_write_is_einval(live: tuple[Mount, dict[str, str]],
                                          case: tuple[str, bytes]) -> None:
    m, before = live
    name, value = case
    if not value:
        value = b"\n"  # a zero-length write never reaches the daemon; `echo > f` sends \n
    TRIED["file"].add((name, value))
    fd = os.open(m.mountpoint / ".zcachefs" / name, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, value)
    finally:
        os.close(fd)
    assert exc.value.errno == errno.EINVAL, (case, exc.value)
    _still_the_same(m, before, case)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.one_of(st.sampled_from(READ_ONLY),
                      st.text(string.ascii_lowercase + "_.", min_size=1, max_size=40)
                      .filter(lambda s: s not in (".", "..") and s not in KNOBS
                              and s not in ("drop_caches", "reset_stats"))),
       value=st.binary(min_size=1, max_size=20))
def test_control_file_that_cannot_be_written(live: tuple[Mount, dict[str, str]], name: str,
                                             value: bytes) -> None:
    """A read-only control file cannot be opened for writing (EACCES); a name that does
    not exist cannot be created in the control directory (EPERM, or EACCES/ENOENT)."""
    m, before = live
    TRIED["file"].add((name, value))
    path = m.mountpoint / ".zcachefs" / name
    with pytest.raises(OSError) as exc:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
    exists = name in READ_ONLY or (m.mountpoint / ".zcachefs" / name).exists()
    allowed = {errno.EACCES} if exists else {errno.EPERM, errno.EACCES, errno.ENOENT}
    assert exc.value.errno in allowed, (name, exc.value)
    _still_the_same(m, before, (name, value))


XATTR_PREFIX = "user.zcachefs."
existing_names = set(Controls.names()) | {"drop_caches", "reset_stats"}
xattr_case = st.one_of(
    # a writable knob, a bad value: EINVAL
    knob_value.map(lambda c: (XATTR_PREFIX + c[0], c[1], errno.EINVAL)),
    # a read-only name, any value: EROFS
    st.tuples(st.sampled_from(READ_ONLY), st.binary(max_size=30))
    .map(lambda c: (XATTR_PREFIX + c[0], c[1], errno.EROFS)),
    # an unknown name under the prefix, or outside it: ENOATTR
    st.tuples(st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=60)
              .filter(lambda s: s not in existing_names), st.binary(max_size=30))
    .map(lambda c: (XATTR_PREFIX + c[0], c[1], ENOATTR)),
    st.tuples(st.text(string.ascii_letters + "_", min_size=1, max_size=40)
              .filter(lambda s: not ("user." + s).startswith(XATTR_PREFIX)),
              st.binary(max_size=30))
    .map(lambda c: ("user." + c[0], c[1], ENOATTR)),
    st.sampled_from(["stats.json", "stats.prom", "memlimit.x", "Memlimit", "MEMLIMIT",
                     " memlimit", "memlimit ", ""])
    .map(lambda n: (XATTR_PREFIX + n, b"8M", ENOATTR)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=xattr_case)
def test_bad_xattr_set_gets_its_errno(live: tuple[Mount, dict[str, str]],
                                      case: tuple[str, bytes, int]) -> None:
    m, before = live
    name, value, want = case
    TRIED["xattr"].add((name, value))
    with pytest.raises(OSError) as exc:
        os.setxattr(m.mountpoint / ".zcachefs", name, value)
    assert exc.value.errno == want, (case, exc.value)
    _still_the_same(m, before, case)


@pytest.mark.parametrize("target", ["memlimit", "stats"])
def test_xattr_on_a_control_file_is_enoattr(live: tuple[Mount, dict[str, str]],
                                            target: str) -> None:
    """The knobs are xattrs of the control directory only, not of its files."""
    m, before = live
    TRIED["xattr"].add((f"{target}:user.zcachefs.memlimit", b"8M"))
    with pytest.raises(OSError) as exc:
        os.setxattr(m.mountpoint / ".zcachefs" / target, "user.zcachefs.memlimit", b"8M")
    assert exc.value.errno == ENOATTR
    _still_the_same(m, before, target)


def test_good_inputs_still_work_after_all_that(live: tuple[Mount, dict[str, str]],
                                               record_property: Callable[[str, object], None]
                                               ) -> None:
    """The daemon is not just alive but obeys valid input; and the count of bad inputs."""
    m, _ = live
    d = m.mountpoint / ".zcachefs"
    os.setxattr(d, "user.zcachefs.memlimit", b"3M")
    assert (d / "memlimit").read_text().strip() == str(3 << 20)
    fd = os.open(d / "compressor", os.O_WRONLY)
    try:
        os.write(fd, b"lzo\n")
    finally:
        os.close(fd)
    assert os.getxattr(d, "user.zcachefs.compressor") == b"lzo"
    assert (m.mountpoint / "f").read_bytes() == (m.source / "f").read_bytes()
    counts = {k: len(v) for k, v in TRIED.items()}
    record_property("bad_inputs_tried", counts)
    print(f"[measured] distinct bad inputs tried: {counts} = {sum(counts.values())}")
    if all(counts.values()):  # the whole module ran (not a -k selection)
        assert sum(counts.values()) >= 100

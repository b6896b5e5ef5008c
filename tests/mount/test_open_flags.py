"""open(2) flags and SQLite through a real mount (issue 12, part 1).

SQLite opens every database with O_NOFOLLOW; the daemon reopened the inode through
/proc/self/fd/N with the caller's flags, and O_NOFOLLOW made that reopen fail with
ELOOP ("unable to open database file"). Each flag is checked differentially: the
mount must give the result and errno of a plain directory on the same filesystem.
"""

from __future__ import annotations

import errno
import mmap
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounting import Mount

MountFactory = Callable[..., Mount]

CONTENT = b"0123456789" * 1000  # 10,000 bytes: two and a half pages

# (label, flags). Opens without O_CREAT go to the existing file "f" (or to "link", a
# symlink to it, or to "dir"); the kernel answers some itself (O_DIRECTORY, O_PATH),
# the others reach the daemon's reopen.
CASES: list[tuple[str, str, int]] = [
    ("rdonly", "f", os.O_RDONLY),
    ("nofollow", "f", os.O_RDONLY | os.O_NOFOLLOW),
    ("nofollow-rdwr-cloexec", "f", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC),
    ("sqlite-ro", "f", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC),
    ("sqlite-rw", "f", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC),
    ("nofollow-symlink", "link", os.O_RDONLY | os.O_NOFOLLOW),
    ("follow-symlink", "link", os.O_RDONLY),
    ("noatime", "f", os.O_RDONLY | os.O_NOATIME),
    ("sync", "f", os.O_WRONLY | os.O_SYNC),
    ("dsync", "f", os.O_RDWR | os.O_DSYNC),
    ("append", "f", os.O_WRONLY | os.O_APPEND),
    ("excl-without-creat", "f", os.O_RDONLY | os.O_EXCL),
    ("excl-creat-existing", "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
    ("excl-creat-new", "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW),
    ("directory-on-file", "f", os.O_RDONLY | os.O_DIRECTORY),
    ("directory-on-dir", "dir", os.O_RDONLY | os.O_DIRECTORY),
    ("directory-nofollow-on-dir", "dir", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW),
    ("path", "f", os.O_PATH),
    ("path-nofollow-symlink", "link", os.O_PATH | os.O_NOFOLLOW),
    ("direct", "f", os.O_RDONLY | os.O_DIRECT),
    ("nonblock", "f", os.O_RDWR | os.O_NONBLOCK),
    ("trunc", "f", os.O_WRONLY | os.O_TRUNC),
    ("trunc-nofollow", "f", os.O_RDWR | os.O_TRUNC | os.O_NOFOLLOW),
    ("wronly-on-dir", "dir", os.O_WRONLY),
]


def _prepare(root: Path) -> None:
    (root / "f").write_bytes(CONTENT)
    os.chmod(root / "f", 0o644)
    (root / "link").symlink_to("f")
    (root / "dir").mkdir()


def _observe(root: Path, name: str, flags: int) -> list[object]:
    """What a program sees: the open's errno, or the descriptor's type, size, the first
    page it reads and what a write through it does to the file."""
    path = root / name
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        return ["errno", errno.errorcode[exc.errno]]
    try:
        st = os.fstat(fd)
        out: list[object] = ["ok", oct(st.st_mode), st.st_size]
        if flags & os.O_PATH:
            return out
        acc = flags & os.O_ACCMODE
        if acc != os.O_WRONLY and os.path.isfile(path):
            buf = mmap.mmap(-1, 4096)  # page-aligned: what O_DIRECT asks for
            try:
                n = os.preadv(fd, [buf], 0)
                out.append(bytes(buf[:n]))
            finally:
                buf.close()
        if acc != os.O_RDONLY and os.path.isfile(path):
            os.write(fd, b"written")
            os.fsync(fd)
    finally:
        os.close(fd)
    if os.path.isfile(path):
        out.append(path.read_bytes()[-32:])
        out.append(os.stat(path).st_size)
    return out


@pytest.mark.parametrize("label,name,flags", CASES, ids=[c[0] for c in CASES])
def test_open_flags_match_plain_directory(label: str, name: str, flags: int,
                                          pair: tuple[Path, Path]) -> None:
    plain, mounted = pair
    for root in (plain, mounted):
        _prepare(root)
    expected = _observe(plain, name, flags)
    got = _observe(mounted, name, flags)
    assert got == expected, f"{label}: plain {expected}, mount {got}"


def test_the_cases_are_not_vacuous(pair: tuple[Path, Path]) -> None:
    plain, _ = pair
    _prepare(plain)
    seen = {label: _observe(plain, name, flags)[:2] for label, name, flags in CASES}
    assert seen["nofollow-symlink"] == ["errno", "ELOOP"]
    assert seen["directory-on-file"] == ["errno", "ENOTDIR"]
    assert seen["excl-creat-existing"] == ["errno", "EEXIST"]
    assert seen["wronly-on-dir"] == ["errno", "EISDIR"]
    assert seen["nofollow"][0] == "ok" and seen["sqlite-rw"][0] == "ok"


def test_o_tmpfile_is_not_supported(pair: tuple[Path, Path]) -> None:
    """Documented (README): pyfuse3 has no tmpfile handler, so the kernel answers
    EOPNOTSUPP, which is what programs that try O_TMPFILE expect to fall back from."""
    plain, mounted = pair
    os.close(os.open(plain, os.O_TMPFILE | os.O_RDWR, 0o600))  # ext4 has it
    with pytest.raises(OSError) as info:
        os.close(os.open(mounted, os.O_TMPFILE | os.O_RDWR, 0o600))
    assert info.value.errno == errno.EOPNOTSUPP


# -- SQLite ------------------------------------------------------------------------------


def _fill(con: sqlite3.Connection, rows: int, start: int = 0) -> None:
    con.executemany("insert into t(id, body) values (?, ?)",
                    ((i, f"row {i:08d} " * 40) for i in range(start, start + rows)))
    con.commit()


def _check(con: sqlite3.Connection, rows: int) -> None:
    assert con.execute("select count(*), sum(id) from t").fetchone() == (
        rows, rows * (rows - 1) // 2)
    assert con.execute("select body from t where id = ?", (rows // 2,)).fetchone()[0] \
        == f"row {rows // 2:08d} " * 40
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_through_the_mount(journal: str, mount_factory: MountFactory) -> None:
    """Create, insert, query, reopen an existing database (the ELOOP case), read-only
    URI, two connections, and a database larger than cache_size and memlimit."""
    m = mount_factory(options="cache_size=2M,memlimit=4M")
    db = m.mountpoint / "t.db"
    con = sqlite3.connect(db)
    assert con.execute(f"pragma journal_mode={journal}").fetchone()[0] == journal
    con.execute("create table t(id integer primary key, body text)")
    _fill(con, 100)
    _check(con, 100)
    con.close()

    # An existing database: SQLite opens it O_RDWR|O_NOFOLLOW|O_CLOEXEC.
    con = sqlite3.connect(db)
    _check(con, 100)
    # A second connection sees what the first commits, and the first sees the second's.
    other = sqlite3.connect(db)
    _fill(con, 100, 100)
    _check(other, 200)
    _fill(other, 100, 200)
    _check(con, 300)
    other.close()

    # Larger than tier 1 and the pool together: 24,000 rows of ~560 bytes, ~14 MiB.
    _fill(con, 24_000 - 300, 300)
    con.close()
    assert db.stat().st_size > 6 * (1 << 20)

    # Read-only: mode=ro opens O_RDONLY|O_NOFOLLOW|O_CLOEXEC.
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    _check(ro, 24_000)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("insert into t(id, body) values (-1, 'x')")
    ro.close()

    # The bytes on SOURCE are the same database.
    direct = sqlite3.connect(m.source / "t.db")
    _check(direct, 24_000)
    direct.close()

"""SOURCE's files through the handlers: lookup, getattr, open, read, write, create,
release and readdir pass SOURCE through, and each failure is the errno the backing call
gave (ENOENT, EISDIR, ENOTEMPTY; EACCES for a caller the daemon acts as)."""

from __future__ import annotations

import os
import stat

import pyfuse3
import pytest

from tests.adapter.conftest import Adapter, Context, OpsFactory
from tests.adapter.helpers import errno_of, lookup, read_file, write_file

pytestmark = pytest.mark.trio

USER = Context(uid=1000, gid=1000)
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="acting as another caller needs root (setfsuid)")


async def test_lookup_and_getattr_report_the_backing_file(adapter: Adapter) -> None:
    (adapter.source / "f").write_bytes(b"x" * 5000)
    os.chmod(adapter.source / "f", 0o640)
    attr = await lookup(adapter, adapter.root, b"f")
    st = os.stat(adapter.source / "f")
    assert (attr.st_size, attr.st_mode, attr.st_uid) == (5000, st.st_mode, st.st_uid)
    again = await adapter.ops.getattr(attr.st_ino, Context())  # type: ignore[arg-type]
    assert again.st_ino == attr.st_ino and again.st_mtime_ns == st.st_mtime_ns


async def test_read_returns_the_backing_bytes(adapter: Adapter) -> None:
    data = os.urandom(3 * 4096 + 100)
    (adapter.source / "f").write_bytes(data)
    attr = await lookup(adapter, adapter.root, b"f")
    assert await read_file(adapter, attr.st_ino) == data
    assert await read_file(adapter, attr.st_ino, 10, off=4090) == data[4090:4100]
    assert await read_file(adapter, attr.st_ino, 4096, off=len(data)) == b""


async def test_create_and_write_land_in_the_backing_file(adapter: Adapter) -> None:
    fi, attr = await adapter.ops.create(adapter.root, b"new", 0o600,  # type: ignore[arg-type]
                                        os.O_WRONLY | os.O_CREAT, Context())
    assert await adapter.ops.write(fi.fh, 0, b"hello") == 5
    await adapter.ops.release(fi.fh)
    assert (adapter.source / "new").read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(adapter.source / "new").st_mode) == 0o600
    assert await read_file(adapter, attr.st_ino) == b"hello"


async def test_a_missing_name_is_enoent(adapter: Adapter) -> None:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await lookup(adapter, adapter.root, b"absent")
    assert errno_of(exc) == "ENOENT"
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.unlink(adapter.root, b"absent", Context())  # type: ignore[arg-type]
    assert errno_of(exc) == "ENOENT"


async def test_with_negative_timeout_a_missing_name_is_a_negative_entry(
        make_ops: OpsFactory) -> None:
    a = make_ops("negative_timeout=2")
    attr = await lookup(a, a.root, b"absent")
    assert attr.st_ino == 0 and attr.entry_timeout == 2


async def test_a_directory_opened_for_writing_is_eisdir(adapter: Adapter) -> None:
    (adapter.source / "d").mkdir()
    attr = await lookup(adapter, adapter.root, b"d")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.open(attr.st_ino, os.O_WRONLY, Context())  # type: ignore[arg-type]
    assert errno_of(exc) == "EISDIR"


async def test_rmdir_of_a_full_directory_is_enotempty(adapter: Adapter) -> None:
    (adapter.source / "d").mkdir()
    (adapter.source / "d" / "f").write_bytes(b"")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.rmdir(adapter.root, b"d", Context())  # type: ignore[arg-type]
    assert errno_of(exc) == "ENOTEMPTY"
    assert (adapter.source / "d" / "f").exists()


async def test_readdir_of_the_root_hides_a_source_entry_named_like_the_control_dir(
        adapter: Adapter, listing: list[tuple[bytes, object, int]]) -> None:
    for name in ("a", "b", ".zcachefs"):
        (adapter.source / name).write_bytes(b"")
    fh = await adapter.ops.opendir(adapter.root, Context())  # type: ignore[arg-type]
    await adapter.ops.readdir(fh, 0, object())  # type: ignore[arg-type]
    await adapter.ops.releasedir(fh)
    assert sorted(name for name, _, _ in listing) == [b".", b"..", b"a", b"b"]
    ctl = await lookup(adapter, adapter.root, b".zcachefs")
    assert stat.S_ISDIR(ctl.st_mode)  # the control directory, not SOURCE's file


@needs_root
async def test_a_private_file_is_eacces_for_another_caller(adapter: Adapter) -> None:
    (adapter.source / "private").write_bytes(b"secret")
    os.chmod(adapter.source / "private", 0o600)
    attr = await lookup(adapter, adapter.root, b"private", USER)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.open(attr.st_ino, os.O_RDONLY, USER)  # type: ignore[arg-type]
    assert errno_of(exc) == "EACCES"
    assert await read_file(adapter, attr.st_ino) == b"secret"  # the owner (root) still may


@needs_root
async def test_a_file_created_for_another_caller_is_theirs(adapter: Adapter) -> None:
    os.chmod(adapter.source, 0o777)
    fi, attr = await adapter.ops.create(adapter.root, b"mine", 0o644,  # type: ignore[arg-type]
                                        os.O_WRONLY | os.O_CREAT, USER)
    await adapter.ops.release(fi.fh)
    st = os.stat(adapter.source / "mine")
    assert (st.st_uid, st.st_gid) == (USER.uid, USER.gid) == (attr.st_uid, attr.st_gid)


@needs_root
async def test_a_directory_another_caller_cannot_search_is_eacces(adapter: Adapter) -> None:
    (adapter.source / "closed").mkdir(mode=0o700)
    (adapter.source / "closed" / "f").write_bytes(b"")
    d = await lookup(adapter, adapter.root, b"closed", USER)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await lookup(adapter, d.st_ino, b"f", USER)
    assert errno_of(exc) == "EACCES"
    assert (await lookup(adapter, d.st_ino, b"f")).st_size == 0  # root may


async def test_a_write_replaces_the_backing_bytes(adapter: Adapter) -> None:
    (adapter.source / "f").write_bytes(b"old")
    attr = await lookup(adapter, adapter.root, b"f")
    assert await write_file(adapter, attr.st_ino, b"new") == 3
    assert (adapter.source / "f").read_bytes() == b"new"

"""The virtual control directory through the handlers: lookup, getattr, readdir, open,
read, write, release and the xattrs on the directory, with their errnos; and who may
turn a knob (the daemon's owner and root only)."""

from __future__ import annotations

import os
import stat

import pyfuse3
import pytest

from tests.adapter.conftest import Adapter, Context, OpsFactory
from tests.adapter.helpers import CTL, ctl_dir, ctl_read, errno_of, lookup, read_file, write_file

pytestmark = pytest.mark.trio

PREFIX = b"user.zcachefs."
OTHER = Context(uid=os.geteuid() + 4242, gid=4242)  # neither root nor the daemon's owner


async def test_lookup_and_getattr_of_the_control_directory(adapter: Adapter) -> None:
    attr = await lookup(adapter, adapter.root, CTL)
    assert stat.S_ISDIR(attr.st_mode) and attr.st_mode & 0o777 == 0o755
    again = await adapter.ops.getattr(attr.st_ino, Context())  # type: ignore[arg-type]
    assert again.st_ino == attr.st_ino and again.st_mode == attr.st_mode
    assert attr.st_uid == os.geteuid()
    assert not (adapter.source / ".zcachefs").exists()  # it never reaches SOURCE


async def test_readdir_lists_files_that_each_look_up(adapter: Adapter,
                                                     listing: list[tuple[bytes, object, int]]
                                                     ) -> None:
    d = await ctl_dir(adapter)
    fh = await adapter.ops.opendir(d, Context())  # type: ignore[arg-type]
    await adapter.ops.readdir(fh, 0, object())  # type: ignore[arg-type]
    await adapter.ops.releasedir(fh)
    names = [name for name, _, _ in listing]
    assert {b"memlimit", b"hits", b"stats.json", b"stats.prom", b"drop_caches"} <= set(names)
    assert [n for _, _, n in listing] == list(range(1, len(names) + 1))  # offsets resume
    for name, attr, _ in listing:
        looked = await lookup(adapter, d, name)
        assert looked.st_ino == attr.st_ino and stat.S_ISREG(looked.st_mode), name


async def test_readdir_resumes_at_an_offset(adapter: Adapter,
                                            listing: list[tuple[bytes, object, int]]) -> None:
    d = await ctl_dir(adapter)
    fh = await adapter.ops.opendir(d, Context())  # type: ignore[arg-type]
    await adapter.ops.readdir(fh, 0, object())  # type: ignore[arg-type]
    everything = [name for name, _, _ in listing]
    listing.clear()
    await adapter.ops.readdir(fh, 3, object())  # type: ignore[arg-type]
    assert [name for name, _, _ in listing] == everything[3:]


async def test_a_knob_reads_what_the_mount_option_said(make_ops: OpsFactory) -> None:
    a = make_ops("page_size=4K", "memlimit=8M")
    assert await ctl_read(a, "memlimit") == "8388608\n"
    assert await ctl_read(a, "page_size") == "4096\n"


async def test_a_knob_written_as_a_file_is_read_back_everywhere(adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    knob = await lookup(adapter, d, b"memlimit")
    assert await write_file(adapter, knob.st_ino, b"4M\n") == 3
    assert await ctl_read(adapter, "memlimit") == "4194304\n"
    got = await adapter.ops.getxattr(d, PREFIX + b"memlimit", Context())  # type: ignore[arg-type]
    assert got == b"4194304"


async def test_setxattr_on_the_directory_turns_a_knob(adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    await adapter.ops.setxattr(d, PREFIX + b"memlimit", b"2M", Context())  # type: ignore[arg-type]
    assert await ctl_read(adapter, "memlimit") == "2097152\n"


async def test_listxattr_names_the_knobs_and_counters_but_not_the_renderings(
        adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    names = await adapter.ops.listxattr(d, Context())  # type: ignore[arg-type]
    assert PREFIX + b"memlimit" in names and PREFIX + b"hits" in names
    assert all(n.startswith(PREFIX) for n in names)
    assert PREFIX + b"stats.json" not in names
    knob = await lookup(adapter, d, b"memlimit")
    assert await adapter.ops.listxattr(knob.st_ino, Context()) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value", "expected"), [
    (b"memlimit", b"lots", "EINVAL"),  # a bad value
    (b"hits", b"1", "EROFS"),  # a counter
    (b"page_size", b"8K", "EROFS"),  # mount-only
    (b"nonsense", b"1", "ENODATA"),  # no such knob (Linux spells ENOATTR as ENODATA)
    (b"stats.json", b"1", "ENODATA"),  # a rendering is a file, not an xattr
])
async def test_setxattr_errors_change_nothing(adapter: Adapter, name: bytes, value: bytes,
                                              expected: str) -> None:
    d = await ctl_dir(adapter)
    before = await ctl_read(adapter, "memlimit")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.setxattr(d, PREFIX + name, value, Context())  # type: ignore[arg-type]
    assert errno_of(exc) == expected
    assert await ctl_read(adapter, "memlimit") == before


async def test_a_bad_write_to_a_knob_file_is_einval(adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    knob = await lookup(adapter, d, b"memlimit")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await write_file(adapter, knob.st_ino, b"-5\n")
    assert errno_of(exc) == "EINVAL"
    assert await ctl_read(adapter, "memlimit") != "-5\n"


async def test_a_counter_cannot_be_opened_for_writing(adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    hits = await lookup(adapter, d, b"hits")
    assert stat.S_IMODE(hits.st_mode) == 0o444
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.open(hits.st_ino, os.O_WRONLY, Context())  # type: ignore[arg-type]
    assert errno_of(exc) == "EACCES"


async def test_another_user_reads_but_cannot_turn_knobs(adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    knob = await lookup(adapter, d, b"memlimit", OTHER)
    before = await ctl_read(adapter, "memlimit")
    assert (await read_file(adapter, knob.st_ino, ctx=OTHER)).decode() == before
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.open(knob.st_ino, os.O_WRONLY, OTHER)  # type: ignore[arg-type]
    assert errno_of(exc) == "EACCES"
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.setxattr(d, PREFIX + b"memlimit", b"4M", OTHER)  # type: ignore[arg-type]
    assert errno_of(exc) == "EPERM"
    assert await ctl_read(adapter, "memlimit") == before


async def test_an_unknown_control_name_is_enoent(adapter: Adapter) -> None:
    d = await ctl_dir(adapter)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await lookup(adapter, d, b"no_such_file")
    assert errno_of(exc) == "ENOENT"


async def test_the_control_directory_cannot_be_created_over_or_removed(
        adapter: Adapter) -> None:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.create(adapter.root, CTL, 0o644, os.O_WRONLY,  # type: ignore[arg-type]
                                 Context())
    assert errno_of(exc) == "EPERM"
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.rmdir(adapter.root, CTL, Context())  # type: ignore[arg-type]
    assert errno_of(exc) == "EPERM"
    d = await ctl_dir(adapter)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await adapter.ops.removexattr(d, PREFIX + b"memlimit", Context())  # type: ignore[arg-type]
    assert errno_of(exc) == "EPERM"
    assert not (adapter.source / ".zcachefs").exists()

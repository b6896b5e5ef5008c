"""Small drivers of the handlers, shared by the adapter tests: each is one request as the
kernel would send it."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import pyfuse3
import pytest

from tests.adapter.conftest import ROOT, Adapter, Context

CTL = b".zcachefs"


def errno_of(exc: pytest.ExceptionInfo[pyfuse3.FUSEError]) -> str:
    """The errno name a FUSEError carries (what the caller's syscall would see)."""
    return errno.errorcode[exc.value.errno]


async def lookup(a: Adapter, parent: int, name: bytes, ctx: Context = ROOT) -> Any:
    return await a.ops.lookup(parent, name, ctx)  # type: ignore[arg-type]


async def read_file(a: Adapter, ino: int, size: int = 1 << 20, off: int = 0,
                    ctx: Context = ROOT) -> bytes:
    """open, read, release: the bytes a program would read."""
    fi = await a.ops.open(ino, os.O_RDONLY, ctx)  # type: ignore[arg-type]
    try:
        return bytes(await a.ops.read(fi.fh, off, size))
    finally:
        await a.ops.release(fi.fh)


async def write_file(a: Adapter, ino: int, data: bytes, ctx: Context = ROOT) -> int:
    """open for writing, write at 0, release."""
    fi = await a.ops.open(ino, os.O_WRONLY, ctx)  # type: ignore[arg-type]
    try:
        return await a.ops.write(fi.fh, 0, data)
    finally:
        await a.ops.release(fi.fh)


async def ctl_dir(a: Adapter) -> int:
    return int((await lookup(a, a.root, CTL)).st_ino)


async def ctl_read(a: Adapter, name: str) -> str:
    """The text of one control file, read through lookup/open/read/release."""
    d = await ctl_dir(a)
    attr = await lookup(a, d, name.encode())
    return (await read_file(a, attr.st_ino, 1 << 16)).decode()


async def stats(a: Adapter) -> dict[str, float]:
    """Every counter, from the control directory's stats.json (through the handlers)."""
    values: dict[str, float] = json.loads(await ctl_read(a, "stats.json"))
    return values

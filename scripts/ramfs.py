#!/usr/bin/env python3
"""The ceiling of a Python FUSE filesystem on this machine (benchmark, issue 5).

`ramfs.py FILE MOUNTPOINT` loads FILE into memory, mounts a read-only filesystem whose
root holds one file of the same name and serves reads of it from that buffer with
direct_io (no kernel page cache: every read is a FUSE request). Replies are zero-copy
memoryview slices, so the cost measured is pyfuse3 + trio + the kernel round trip and
nothing else: no FUSE cache can be faster on this machine. It stays in the foreground,
logs "ready" on stderr once mounted and unmounts on SIGTERM/SIGINT/SIGHUP.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
import time
from typing import cast

import pyfuse3
import trio

FILE_INODE = cast(pyfuse3.InodeT, pyfuse3.ROOT_INODE + 1)


class RamFS(pyfuse3.Operations):
    def __init__(self, name: bytes, data: bytes) -> None:
        super().__init__()
        self.name = name
        self.data = memoryview(data)
        self.size = len(data)
        self.now = time.time_ns()

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = cast(pyfuse3.InodeT, inode)
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode = cast(pyfuse3.ModeT, stat.S_IFDIR | 0o555)
            a.st_nlink = 2
        else:
            a.st_mode = cast(pyfuse3.ModeT, stat.S_IFREG | 0o444)
            a.st_nlink = 1
            a.st_size = self.size
            a.st_blocks = (self.size + 511) // 512
        a.st_blksize = 4096
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.now
        return a

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return cast(pyfuse3.FileHandleT, 0)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, cast(pyfuse3.FileNameT, self.name),
                                  self._attr(FILE_INODE), 1)

    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, FILE_INODE), direct_io=True,
                                keep_cache=False)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return self.data[off:off + size]  # type: ignore[return-value]  # a buffer will do


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for _ in sigs:
            pyfuse3.terminate()
            return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("mountpoint")
    args = ap.parse_args(argv)
    with open(args.file, "rb") as f:
        data = f.read()
    fs = RamFS(os.fsencode(os.path.basename(args.file)), data)
    pyfuse3.init(fs, args.mountpoint, {"fsname=ramfs", "subtype=ramfs", "ro"})
    print(f"ramfs: ready, {len(data)} bytes of {args.file}", file=sys.stderr, flush=True)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

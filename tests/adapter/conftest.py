"""The adapter tier's fixtures: `zcachefs.fs.Operations` built as `zcachefs.mount` builds
it (`Operations(root_fd, opts, ram)` with `options.parse_options([...])`) over a
tmp_path backing directory, and a fake request context, driven in process under
pytest-trio. No kernel is involved: the kernel's side (pyfuse3.readdir_reply) is faked.

Only the constructor and the pyfuse3 handler methods are used (plus `close_all` at
teardown, as `mount` does): the tests do not reach into the adapter's private helpers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from zcachefs.fs import Operations
from zcachefs.options import parse_options

RAM = 1 << 30  # what the daemon would have measured: the sizes' percentages resolve to it


@dataclass(frozen=True)
class Context:
    """What pyfuse3.RequestContext carries: who asks (uid, gid, pid) and their umask.
    pid 0 has no /proc entry, so the caller has no supplementary groups."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


ROOT = Context()


@dataclass
class Adapter:
    """An Operations instance over `source`, and what the tests need around it."""

    ops: Operations
    source: Path

    @property
    def root(self) -> pyfuse3.InodeT:
        return pyfuse3.ROOT_INODE


OpsFactory = Callable[..., Adapter]


@pytest.fixture
def make_ops(tmp_path: Path) -> Iterator[OpsFactory]:
    """Build Operations over a fresh backing directory, with mount options `opts`."""
    made: list[Operations] = []

    def make(*opts: str, source: Path | None = None) -> Adapter:
        src = source or tmp_path / f"src{len(made)}"
        src.mkdir(exist_ok=True)
        root_fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        ops = Operations(root_fd, parse_options(list(opts), RAM), RAM)
        made.append(ops)
        return Adapter(ops, src)

    yield make
    for ops in made:
        ops.close_all()  # closes every descriptor it holds, root_fd included


@pytest.fixture
def adapter(make_ops: OpsFactory) -> Adapter:
    """4 KiB pages, no negative entries (a missing name is ENOENT, as without a cache)."""
    return make_ops("page_size=4K", "negative_timeout=0")


@pytest.fixture
def listing(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, Any, int]]:
    """The kernel's side of readdir: pyfuse3.readdir_reply appends (name, attributes,
    next offset) to this list, as a kernel buffer with room for everything would."""
    replies: list[tuple[bytes, Any, int]] = []

    def reply(token: object, name: bytes, attr: Any, next_id: int) -> bool:
        replies.append((bytes(name), attr, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return replies

"""Model-based test: random operation sequences on the mount and on a plain directory,
comparing every byte, every listing and every errno (hypothesis stateful testing).

One mount serves all examples (a fresh subdirectory per example), so the kernel's and
the daemon's caches carry state from one step to the next, as in real use. It runs
twice: with the defaults, and with a tiny memlimit and cache_size under direct_io so
that every read reaches the daemon and pages are evicted and compressed constantly.
Changes made behind the mount's back (to SOURCE directly) must be seen at the next
open (attribute timeouts are 0 here, so the kernel asks again).
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.support.mounting import Mount

NAMES = ["a", "b", "c", "d/x", "d/y", "e/z"]
names = st.sampled_from(NAMES)
offsets = st.integers(0, 3 * 4096 + 17)
sizes = st.integers(0, 2 * 4096 + 5)
data = st.binary(min_size=1, max_size=9000) | st.builds(lambda n, b: bytes([b]) * n,
                                                         st.integers(1, 9000), st.integers(0, 255))


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as exc:
        return f"errno:{errno.errorcode.get(exc.errno or 0)}"


class PassthroughModel(RuleBasedStateMachine):
    mount: ClassVar[Mount]
    counter = itertools.count()

    @initialize()
    def setup(self) -> None:
        n = next(self.counter)
        self.plain = self.mount.source.parent / "plain" / str(n)
        self.plain.mkdir(parents=True)
        (self.mount.source / str(n)).mkdir()
        self.mnt = self.mount.mountpoint / str(n)
        for root in (self.plain, self.mnt):
            (root / "d").mkdir()
            (root / "e").mkdir()

    def both(self, fn: Callable[[Path], Any]) -> None:
        expected = outcome(lambda: fn(self.plain))
        got = outcome(lambda: fn(self.mnt))
        assert got == expected

    @rule(name=names, off=offsets, payload=data)
    def pwrite(self, name: str, off: int, payload: bytes) -> None:
        def op(root: Path) -> int:
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, payload, off)
            finally:
                os.close(fd)
        self.both(op)

    @rule(name=names, payload=data)
    def append(self, name: str, payload: bytes) -> None:
        def op(root: Path) -> int:
            with open(root / name, "ab") as f:
                return f.write(payload)
        self.both(op)

    @rule(name=names, off=offsets, size=sizes)
    def pread(self, name: str, off: int, size: int) -> None:
        def op(root: Path) -> bytes:
            fd = os.open(root / name, os.O_RDONLY)
            try:
                return os.pread(fd, size, off)
            finally:
                os.close(fd)
        self.both(op)

    @rule(name=names, size=offsets)
    def truncate(self, name: str, size: int) -> None:
        self.both(lambda root: os.truncate(root / name, size))

    @rule(a=names, b=names)
    def rename(self, a: str, b: str) -> None:
        self.both(lambda root: os.rename(root / a, root / b))

    @rule(a=names, b=names)
    def link(self, a: str, b: str) -> None:
        self.both(lambda root: os.link(root / a, root / b))

    @rule(name=names)
    def unlink(self, name: str) -> None:
        self.both(lambda root: os.unlink(root / name))

    @rule(name=names, off=offsets, payload=data)
    def outside_write(self, name: str, off: int, payload: bytes) -> None:
        """Change SOURCE directly (not through the mount), as another program would."""
        backing = self.mount.source / self.mnt.name

        def op(root: Path) -> int:
            fd = os.open(root / name, os.O_WRONLY)
            try:
                return os.pwrite(fd, payload, off)
            finally:
                os.close(fd)
        assert outcome(lambda: op(self.plain)) == outcome(lambda: op(backing))

    @rule(name=names)
    def read_whole(self, name: str) -> None:
        self.both(lambda root: (root / name).read_bytes())

    @invariant()
    def same_tree(self) -> None:
        def tree(root: Path) -> list[tuple[str, int, int]]:
            out = []
            for dirpath, _dirs, files in os.walk(root):
                for f in files:
                    st = os.stat(os.path.join(dirpath, f))
                    out.append((os.path.relpath(os.path.join(dirpath, f), root),
                                st.st_size, st.st_nlink))
            return sorted(out)
        if hasattr(self, "plain"):
            assert tree(self.mnt) == tree(self.plain)


@pytest.fixture(scope="module", params=[
    "attr_timeout=0,entry_timeout=0",
    "direct_io,memlimit=300K,cache_size=16K,attr_timeout=0,entry_timeout=0",
], ids=["defaults", "tiny-cache"])
def model_mount(request: pytest.FixtureRequest) -> Any:
    base = Path(tempfile.mkdtemp(prefix="zcachefs-model-"))
    (base / "src").mkdir()
    (base / "mnt").mkdir()
    m = Mount(base / "src", base / "mnt", request.param, log=base / "daemon.log")
    m.start()
    yield m
    m.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_random_operations_match_plain_directory(model_mount: Mount) -> None:
    PassthroughModel.mount = model_mount
    run = PassthroughModel.TestCase
    run.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()

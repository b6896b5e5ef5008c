"""The mount tier's fixtures: real mounts that are always unmounted and reaped in
teardown (tests.support.mounting.Mount). Without fusermount3 or /dev/fuse (or the right
to open it), making a mount skips the test with the reason; tests that need root or
setpriv say so in their own skip marks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mounting import Mount, ensure_fusectl

MountFactory = Callable[..., Mount]

needs_fuse = pytest.mark.skipif(shutil.which("fusermount3") is None,
                                reason="fuse3 is not installed")


@pytest.fixture(scope="session", autouse=True)
def _fusectl() -> None:
    ensure_fusectl()


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """Make mounts; every one of them is stopped at teardown, even on failure."""
    mounts: list[Mount] = []

    def make(source: Path | None = None, mountpoint: Path | None = None,
             options: str = "", **kw: object) -> Mount:
        n = len(mounts)
        src = source or tmp_path / f"src{n}"
        mnt = mountpoint or tmp_path / f"mnt{n}"
        src.mkdir(exist_ok=True)
        mnt.mkdir(exist_ok=True)
        m = Mount(src, mnt, options, log=tmp_path / f"daemon{n}.log", **kw)  # type: ignore[arg-type]
        mounts.append(m)
        return m.start()

    yield make
    for m in reversed(mounts):
        m.stop()


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="zcachefs-world-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def zmount(mount_factory: MountFactory) -> Mount:
    """One live mount over an empty source directory."""
    return mount_factory()


@pytest.fixture
def pair(tmp_path: Path, mount_factory: MountFactory) -> tuple[Path, Path]:
    """(plain directory, zcachefs mount of an empty directory) for differential tests."""
    plain = tmp_path / "plain"
    plain.mkdir()
    m = mount_factory()
    return plain, m.mountpoint

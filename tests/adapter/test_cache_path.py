"""The cache behind the read and write handlers, proved by the counters (stats.json read
through the control directory) and by the backing-read counters, never by timing: a
second read of pages the pool holds is served from the pool with no backing read; a
write through the adapter is never followed by stale bytes."""

from __future__ import annotations

import os

import pytest

from tests.adapter.conftest import Adapter, Context, OpsFactory
from tests.adapter.helpers import ctl_dir, lookup, stats, write_file

pytestmark = pytest.mark.trio

PAGE = 4096
PAGES = 600  # > tier 1 (4 pages) + what may wait for compression (cache.MAX_PENDING, 256)
# Tier 1 of 4 pages and a pool with room for all of it: pages that tier 1 evicts wait for
# the compressor, and once more than 256 wait the oldest are compressed into the pool on
# the spot (no background task runs here), so after one pass the pool holds the first
# PAGES - 260 pages.
OPTS = ("page_size=4K", "cache_size=16K", "memlimit=16M", "negative_timeout=0")


def text_page(i: int) -> bytes:
    """A page that compresses well but is not same-filled."""
    return (f"page {i:06d} of a log that compresses; " * 120).encode()[:PAGE]


@pytest.fixture
async def filled(make_ops: OpsFactory) -> tuple[Adapter, int, bytes]:
    """An adapter whose pool holds the start of a file read once: (adapter, fh, data)."""
    a = make_ops(*OPTS)
    data = b"".join(text_page(i) for i in range(PAGES))
    (a.source / "big").write_bytes(data)
    attr = await lookup(a, a.root, b"big")
    fi = await a.ops.open(attr.st_ino, os.O_RDWR, Context())  # type: ignore[arg-type]
    for i in range(PAGES):
        assert await a.ops.read(fi.fh, i * PAGE, PAGE) == data[i * PAGE:(i + 1) * PAGE]
    return a, fi.fh, data


async def test_the_first_pass_misses_and_fills_the_pool(
        filled: tuple[Adapter, int, bytes]) -> None:
    a, _, _ = filled
    s = await stats(a)
    assert s["misses"] == PAGES and s["hits"] == 0
    assert s["backing_read_bytes"] == PAGES * PAGE
    assert s["stored_pages"] >= PAGES - 4 - 256  # what overflowed the pending queue
    assert s["compr_data_size"] < s["orig_data_size"] / 4  # it did compress


async def test_a_second_read_is_served_from_the_pool(
        filled: tuple[Adapter, int, bytes]) -> None:
    a, fh, data = filled
    before = await stats(a)
    n = int(before["stored_pages"])
    assert n >= PAGES - 4 - 256  # the pages of the first pass that the pool holds
    for i in range(n):
        assert await a.ops.read(fh, i * PAGE, PAGE) == data[i * PAGE:(i + 1) * PAGE]
    after = await stats(a)
    assert after["hits"] - before["hits"] == n
    assert after["backing_reads"] == before["backing_reads"]  # no backing read at all
    assert after["misses"] == before["misses"]


async def test_a_write_is_never_followed_by_stale_bytes(
        filled: tuple[Adapter, int, bytes]) -> None:
    a, fh, data = filled
    new = b"N" * 100
    assert await a.ops.write(fh, 10, new) == 100
    expected = data[:10] + new + data[110:PAGE]
    assert await a.ops.read(fh, 0, PAGE) == expected
    assert (a.source / "big").read_bytes()[:PAGE] == expected


async def test_a_change_outside_is_seen_at_the_next_open(make_ops: OpsFactory) -> None:
    a = make_ops(*OPTS)
    (a.source / "f").write_bytes(text_page(1))
    attr = await lookup(a, a.root, b"f")
    for _ in range(2):
        fi = await a.ops.open(attr.st_ino, os.O_RDONLY, Context())  # type: ignore[arg-type]
        assert await a.ops.read(fi.fh, 0, PAGE) == text_page(1)
        await a.ops.release(fi.fh)
    assert (await stats(a))["cache_hits"] >= 1  # the second open read from tier 1
    with open(a.source / "f", "r+b") as f:  # a change in SOURCE, same size
        f.write(b"CHANGED")
    os.utime(a.source / "f", ns=(1, 1))
    fi = await a.ops.open(attr.st_ino, os.O_RDONLY, Context())  # type: ignore[arg-type]
    assert (await a.ops.read(fi.fh, 0, PAGE))[:7] == b"CHANGED"
    await a.ops.release(fi.fh)


async def test_drop_caches_empties_the_pool(filled: tuple[Adapter, int, bytes]) -> None:
    a, fh, data = filled
    assert (await stats(a))["stored_pages"] > 0
    d = await ctl_dir(a)
    drop = await lookup(a, d, b"drop_caches")
    await write_file(a, drop.st_ino, b"1\n")
    s = await stats(a)
    assert s["stored_pages"] == 0 and s["cache_pages"] == 0
    reads = s["backing_reads"]
    assert await a.ops.read(fh, 0, PAGE) == data[:PAGE]  # read from SOURCE again
    assert (await stats(a))["backing_reads"] == reads + 1

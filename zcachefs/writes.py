"""The cache's side of a change through the mount: writes and truncates.

Writes through the mount keep the cache warm: after the backing write, the whole
pages it wrote enter tier 1 (so they reach the pool like any miss); a page it covers
only in part is merged into its cached copy, taken before the write (`WriteToken.edges`),
or else dropped. The file's signature is taken after the write, so the mount's own
writes do not make the next open drop the file.

Each change is two calls around the backing call the adapter awaits: `begin_*` moves
the file's version and drops the pages the change touches (a read meanwhile must not
serve or cache old bytes), `end_*` (or `wrote`) drops them again and, when the file is
known as it is now (`FileState.changed`), caches what the write determined.

Why a module of its own: this is the one place that knows the byte arithmetic of a
write (edges, holes, the short last page, O_APPEND) and what a truncate drops; it
works through the Cache's page operations (`peek`, `fill_written`, `invalidate_range`,
`truncate`), never its tables, so the read path (`Cache.read`/`fill_plan`) stays in
cache.py and this path stays out of it.

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe (trio thread only;
each function runs without an await, the adapter awaits between begin and end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .files import FileState, Sig

if TYPE_CHECKING:
    from .cache import Cache


@dataclass(frozen=True, slots=True)
class WriteToken:
    """What `begin_write` hands to `end_write`."""

    version: int
    known: Sig | None  # the file's signature as the cache knew it
    edges: dict[int, bytes]  # cached pages the write covers only in part


@dataclass(frozen=True, slots=True)
class Truncation:
    """What `begin_truncate` hands to `end_truncate`."""

    state: FileState
    size: int
    token: tuple[int, Sig | None]


def begin_write(cache: Cache, state: FileState, off: int, length: int) -> WriteToken:
    """Call before a write through the mount: moves the version, keeps the cached
    pages the write only partly covers (to merge the new bytes into), and drops
    every page it touches (a read meanwhile must not serve or cache old bytes)."""
    ps, size = cache.page_size, state.size
    edges: dict[int, bytes] = {}
    if length:
        for index in {off // ps, (off + length - 1) // ps}:
            start = index * ps
            if start < off or off + length < start + ps:  # partly covered
                if size is not None and start >= size:
                    edges[index] = b""  # past the end of the file: a hole, zeros
                    continue
                page = cache.peek(state.fid, index)
                if page is not None and (len(page) == ps or index == state.tail):
                    edges[index] = page
    token = WriteToken(*state.changing(), edges)
    cache.invalidate_range(state, off, length)
    return token


def end_write(cache: Cache, state: FileState, token: WriteToken, off: int, data: bytes,
              before: Sig | None = None, after: Sig | None = None,
              cache_it: bool = True) -> int:
    """Call after a write of `data` (the bytes that were written) at `off`, with the
    file's signatures just before and after it (None after a failure). Drops the
    touched pages again; if the file is known as it is now (`changed`) and
    `cache_it`, caches the pages the write now determines: whole pages directly,
    partly written ones merged into their cached copy. Returns the pages cached."""
    fresh = state.changed((token.version, token.known), before, after)
    cache.invalidate_range(state, off, len(data))
    if not fresh or not cache_it or not data:
        return 0
    assert after is not None
    ps, size = cache.page_size, after[0]
    end = off + len(data)
    first, last = off // ps, (end - 1) // ps
    cached = 0
    for index in range(first, last + 1):
        start = index * ps
        want = min(ps, size - start)  # the page's length in the file now
        lo, hi = max(off, start) - start, min(end, start + ps) - start
        chunk = data[start + lo - off:start + hi - off]
        if lo == 0 and hi == want:
            page = chunk
        else:
            old = token.edges.get(index)
            if old is None:
                continue
            if len(old) < lo:  # the old last page, then a hole up to the write
                old = old + bytes(lo - len(old))
            page = old[:lo] + chunk + old[hi:]
            if len(page) != want:
                continue  # not what the file holds now: leave it uncached
        cache.fill_written(state, index, page)
        cached += 1
    return cached


def wrote(cache: Cache, state: FileState, token: WriteToken, off: int, data: bytes, n: int,
          before: Sig, after: Sig, appended: bool = False, cache_it: bool = True) -> None:
    """`end_write` for a backing write of `data` at `off` that wrote `n` bytes.
    `appended` (O_APPEND): the bytes went to the end of the file, wherever the
    kernel thought that was; the range they really landed in is dropped and
    nothing is cached."""
    if appended:
        end_write(cache, state, token, off, data[:n], before, after, cache_it=False)
        cache.invalidate_range(state, after[0] - n, n)
    else:
        end_write(cache, state, token, off, data[:n] if n < len(data) else data, before,
                  after, cache_it=cache_it)


def begin_truncate(cache: Cache, identity: bytes, size: int) -> Truncation:
    """Call before a truncate through the mount: moves the version and drops the
    pages at or past the new end."""
    state = cache.file(identity)
    cut = Truncation(state, size, state.changing())
    cache.truncate(state, size)
    return cut


def end_truncate(cache: Cache, cut: Truncation) -> None:
    """Call after the truncate, whether it failed or not. Without the signature
    before the change, an outside change cannot be told from ours: the next open
    drops the file (truncates are rare)."""
    cut.state.changed(cut.token)
    cache.truncate(cut.state, cut.size)

"""The hand-off between tier 1 and the pool: the pages waiting for compression
(`Cache.pending`), the job a worker thread compresses them in, and their admission.

Tier 1 evicts its least recently used pages into `pending` (`Cache._overflow`); they
stay readable there. The background compressor (`tasks.Compressor`) takes the oldest
as a `CompressJob` (`compress_job`), runs it in a worker thread and hands the result
back to `admit` on the trio thread; under back-pressure (more than MAX_PENDING
waiting) tier 1 does both inline (`compress_inline`). `admit` takes only pages whose
pending entry is still the very object it took: a page read back or invalidated
while the job ran is not admitted (the pool never gets stale bytes).

Why a module of its own: this is the one thread boundary of the cache. Everything
here runs on the trio thread except `CompressJob.run`, which touches no table; the
read and write paths (cache.py, writes.py) never wait for it. `admit` changes the
cache's tables from outside cache.py (it moves a page from `pending` to the pool and
records `poor`; files.Files only forgets a dropped file's `poor` set); the pool bumps
its own counters.

Pure core: must not import pyfuse3, trio or psutil; imports cache for types only.
Not thread-safe, except `CompressJob.run` (safe in any thread: lz4/lzo release the GIL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codecs
from .pagecache import Key
from .pool import Compressed, compress_page

if TYPE_CHECKING:
    from .cache import Cache


@dataclass(frozen=True, slots=True)
class PendingPage:
    key: Key
    data: bytes
    poor: bool  # did not compress at its last try: stored raw without trying again


@dataclass(frozen=True, slots=True)
class CompressJob:
    """Pending pages to compress off the trio thread, with the codec and threshold in
    force when it was made (`compress_job` makes it, `admit` takes the result). `run`
    touches no table: safe in a worker thread (lz4/lzo release the GIL)."""

    codec: codecs.Codec
    threshold: int
    pages: list[PendingPage]  # handed over: nobody else holds this list

    @property
    def size(self) -> int:
        """Bytes `run` will compress (pages known not to compress are not tried)."""
        return sum(len(p.data) for p in self.pages if not p.poor)

    def run(self) -> list[tuple[PendingPage, Compressed]]:
        """Compress the pages; pages known not to compress are not tried again."""
        codec, threshold = self.codec, self.threshold
        return [(p, compress_page(codec, p.data, threshold, p.poor)) for p in self.pages]


def take_pending(cache: Cache, n: int) -> list[PendingPage]:
    """The n oldest pages waiting for compression (they stay readable meanwhile)."""
    return [p for _, p in cache.pending.oldest(n)]


def admit(cache: Cache, done: list[tuple[PendingPage, Compressed]]) -> None:
    """Admit compressed pages whose pending entry is still the same object (not
    read back or invalidated while the compressor ran); remember the pages that
    did not compress."""
    pool, pending, poor = cache.pool, cache.pending, cache.poor
    for pend, comp in done:
        if pending.peek(pend.key) is pend:
            pending.pop(pend.key)
            fid, index = pend.key
            if comp.poor and comp.tried:
                poor.setdefault(fid, set()).add(index)
            pool.admit(fid, index, comp)


def compress_job(cache: Cache, n: int) -> CompressJob | None:
    """The n oldest pending pages as a job for a worker thread; None if none wait."""
    batch = take_pending(cache, n)
    return CompressJob(cache.codec, cache.pool.threshold, batch) if batch else None


def compress_inline(cache: Cache, n: int) -> None:
    """Compress and admit the n oldest pending pages now (back-pressure)."""
    batch = take_pending(cache, n)
    admit(cache, CompressJob(cache.codec, cache.pool.threshold, batch).run())

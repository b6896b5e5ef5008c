"""What a page becomes before the pool sees it: same-filled detection, the codec, and
the verdict "poor" (does not compress to the threshold: stored raw, if at all).

`compress_page` is the pool's input step, kept apart from the pool because it runs
anywhere: in the background compressor's worker threads (both codecs release the GIL)
as well as inline on the trio thread. `pool` re-exports both names (its callers say
`pool.compress_page`).

Pure core: must not import pyfuse3, trio or psutil, nor the pool. Thread-safe: no
state; `Compressed` is immutable.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codecs

RAW = codecs.BY_NAME["none"].id  # entries stored as they are use the identity codec


@dataclass(frozen=True, slots=True)
class Compressed:
    """The result of `compress_page` (computed anywhere, admitted by the pool)."""

    length: int  # uncompressed length of the page
    codec: int  # codec id, or 0 for a same-filled page
    blob: bytes  # compressed bytes; for a same-filled page, the one fill byte
    # Does not compress to the threshold: `blob` is the page itself (codec RAW), stored
    # raw when the pool allows it. `tried`: the codec ran (False: known poor, skipped).
    poor: bool = False
    tried: bool = True


def compress_page(codec: codecs.Codec, page: bytes, threshold: int,
                  known_poor: bool = False) -> Compressed:
    """Compress one page for the pool; a page known not to compress is not tried
    again. Thread-safe; releases the GIL in the codec."""
    first = page[:1]
    # Same-filled? Compare with a filled copy (a memset and a memcmp, ~0.5 us) only when
    # the first and last bytes agree; bytes.count would take ~9 us per 4 KiB page.
    if page and page[-1:] == first and page == first * len(page):
        return Compressed(len(page), 0, first)
    if known_poor:
        return Compressed(len(page), RAW, page, poor=True, tried=False)
    blob = codec.compress(page)
    if codec.id == RAW:
        return Compressed(len(page), RAW, blob)
    if len(blob) > threshold:
        return Compressed(len(page), RAW, page, poor=True)
    return Compressed(len(page), codec.id, blob)

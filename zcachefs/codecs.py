"""Page codecs: small objects behind a registry, looked up by name or by id.

Each codec has a `name`, a one-byte `id` (stored with every compressed page, so pages
keep decompressing with the codec that stored them after a run-time switch),
`compress(page) -> bytes` and `decompress(blob, size) -> bytes`. Failures raise
`CodecError`.

Measured here (2 cores, one core used, 4 KiB pages of /usr/bin/python3.11):
lz4 block 178k compress / 569k decompress pages/s, ratio 1.59; LZO1X-1 141k / 145k,
ratio 1.66. LZ4 decompresses ~4x faster, which is what a cache hit pays, so it is the
default; LZO1X-1 is the 2010 zcache codec. `none` stores pages as they are: the
"same memory, no compression" baseline of the benchmark. zstd would compress better
(REFERENCE.md: ratio 2.23 at ~71k decompress/s) but decompresses ~8x slower than lz4
and needs another dependency; it is not offered.

Thread safety: every codec is stateless; both libraries release the GIL, so codecs
may run in worker threads concurrently. Must not import pyfuse3, trio or psutil.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lz4.block
import lzo


class CodecError(Exception):
    """A page could not be compressed or decompressed."""


@dataclass(frozen=True)
class Codec:
    name: str
    id: int
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    doc: str


def _lz4_compress(page: bytes) -> bytes:
    return lz4.block.compress(page, store_size=False)


def _exact(page: bytes, size: int, name: str) -> bytes:
    if len(page) != size:  # a short page would read as an early end of file
        raise CodecError(f"{name}: decompressed {len(page)} bytes, expected {size}")
    return page


def _lz4_decompress(blob: bytes, size: int) -> bytes:
    try:
        page = lz4.block.decompress(blob, uncompressed_size=size)
    except lz4.block.LZ4BlockError as exc:
        raise CodecError(f"lz4: {exc}") from None
    return _exact(page, size, "lz4")


def _lzo_compress(page: bytes) -> bytes:
    return lzo.compress(page, 1, False)  # LZO1X-1, no header


def _lzo_decompress(blob: bytes, size: int) -> bytes:
    try:
        page = lzo.decompress(blob, False, size)
    except lzo.error as exc:
        raise CodecError(f"lzo: {exc}") from None
    return _exact(page, size, "lzo")


def _identity(page: bytes) -> bytes:
    return page


def _identity_size(blob: bytes, size: int) -> bytes:
    return _exact(blob, size, "none")


CODECS: tuple[Codec, ...] = (
    Codec("lz4", 1, _lz4_compress, _lz4_decompress, "LZ4 block (default: fastest hits)"),
    Codec("lzo", 2, _lzo_compress, _lzo_decompress, "LZO1X-1, the 2010 zcache codec"),
    Codec("none", 3, _identity, _identity_size, "no compression (baseline)"),
)
BY_NAME = {c.name: c for c in CODECS}
BY_ID = {c.id: c for c in CODECS}


def get(name: str) -> Codec:
    """The codec called `name`; ValueError names the choices otherwise."""
    try:
        return BY_NAME[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown compressor {name!r} (choose from "
                         f"{', '.join(BY_NAME)})") from None

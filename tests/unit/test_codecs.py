"""Unit tests of the page codecs (pure core: no FUSE, no trio)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcachefs import codecs
from zcachefs.settings import DEFAULTS

PS = 4096
NAMES = [c.name for c in codecs.CODECS]
COMPRESSING = ["lz4", "lzo"]


def _text_page() -> bytes:
    words = b"the quick brown fox jumps over the lazy dog zcache cleancache zswap ".split()
    rnd = random.Random(7)
    out = bytearray()
    while len(out) < PS:
        out += rnd.choice(words) + b" "
    return bytes(out[:PS])


PAGES = {
    "random": random.Random(1).randbytes(PS),
    "zero": bytes(PS),
    "text": _text_page(),
    "short-tail": b"last page of a file\n" * 10,
    "one-byte": b"x",
}


@pytest.mark.parametrize("kind", list(PAGES))
@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name: str, kind: str) -> None:
    codec = codecs.get(name)
    page = PAGES[kind]
    blob = codec.compress(page)
    assert isinstance(blob, bytes)
    assert codec.decompress(blob, len(page)) == page


@pytest.mark.parametrize("name", COMPRESSING)
def test_compressible_pages_shrink(name: str) -> None:
    codec = codecs.get(name)
    assert len(codec.compress(PAGES["zero"])) < PS // 16
    assert len(codec.compress(PAGES["text"])) < PS // 2


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), page=st.binary(min_size=1, max_size=PS))
def test_round_trip_any_page(name: str, page: bytes) -> None:
    codec = codecs.get(name)
    assert codec.decompress(codec.compress(page), len(page)) == page


def test_ids_are_unique_nonzero_bytes() -> None:
    # id 0 marks a same-filled page in the pool; ids are stored in one byte.
    ids = [c.id for c in codecs.CODECS]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 256 for i in ids)
    assert {c.id: c for c in codecs.CODECS} == codecs.BY_ID
    assert DEFAULTS["compressor"] in codecs.BY_NAME  # the default codec (settings) exists


@pytest.mark.parametrize("name", COMPRESSING)
def test_truncated_blob_raises_codec_error(name: str) -> None:
    codec = codecs.get(name)
    blob = codec.compress(PAGES["text"])
    with pytest.raises(codecs.CodecError, match=name):
        codec.decompress(blob[: len(blob) // 2], PS)


@pytest.mark.parametrize("name", COMPRESSING)
def test_garbage_raises_codec_error(name: str) -> None:
    codec = codecs.get(name)
    with pytest.raises(codecs.CodecError):
        codec.decompress(b"\xff" * 64, PS)


@pytest.mark.parametrize("name", COMPRESSING)
def test_too_small_size_raises_codec_error(name: str) -> None:
    codec = codecs.get(name)
    blob = codec.compress(PAGES["text"])
    with pytest.raises(codecs.CodecError):
        codec.decompress(blob, PS - 1)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(COMPRESSING), blob=st.binary(max_size=300),
       flip=st.integers(min_value=0, max_value=10_000))
def test_corrupt_input_raises_only_codec_error(name: str, blob: bytes, flip: int) -> None:
    """Whatever the bytes, decompress returns bytes or raises CodecError, nothing else."""
    codec = codecs.get(name)
    good = bytearray(codec.compress(PAGES["text"]))
    good[flip % len(good)] ^= 0xFF
    for candidate in (blob, bytes(good)):
        try:
            out = codec.decompress(candidate, PS)
        except codecs.CodecError:
            continue
        assert isinstance(out, bytes) and len(out) == PS


@pytest.mark.parametrize(("name", "blob"), [
    ("lz4", b"\x00"),  # a valid block of nothing: not a 4 KiB page
    ("lz4", "text-page"),  # a whole page's blob, asked for one byte more
    ("lzo", "text-page"),
    ("none", "text-page"),
])
def test_decompress_returns_exactly_size_bytes(name: str, blob: bytes | str) -> None:
    """A blob that decodes to fewer bytes than the page is an error, not a short page
    (which a reader would take for the end of the file)."""
    codec = codecs.get(name)
    size = PS
    if blob == "text-page":
        blob, size = codec.compress(PAGES["text"]), PS + 1
    assert isinstance(blob, bytes)
    with pytest.raises(codecs.CodecError, match=f"{name}: decompressed"):
        codec.decompress(blob, size)


@pytest.mark.parametrize("text", ["lz4", " LZO ", "None", "LZ4\n"])
def test_get_normalises_names(text: str) -> None:
    assert codecs.get(text).name == text.strip().lower()


@pytest.mark.parametrize("bad", ["zstd", "", "lz4 lzo", "gzip", "lz"])
def test_get_unknown_name_lists_choices(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown compressor") as info:
        codecs.get(bad)
    for name in NAMES:
        assert name in str(info.value)

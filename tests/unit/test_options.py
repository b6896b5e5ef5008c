"""Unit tests of mount option parsing (pure core, no FUSE)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zcachefs import codecs
from zcachefs.options import (
    MountOptions,
    OptionError,
    parse_options,
    read_options_file,
)
from zcachefs.settings import CODEC_NAMES, OPTIONS


def test_defaults() -> None:
    o = parse_options([], ram=1 << 30)
    assert (o.memlimit, o.cache_size, o.page_size, o.compressor) == (
        (1 << 30) // 10, 8 << 20, 16384, "lz4")


def test_values_and_flags() -> None:
    o = parse_options(["threads=4,attr_timeout=0.5", "debug", "ro,fsname=data"])
    assert o.threads == 4 and o.attr_timeout == 0.5 and o.debug
    assert o.read_only and "fsname=data" in o.fuse


def test_allow_other_implies_default_permissions() -> None:
    o = parse_options(["allow_other"])
    assert o.allow_other and o.default_permissions


def test_generic_flags_dropped() -> None:
    o = parse_options(["defaults,nofail,_netdev,auto,noauto,user,users,rw,x-systemd.idle=1"])
    assert o == parse_options([])


@pytest.mark.parametrize("bad", ["nope", "threads", "threads=", "threads=-1", "threads=1e3",
                                 "threads=99999", "attr_timeout=nan", "attr_timeout=inf",
                                 "entry_timeout=x", "debug=maybe", "fsname", "max_read=0",
                                 "blksize=-4", "threads=\x00", "ünïcode=1", "memlimit=-1",
                                 "memlimit=1Q", "memlimit=2T", "memlimit=101%", "memlimit=",
                                 "cache_size=0", "page_size=3000", "page_size=128K",
                                 "compressor=zstd", "threshold=0", "threshold=17000",
                                 "accept_threshold_percent=0", "control=a/b", "control=..",
                                 "memlimit=1_000", "memlimit=nan%"])
def test_bad_options_raise_one_line(bad: str) -> None:
    with pytest.raises(OptionError) as exc:
        parse_options([bad])
    assert "\n" not in str(exc.value)


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_option_error(text: str) -> None:
    try:
        parse_options([text])
    except OptionError as exc:
        assert "\n" not in str(exc)


def test_options_file() -> None:
    text = "# comment\nthreads=3\n\n allow_other  # trailing\nnofail,_netdev\n"
    assert read_options_file(text) == ["threads=3", "allow_other", "nofail,_netdev"]
    o = parse_options(read_options_file(text))
    assert o.threads == 3 and o.allow_other


def test_every_option_has_doc_and_is_a_field() -> None:
    fields = set(MountOptions.__dataclass_fields__)
    for spec in OPTIONS:
        assert spec.doc and "\n" not in spec.doc
        assert spec.name in fields


def test_sizes_resolve_against_usable_ram() -> None:
    o = parse_options(["memlimit=25%,cache_size=1M"], ram=8 << 30)
    assert o.memlimit == 2 << 30 and o.cache_size == 1 << 20 and o.threshold == 8192
    o = parse_options(["page_size=64K,threshold=25%"], ram=8 << 30)
    assert o.page_size == 65536 and o.threshold == 16384
    assert parse_options([], ram=10 << 30).memlimit == 1 << 30  # 10%, as zcache


def test_every_field_is_an_option() -> None:
    """MountOptions has no defaults of its own: each field is a row of the table."""
    assert set(MountOptions.__dataclass_fields__) - {"fuse"} == {s.name for s in OPTIONS}


def test_codec_names_match_the_registry() -> None:
    """settings names the codecs without importing them (the client must not)."""
    assert tuple(codecs.BY_NAME) == CODEC_NAMES

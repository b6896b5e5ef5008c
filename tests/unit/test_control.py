"""Unit tests of the control surface: knobs, counters and their renderings (pure core)."""

from __future__ import annotations

import errno
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcachefs import handoff, stats
from zcachefs.cache import Cache
from zcachefs.control import RENDERED, ControlError, Controls
from zcachefs.settings import CONTROLS as KNOBS

PS = 4096
MiB = 1 << 20
RAM = 1 << 30
KNOB_BY_NAME = {k.name: k for k in KNOBS}
WRITABLE = [k.name for k in KNOBS if k.writable]
ACTIONS = ["drop_caches", "reset_stats"]
SIZES = ["memlimit", "cache_size", "threshold"]


def page(i: int) -> bytes:
    return (b"%08d" % i) * 64 + bytes(PS - 512)


def busy_controls() -> tuple[Controls, list[int]]:
    """Controls over a cache with pages in every tier and non-zero counters."""
    cache = Cache(PS, 8 * PS, 4 * MiB, PS // 2, "lz4")
    state = cache.file(b"f")
    cache.opened(state, (1, 1, 1))
    cache.fill(state, 0, [page(i) for i in range(20)] + [bytes(PS), b"\x07" * PS],
               state.version)
    handoff.compress_inline(cache, 8)
    for i in (0, 1, 15, 19, 50):
        cache.get(state.fid, i)
    calls: list[int] = []
    return Controls(cache, RAM, on_change=lambda: calls.append(1)), calls


@pytest.fixture(autouse=True)
def _keep_log_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture
def ctl() -> Controls:
    return busy_controls()[0]


def everything(c: Controls) -> dict[str, Any]:
    """All the state a control write could change."""
    cache, pool = c.cache, c.cache.pool
    return {
        "knobs": {k.name: c.read(k.name) for k in KNOBS},
        "stats": dict(c.snapshot()),
        "tier1": list(cache.tier1.items.items()),
        "pending": list(cache.pending.items.items()),
        "stored": set(cache.stored), "poor": {k: set(v) for k, v in cache.poor.items()},
        "pool": [(k, e.referenced, e.size) for k, e in pool.lru.items()],
        "pool_state": (pool.full, pool.memlimit, pool.pressure_cap, pool.threshold,
                       pool.accept_threshold_percent),
        "cache_state": (cache.capacity, cache.configured, cache.codec.name),
        "counters": (vars(cache.c).copy(), vars(pool.c).copy()),
        "log_level": logging.getLogger().level,
    }


# -- every knob round-trips ------------------------------------------------------------

ROUND_TRIPS = [
    ("memlimit", "2M", str(2 * MiB)),
    ("memlimit", " 3145728\n", "3145728"),
    ("memlimit", "1.5M", str(3 * MiB // 2)),
    ("memlimit", "64KiB", "65536"),
    ("memlimit", "10%", str(RAM // 10)),
    ("memlimit", "0", "0"),
    ("cache_size", "128K", "131072"),
    ("cache_size", "5000", "4096"),  # whole pages
    ("cache_size", "1%", str(RAM // 100 // PS * PS)),
    ("compressor", " LZO\n", "lzo"),
    ("compressor", "none", "none"),
    ("compressor", "lz4", "lz4"),
    ("threshold", "1K", "1024"),
    ("threshold", "25%", "1024"),  # of the page
    ("threshold", "4096", "4096"),
    ("accept_threshold_percent", "75%", "75"),
    ("accept_threshold_percent", "100", "100"),
    ("accept_threshold_percent", "1", "1"),
    ("log_level", "WARNING", "warning"),
    ("log_level", " debug ", "debug"),
    ("drop_caches", "1", "0"),
    ("reset_stats", "1\n", "0"),
]


def test_every_writable_knob_has_a_round_trip_case() -> None:
    assert {name for name, _, _ in ROUND_TRIPS} == set(WRITABLE)


@pytest.mark.parametrize(("name", "written", "normalised"), ROUND_TRIPS)
def test_knob_round_trips(name: str, written: str, normalised: str) -> None:
    c, calls = busy_controls()
    c.write(name, written.encode())
    assert c.read(name) == normalised + "\n"
    assert len(calls) == 1
    if name in ACTIONS:  # reads 0, runs on 1; 0 is accepted and does nothing, so a
        c.write(name, normalised.encode())  # saved getfattr -d can be restored
        return
    c.write(name, normalised.encode())  # the normalised form is a fixed point
    assert c.read(name) == normalised + "\n"
    assert len(calls) == 2


def test_knobs_reach_the_cache() -> None:
    c, _ = busy_controls()
    cache = c.cache
    c.write("memlimit", b"3M")
    c.write("cache_size", b"64K")
    c.write("compressor", b"lzo")
    c.write("threshold", b"1000")
    c.write("accept_threshold_percent", b"60")
    c.write("log_level", b"error")
    assert cache.pool.memlimit == 3 * MiB
    assert cache.capacity == cache.configured == 16
    assert cache.codec.name == "lzo"
    assert cache.pool.threshold == 1000
    assert cache.pool.accept_threshold_percent == 60
    assert logging.getLogger().level == logging.ERROR


def test_lowering_cache_size_evicts_to_pending() -> None:
    c, _ = busy_controls()
    c.write("cache_size", b"4096")
    assert len(c.cache.tier1) == 1 and c.cache.capacity == 1
    assert c.read("cache_size") == "4096\n"


def test_lowering_memlimit_then_shrink_gets_under() -> None:
    c, _ = busy_controls()
    pool = c.cache.pool
    for i in range(3000):
        assert pool.store(7, i, page(i), c.cache.codec)
    c.write("memlimit", b"1M")
    assert pool.memlimit == MiB and pool.full and pool.needs_shrink
    for _ in range(100):
        if not pool.needs_shrink:
            break
        pool.shrink()
    assert not pool.needs_shrink
    assert pool.mem_used_total <= pool.accept_level
    assert c.snapshot()["evicted_pages"] > 0


def test_drop_caches_empties_both_tiers(ctl: Controls) -> None:
    cache = ctl.cache
    assert cache.tier1 and cache.pending and cache.pool.lru
    ctl.write("drop_caches", b"1")
    assert not cache.tier1 and not cache.pending and not cache.pool.lru
    snap = ctl.snapshot()
    for name in ("cache_pages", "stored_pages", "zero_pages", "same_filled_pages",
                 "orig_data_size", "compr_data_size"):
        assert snap[name] == 0, name
    assert snap["mem_used_total"] == 0  # every slab unmapped


def test_reset_stats_zeroes_counters_not_gauges(ctl: Controls) -> None:
    before = ctl.snapshot()
    counters = [n for n, (kind, _) in stats.COUNTERS.items() if kind == "counter"]
    assert sum(before[n] for n in counters) > 0
    ctl.write("reset_stats", b"1")
    after = ctl.snapshot()
    for name, (kind, _) in stats.COUNTERS.items():
        if kind == "counter":
            assert after[name] == 0, name
        elif name == "mem_used_max":  # the peak starts again from the current level
            assert after[name] == after["mem_used_total"] <= before[name]
        elif name == "hit_ratio":  # a ratio of counters
            assert after[name] == 0
        else:
            assert after[name] == before[name], name
    # Counting goes on in the new counters.
    ctl.cache.get(ctl.cache.file(b"f").fid, 3)
    assert ctl.snapshot()["cache_hits"] + ctl.snapshot()["cache_misses"] == 1


# -- bad values change nothing ------------------------------------------------------------

COMMON_BAD = [b"\xff\xfe", b"1\x00", b"x" * 65, b"1" * 65, b" " * 10 + b"9" * 65]
BAD = {
    "memlimit": ["", "-1", "-1K", "1Q", "abc", "1e5", "99999999999999999999999", "2G",
                 "101%", "-5%", "nan%", "%", "10%%", "0x10", "1_000", "1..5", "K", "KiB",
                 "1 2", "inf"],
    "cache_size": ["", "0", "4095", "1", "-4096", "1Q", "2G", "0%", "1e9"],
    "compressor": ["", "zstd", "lz4 lzo", "gzip", "LZ4X"],
    "threshold": ["", "0", "4097", "0%", "101%", "-1", "1Q", "8K"],
    "accept_threshold_percent": ["", "0", "101", "-5", "50.5", "1e2", "ten", "%"],
    "log_level": ["", "verbose", "critical", "0", "warn"],
    "drop_caches": ["", "2", "yes", "11"],
    "reset_stats": ["", "2", "true"],
}


def test_every_writable_knob_has_bad_values() -> None:
    assert set(BAD) == set(WRITABLE)


def rejected(c: Controls, name: str, raw: bytes) -> None:
    """Writing raw to name raises ControlError and changes nothing at all."""
    before = everything(c)
    with pytest.raises(ControlError) as info:
        c.write(name, raw)
    assert info.value.errno == errno.EINVAL
    assert "\n" not in str(info.value) and name in str(info.value)
    assert everything(c) == before


@pytest.mark.parametrize(("name", "text"),
                         [(n, t) for n, values in BAD.items() for t in values])
def test_bad_value_is_rejected_and_changes_nothing(name: str, text: str) -> None:
    c, calls = busy_controls()
    rejected(c, name, text.encode())
    assert not calls


@pytest.mark.parametrize("raw", COMMON_BAD)
@pytest.mark.parametrize("name", WRITABLE)
def test_junk_is_rejected_by_every_knob(name: str, raw: bytes) -> None:
    c, calls = busy_controls()
    rejected(c, name, raw)
    assert not calls


@pytest.mark.parametrize("text", ["1.0e400", "1.5e308K", "9.e999", "1.0e20"])
@pytest.mark.parametrize("name", SIZES)
def test_float_overflow_is_a_control_error(name: str, text: str) -> None:
    """int(inf) raises OverflowError, which is not a ValueError."""
    c, _ = busy_controls()
    rejected(c, name, text.encode())


digits = st.text("0123456789", min_size=1, max_size=20)
bad_values = st.one_of(
    # binary junk: never valid UTF-8 (0xff cannot appear in UTF-8)
    st.binary(max_size=80).map(lambda b: b + b"\xff"),
    # huge strings
    st.text("0123456789kKmMgG%. ", min_size=65, max_size=300)
    .filter(lambda t: len(t.strip()) > 64).map(str.encode),
    # negative numbers, with or without a unit
    st.tuples(digits, st.sampled_from(["", "K", "M", "%", "KiB"]))
    .map(lambda t: f"-{int(t[0]) + 1}{t[1]}".encode()),
    # overflow: more than 2**50 bytes, more than 100%
    st.integers(1 << 51, 10**60).map(lambda n: str(n).encode()),
    st.integers(1 << 51, 10**60).map(lambda n: f"{n}%".encode()),
    # units that do not exist
    st.tuples(digits, st.sampled_from("QqXxZzPpJjWwYy")).map(lambda t: (t[0] + t[1]).encode()),
    # NUL bytes anywhere
    st.tuples(st.text("0123456789", max_size=5), st.text("0123456789", max_size=5))
    .map(lambda t: f"{t[0]}\x00{t[1]}".encode()),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(WRITABLE), raw=bad_values)
def test_generated_bad_values_change_nothing(ctl: Controls, name: str, raw: bytes) -> None:
    rejected(ctl, name, raw)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(WRITABLE),
       raw=st.one_of(st.binary(max_size=70),
                     st.text(st.characters(blacklist_categories=["Cs"]), max_size=70)
                     .map(str.encode),
                     st.from_regex(r"\A-?[0-9]{0,3}\.?[0-9]{0,3}(e[+-]?[0-9]{1,4})?"
                                   r"[kmgtKMGT]?(i?[bB])?%?\Z").map(str.encode)))
def test_any_write_is_all_or_nothing(ctl: Controls, name: str, raw: bytes) -> None:
    """Whatever is written: applied (and then a fixed point), or ControlError and no
    change; never another exception."""
    before = everything(ctl)
    try:
        ctl.write(name, raw)
    except ControlError:
        assert everything(ctl) == before
        return
    shown = ctl.read(name)
    if name not in ACTIONS:
        ctl.write(name, shown.encode())
        assert ctl.read(name) == shown


# -- names ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["page_size", "hits", "mem_used_total", "hit_ratio",
                                  "memlimit_effective", *RENDERED])
def test_read_only_names_raise_read_only(ctl: Controls, name: str) -> None:
    before = everything(ctl)
    for raw in (b"1", b"4096", b"\xff"):
        with pytest.raises(ControlError) as info:  # read-only: EROFS, as the xattr says
            ctl.write(name, raw)
        assert info.value.errno == errno.EROFS
    assert everything(ctl) == before
    assert not Controls.writable(name) and Controls.exists(name)
    assert ctl.read(name)  # but it reads


@pytest.mark.parametrize("name", ["nope", "", "MEMLIMIT", "memlimit ", "../memlimit",
                                  "user.zcachefs.memlimit", "stats.txt"])
def test_unknown_names_raise_unknown_name(ctl: Controls, name: str) -> None:
    before = everything(ctl)
    with pytest.raises(ControlError) as info:  # unknown: ENOATTR (ENODATA), as the xattr says
        ctl.write(name, b"1")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(ControlError) as info:
        ctl.read(name)
    assert info.value.errno == errno.ENODATA
    assert not Controls.exists(name) and not Controls.writable(name)
    assert everything(ctl) == before


def test_names_lists_everything_once() -> None:
    names = Controls.names()
    assert len(names) == len(set(names))
    assert names[:len(KNOBS)] == [k.name for k in KNOBS]
    assert set(names) == set(KNOB_BY_NAME) | set(stats.COUNTERS) | set(RENDERED)
    assert all(Controls.exists(n) for n in names)
    assert [n for n in names if Controls.writable(n)] == WRITABLE


def test_docs_are_one_line() -> None:
    for knob in KNOBS:
        assert knob.ctl_doc and "\n" not in knob.ctl_doc, knob.name
    for name, (kind, doc) in stats.COUNTERS.items():
        assert kind in ("counter", "gauge"), name
        assert doc and "\n" not in doc and "\\" not in doc, name


# -- renderings ------------------------------------------------------------------------

def test_stats_has_one_name_value_line_per_counter(ctl: Controls) -> None:
    text = ctl.read("stats")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert [line.split(" ")[0] for line in lines] == list(stats.COUNTERS)
    snap = ctl.snapshot()
    for line in lines:
        name, value = line.split(" ")
        assert float(value) == pytest.approx(snap[name], abs=1e-4), name
    assert snap["hits"] > 0 and snap["stored_pages"] > 0  # a busy cache, not zeros


def test_single_counter_reads_match_stats(ctl: Controls) -> None:
    table = dict(line.split(" ") for line in ctl.read("stats").splitlines())
    for name in stats.COUNTERS:
        assert ctl.read(name) == table[name] + "\n", name


def test_stats_json_parses(ctl: Controls) -> None:
    data = json.loads(ctl.read("stats.json"))
    assert list(data) == list(stats.COUNTERS)
    assert data == ctl.snapshot()
    assert all(isinstance(v, int | float) for v in data.values())


METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def test_stats_prom_is_valid_prometheus_text(ctl: Controls) -> None:
    text = ctl.read("stats.prom")
    assert text.endswith("\n")
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert name not in helps and name not in samples and doc
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name not in types and name not in samples
            assert kind in ("counter", "gauge")
            types[name] = kind
        else:
            name, value = line.split(" ")
            assert METRIC.fullmatch(name), name
            assert name in helps and name in types, f"{name} without HELP/TYPE before it"
            assert name not in samples
            samples[name] = float(value)
    assert set(samples) == set(helps) == set(types)
    # One metric per counter, in the table's order; counters end in _total, only they do.
    snap = ctl.snapshot()
    assert len(samples) == len(stats.COUNTERS)
    for metric, (name, (kind, doc)) in zip(samples, stats.COUNTERS.items(), strict=True):
        assert types[metric] == kind and helps[metric] == doc, name
        assert metric.startswith("zcachefs_")
        if kind == "counter":
            assert metric == f"zcachefs_{name}_total"
        else:
            assert not metric.endswith("_total"), metric
        assert samples[metric] == pytest.approx(snap[name], abs=1e-4)


def test_prometheus_gauges_do_not_end_in_total(ctl: Controls) -> None:
    """promtool check metrics: non-counter metrics should not have "_total" suffix."""
    gauges = re.findall(r"^# TYPE (\S+) gauge$", ctl.read("stats.prom"), re.M)
    assert len(gauges) == sum(kind == "gauge" for kind, _ in stats.COUNTERS.values())
    assert [g for g in gauges if g.endswith("_total")] == []

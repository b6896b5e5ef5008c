"""The pure helpers of the `zcachefs` client (zcachefs/client.py, live.py, mounts.py):
sizes, tables, mountinfo, merged Prometheus text, the live view's fields; its help
texts; and that it loads none of the engine's FUSE, trio or psutil. No mount (the
commands against real mounts: tests/mount/test_stat_cli.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.client import parse_prometheus, zcachefs
from zcachefs import client, live, mounts, stats
from zcachefs.settings import CONTROLS as KNOBS

PKG = Path(client.__file__).resolve().parent
CLIENT_MODULES = ("client.py", "live.py", "mounts.py")


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1K"), (1536, "1.5K"),
    (1019904, "996K"), (761106, "743.3K"), (8 << 20, "8M"), (3 << 30, "3G"),
    (int(1.25 * (1 << 40)), "1.2T"), (5000 << 40, "5000T"),
])
def test_human_sizes(n: int, text: str) -> None:
    assert stats.human(n) == text


def test_table_aligns_and_formats() -> None:
    full = {"memlimit": 8 << 20, "mem_used_total": 1019904, "stored_pages": 768,
            "orig_data_size": 3 << 20, "compr_data_size": 761106,
            "compression_ratio": 3.0843, "hit_ratio": 0.99609, "cache_pages": 256}
    out = client.table([("/srv/a b", "lz4", full), ("/m", "lzo", {"memlimit": 1024})])
    lines = out.splitlines()
    assert lines[1].split() == ["/srv/a", "b", "lz4", "8M", "996K", "768", "3M", "743.3K",
                                "3.08", "99.6%", "256"]
    assert lines[2].split() == ["/m", "lzo", "1K", "-", "-", "-", "-", "-", "-", "-"]
    assert len({len(line) for line in lines[:2]}) == 1  # right-aligned to one width


def test_parse_mountinfo_unescapes_and_takes_the_top_mount() -> None:
    text = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:50 / /mnt/with\\040space rw,nosuid - fuse.zcachefs /src rw,user_id=0\n"
        "41 22 0:51 / /stacked rw - fuse.zcachefs /src rw\n"
        "42 41 0:52 / /stacked rw master:3 - tmpfs tmpfs rw\n"
        "43 22 0:53 / /opt/x rw - fuse.other /src rw\n")
    assert mounts.parse_mountinfo(text) == {
        "/": "ext4", "/mnt/with space": "fuse.zcachefs", "/stacked": "tmpfs",
        "/opt/x": "fuse.other"}


def test_merge_prometheus_labels_and_groups_families() -> None:
    a = "# HELP m_total doc\n# TYPE m_total counter\nm_total 1\n# HELP g g\n# TYPE g gauge\ng 2\n"
    b = a.replace(" 1\n", " 10\n").replace("g 2", "g 20")
    merged = client.merge_prometheus([("/a", a), ('/b"\\', b)])
    fams = parse_prometheus(merged)
    assert fams["m_total"]["samples"] == [('{mountpoint="/a"}', 1.0),
                                          ('{mountpoint="/b\\"\\\\"}', 10.0)]
    assert fams["g"]["samples"] == [('{mountpoint="/a"}', 2.0),
                                    ('{mountpoint="/b\\"\\\\"}', 20.0)]
    assert merged.count("# HELP m_total") == 1


def test_the_client_imports_no_fuse_trio_psutil() -> None:
    names: set[str] = set()
    for node in (n for m in CLIENT_MODULES for n in ast.walk(ast.parse((PKG / m).read_text()))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    assert not names & {"pyfuse3", "trio", "psutil", ".fs", ".mount", ".memory", ".pressure"}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, zcachefs.cli, zcachefs.client; "
         "print(sorted(m for m in ('pyfuse3', 'trio', 'psutil') if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


# -- help -------------------------------------------------------------------------------


def test_main_help_mentions_the_subcommands() -> None:
    r = zcachefs("--help")
    assert r.returncode == 0
    for sub in ("zcachefs stat", "zcachefs set MOUNTPOINT NAME=VALUE", "zcachefs drop"):
        assert sub in r.stdout, sub
    assert "SOURCE" in r.stdout  # the mount usage is unchanged
    r = zcachefs()
    assert r.returncode == 2 and "SOURCE" in r.stderr


def test_stat_help_lists_every_counter_with_its_description() -> None:
    r = zcachefs("stat", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for name, (kind, doc) in stats.COUNTERS.items():
        assert f" {name} {' '.join(doc.split())} [{kind}]" in flat, name
    for col in client.COLUMNS:
        assert f" {col.title} {col.counter}" in flat


def test_set_help_lists_every_knob() -> None:
    r = zcachefs("set", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for k in KNOBS:
        assert f" {k.name} [" in flat and " ".join(k.ctl_doc.split()) in flat, k.name


# -- the live view's fields ----------------------------------------------------------


BASE = {"cache_hits": 100, "cache_misses": 50, "hits": 30, "misses": 20,
        "backing_read_bytes": 1 << 20, "mem_used_total": 2 << 20, "memlimit": 8 << 20,
        "memlimit_effective": 8 << 20, "compression_ratio": 2.5, "hit_ratio": 0.5,
        "pressure_shrinks": 0, "reclaimed_pages": 0}


def test_live_fields_are_rates_of_the_interval() -> None:
    first = live.live_fields(BASE, None, 0.0)
    assert first["HITS/s"] == first["MISSES/s"] == first["BACKING"] == first["HIT%"] == "-"
    assert first["TOTAL%"] == "50.0" and first["RATIO"] == "2.50" and first["RAW"] == "-"
    assert first["POOL"] == "2M" and first["LIMIT"] == "8M (25%)"
    assert first["PRESSURE"] == "ok"
    cur = {**BASE, "cache_hits": 300, "cache_misses": 150, "hits": 50, "misses": 100,
           "backing_read_bytes": (1 << 20) + 4_000_000, "raw_pages": 7}
    f = live.live_fields(cur, BASE, 2.0)
    # 200 tier-1 hits + 20 pool hits of 300 lookups; 80 misses; 4 MB read, in 2 s
    assert (f["HITS/s"], f["MISSES/s"], f["HIT%"]) == ("110", "40", "73.3")
    assert f["BACKING"] == "2.0MB/s" and f["RAW"] == "7"
    idle = live.live_fields(cur, cur, 2.0)
    assert idle["HIT%"] == "-" and idle["HITS/s"] == "0"
    # reset_stats between two readings: the new values count from zero
    reset = {**BASE, "cache_hits": 10, "hits": 0, "cache_misses": 0, "misses": 4}
    assert live.live_fields(reset, cur, 1.0)["HITS/s"] == "10"
    # a daemon without some counters: '-' where they are missing, no crash
    assert set(live.live_fields({"memlimit": 1 << 20}, {}, 1.0).values()) <= {
        "-", "1M", "ok"}


def test_pressure_state() -> None:
    assert live.pressure_state(BASE, None) == "ok"
    low = {**BASE, "memlimit_effective": 6 << 20}
    assert live.pressure_state(low, BASE) == "limited:6M"
    shrunk = {**low, "pressure_shrinks": 2, "reclaimed_pages": 5}
    assert live.pressure_state(shrunk, low) == "shrinking:6M+reclaimed:5"
    assert live.pressure_state({**BASE, "pressure_shrinks": 1}, BASE) == "shrinking"


def test_live_table_and_lines() -> None:
    f = live.live_fields(BASE, None, 0.0)
    out = live.live_table([("/a", f), ("/very/long/mountpoint", "the daemon is gone")])
    lines = out.splitlines()
    assert lines[0].split() == list(live.LIVE_TITLES)
    assert lines[1].startswith("/a ") and lines[1].endswith(" ok")
    assert lines[2] == "/very/long/mountpoint the daemon is gone"
    line = live.live_line("T", "/a", f)
    assert line == ("T /a hit%=- total%=50.0 hits/s=- misses/s=- backing=- pool=2M "
                    "limit=8M(25%) ratio=2.50 raw_pages=- pressure=ok\n")

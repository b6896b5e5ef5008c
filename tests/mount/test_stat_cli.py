"""`zcachefs stat`, `zcachefs set` and `zcachefs drop`: the client commands, run as a
user would run them (a subprocess), against real mounts, other file systems, dead and
stuck mounts, and as another user; plus their pure helpers."""

from __future__ import annotations

import ast
import functools
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.test_control_mount import (
    COUNTER_NAMES,
    KNOB_NAMES,
    OPTS,
    ctl,
    needs_setpriv,
    parse_prometheus,
    poll,
    settle,
    state,
    stats_json,
    warm_up,
    zcachefs,
)
from tests.support.mounting import Mount
from zcachefs import control, statcli, stats
from zcachefs.control import ACTIONS, KNOBS

PKG = Path(statcli.__file__).resolve().parent


def rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["MOUNTPOINT", "ALGORITHM", *(c.title for c in statcli.COLUMNS)]
    return [line.split() for line in lines[1:]]


# -- pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1K"), (1536, "1.5K"),
    (1019904, "996K"), (761106, "743.3K"), (8 << 20, "8M"), (3 << 30, "3G"),
    (int(1.25 * (1 << 40)), "1.2T"), (5000 << 40, "5000T"),
])
def test_human_sizes(n: int, text: str) -> None:
    assert statcli.human(n) == text


def test_table_aligns_and_formats() -> None:
    full = {"memlimit": 8 << 20, "mem_used_total": 1019904, "stored_pages": 768,
            "orig_data_size": 3 << 20, "compr_data_size": 761106,
            "compression_ratio": 3.0843, "hit_ratio": 0.99609, "cache_pages": 256}
    out = statcli.table([("/srv/a b", "lz4", full), ("/m", "lzo", {"memlimit": 1024})])
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
    assert statcli.parse_mountinfo(text) == {
        "/": "ext4", "/mnt/with space": "fuse.zcachefs", "/stacked": "tmpfs",
        "/opt/x": "fuse.other"}


def test_merge_prometheus_labels_and_groups_families() -> None:
    a = "# HELP m_total doc\n# TYPE m_total counter\nm_total 1\n# HELP g g\n# TYPE g gauge\ng 2\n"
    b = a.replace(" 1\n", " 10\n").replace("g 2", "g 20")
    merged = statcli.merge_prometheus([("/a", a), ('/b"\\', b)])
    fams = parse_prometheus(merged)
    assert fams["m_total"]["samples"] == [('{mountpoint="/a"}', 1.0),
                                          ('{mountpoint="/b\\"\\\\"}', 10.0)]
    assert fams["g"]["samples"] == [('{mountpoint="/a"}', 2.0),
                                    ('{mountpoint="/b\\"\\\\"}', 20.0)]
    assert merged.count("# HELP m_total") == 1


def test_the_client_imports_no_fuse_trio_psutil() -> None:
    tree = ast.parse((PKG / "statcli.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    assert not names & {"pyfuse3", "trio", "psutil", ".fs", ".mount", ".memory", ".pressure"}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, zcachefs.cli, zcachefs.statcli; "
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
    for col in statcli.COLUMNS:
        assert f" {col.title} {col.counter}" in flat


def test_set_help_lists_every_knob() -> None:
    r = zcachefs("set", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for k in KNOBS:
        assert f" {k.name} [" in flat and " ".join(k.doc.split()) in flat, k.name


# -- stat -------------------------------------------------------------------------------


@pytest.fixture
def two(mount_factory: Callable[..., Mount]) -> tuple[Mount, Mount]:
    a = mount_factory(options=OPTS)
    b = mount_factory(options=OPTS.replace("memlimit=8M", "memlimit=16M") + ",compressor=lzo")
    warm_up(a)
    return a, b


def test_stat_prints_one_row_per_mount(two: tuple[Mount, Mount]) -> None:
    a, b = two
    sa, sb = settle(a), settle(b)
    r = zcachefs("stat", str(a.mountpoint), str(b.mountpoint))
    assert r.returncode == 0 and not r.stderr, r.stderr
    got = rows(r.stdout)
    h = statcli.human
    assert got[0] == [str(a.mountpoint), "lz4", "8M", h(sa["mem_used_total"]),
                      str(int(sa["stored_pages"])), h(sa["orig_data_size"]),
                      h(sa["compr_data_size"]), f"{sa['compression_ratio']:.2f}",
                      f"{100 * sa['hit_ratio']:.1f}%", str(int(sa["cache_pages"]))]
    assert int(got[0][4]) > 0 and float(got[0][7]) > 1 and got[0][8] != "0.0%"
    assert got[1] == [str(b.mountpoint), "lzo", "16M", h(sb["mem_used_total"]), "0", "0B",
                      "0B", "0.00", "0.0%", "0"]
    # Without a mountpoint: every zcachefs mount. The machine may hold others, even a
    # dead one left by a crashed run: that one is reported (exit 1), ours are shown.
    r = zcachefs("stat")
    ours = (str(a.mountpoint), str(b.mountpoint))
    assert r.returncode == 0 or (r.returncode == 1 and r.stderr), r.stderr
    assert not any(f"{p}:" in r.stderr for p in ours), r.stderr
    shown = {row[0] for row in rows(r.stdout)}
    assert {str(a.mountpoint), str(b.mountpoint)} <= shown


def test_stat_json_has_every_counter(two: tuple[Mount, Mount]) -> None:
    a, b = two
    sa, sb = settle(a), settle(b)
    r = zcachefs("stat", "--json", str(a.mountpoint), str(b.mountpoint) + "/")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o.pop("mountpoint") for o in objs] == [str(a.mountpoint), str(b.mountpoint)]
    assert objs == [sa, sb]
    assert list(objs[0]) == COUNTER_NAMES


def test_stat_prometheus_merges_mounts_with_a_label(two: tuple[Mount, Mount]) -> None:
    a, b = two
    sa, sb = settle(a), settle(b)
    r = zcachefs("stat", "--prometheus", str(a.mountpoint), str(b.mountpoint))
    assert r.returncode == 0, r.stderr
    fams = parse_prometheus(r.stdout)
    assert len(fams) == len(COUNTER_NAMES)
    for name in stats.COUNTERS:
        fam = fams[control.metric_name(name)]
        assert fam["samples"] == [(f'{{mountpoint="{a.mountpoint}"}}', sa[name]),
                                  (f'{{mountpoint="{b.mountpoint}"}}', sb[name])], name


def test_stat_relative_path_and_symlinked_parent(zmount: Mount, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(zmount.mountpoint.parent)
    for path, cwd in ((zmount.mountpoint.name, zmount.mountpoint.parent),
                      (str(link / zmount.mountpoint.name), "/")):
        r = subprocess.run([sys.executable, "-m", "zcachefs", "stat", "--json", path],
                           capture_output=True, text=True, cwd=cwd, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["mountpoint"] == str(zmount.mountpoint)


def shown_thrice(out: Path, marker: str) -> bool:
    return out.read_text().count(marker) >= 3


def test_stat_watch_repeats_until_interrupted(zmount: Mount, tmp_path: Path) -> None:
    out = tmp_path / "out"
    live = f"{zmount.mountpoint} hit%="  # the live view, one line per interval
    for fmt, marker in (([], live), (["--json"], '"mountpoint"'), (["--prometheus"], "# HELP")):
        with open(out, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zcachefs", "stat", *fmt, "--watch", "0.1",
                 str(zmount.mountpoint)], stdout=f, stderr=subprocess.PIPE, text=True)
        try:
            assert poll(functools.partial(shown_thrice, out, marker)), out.read_text()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_stat_refuses_what_is_not_a_zcachefs_mount(tmp_path: Path) -> None:
    cases = {str(tmp_path): "not a zcachefs mount (nothing is mounted there)",
             str(tmp_path / "missing"): "not a zcachefs mount (nothing is mounted there)",
             "/proc": "not a zcachefs mount (it is proc)"}
    for path, message in cases.items():
        for cmd in (["stat"], ["stat", "--json"], ["drop"]):
            r = zcachefs(*cmd, path)
            assert r.returncode == 1 and r.stdout == "", (cmd, path)
            assert r.stderr == f"zcachefs: {path}: {message}\n", r.stderr
        r = zcachefs("set", path, "memlimit=1M")
        assert r.returncode == 1 and r.stderr == f"zcachefs: {path}: {message}\n"


def test_one_bad_path_does_not_hide_the_good_ones(zmount: Mount, tmp_path: Path) -> None:
    r = zcachefs("stat", str(tmp_path), str(zmount.mountpoint))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "not a zcachefs mount" in r.stderr
    assert [row[0] for row in rows(r.stdout)] == [str(zmount.mountpoint)]


def test_a_stuck_mount_of_another_type_is_never_touched(
        mount_factory: Callable[..., Mount]) -> None:
    """The check happens in mountinfo: a stat() of this mount would hang."""
    m = mount_factory(options="subtype=other")
    os.kill(m.pid, signal.SIGSTOP)
    try:
        r = zcachefs("stat", str(m.mountpoint), timeout=30)
        assert r.returncode == 1
        assert r.stderr == f"zcachefs: {m.mountpoint}: not a zcachefs mount (it is fuse.other)\n"
    finally:
        os.kill(m.pid, signal.SIGCONT)


def test_a_dead_mount_is_one_line(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    os.kill(m.pid, signal.SIGKILL)
    assert m.proc is not None
    m.proc.wait(timeout=30)
    mp = str(m.mountpoint)
    for args in (["stat", mp], ["drop", mp], ["set", mp, "memlimit=1M"]):
        r = zcachefs(*args, timeout=30)
        assert r.returncode == 1, args
        assert r.stderr.count("\n") == 1 and "not connected" in r.stderr, r.stderr


def test_control_name_option(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS + ",control=.zc")
    r = zcachefs("stat", str(m.mountpoint))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "pass --control NAME" in r.stderr
    r = zcachefs("stat", "--control", ".zc", "--json", str(m.mountpoint))
    assert r.returncode == 0 and json.loads(r.stdout)["memlimit"] == 8 << 20
    r = zcachefs("set", "--control", ".zc", str(m.mountpoint), "memlimit=6M")
    assert r.returncode == 0, r.stderr
    assert stats_json(m, ".zc")["memlimit"] == 6 << 20
    r = zcachefs("drop", "--control", ".zc", str(m.mountpoint))
    assert r.returncode == 0, r.stderr
    for bad in ("", "a/b", ".."):
        r = zcachefs("stat", "--control", bad, str(m.mountpoint))
        assert r.returncode == 2 and r.stderr.count("\n") == 1


# -- set and drop -----------------------------------------------------------------------


def test_set_several_knobs_and_report_each_error(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    r = zcachefs("set", str(m.mountpoint), "memlimit=6M", "bogus=1", "page_size=1",
                 "threshold=0", "hits=2", "stats.json=1", "cache_size=2M", "compressor=lzo")
    assert r.returncode == 1 and r.stdout == ""
    mp = m.mountpoint
    assert r.stderr.splitlines() == [
        f"zcachefs: {mp}: bogus: unknown name (see zcachefs set --help)",
        f"zcachefs: {mp}: page_size: read-only",
        f"zcachefs: {mp}: threshold=0: invalid value (threshold: pages compressing to more "
        "bytes are stored raw (free room only)); the daemon log says why",
        f"zcachefs: {mp}: hits: read-only",
        f"zcachefs: {mp}: stats.json: read-only",
    ]
    # The good ones were applied, in order, around the bad ones.
    assert ctl(m, "memlimit").read_text() == "6291456\n"
    assert ctl(m, "cache_size").read_text() == "2097152\n"
    assert ctl(m, "compressor").read_text() == "lzo\n"
    assert ctl(m, "threshold").read_text() == "2048\n"
    r = zcachefs("set", str(m.mountpoint), "log_level=debug", "reset_stats=1")
    assert r.returncode == 0 and r.stdout == r.stderr == ""
    assert ctl(m, "log_level").read_text() == "debug\n"


@pytest.mark.parametrize("args", [["memlimit"], ["=1"], [], ["memlimit=1M", "x"]])
def test_set_usage_errors(zmount: Mount, args: list[str]) -> None:
    before = state(zmount)
    r = zcachefs("set", str(zmount.mountpoint), *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert state(zmount) == before


def test_drop_empties_the_caches(two: tuple[Mount, Mount]) -> None:
    a, b = two
    assert settle(a)["stored_pages"] > 0
    r = zcachefs("drop", str(a.mountpoint), str(b.mountpoint))
    assert r.returncode == 0 and r.stdout == r.stderr == ""
    s = stats_json(a)
    assert s["stored_pages"] == s["cache_pages"] == 0
    assert poll(lambda: "control: drop_caches done" in a.read_log())


# -- another user -----------------------------------------------------------------------


@needs_setpriv
def test_another_user_can_stat_but_not_set(mount_factory: Callable[..., Mount],
                                           world_tmp: Path) -> None:
    (world_tmp / "src").mkdir()
    (world_tmp / "mnt").mkdir()
    m = mount_factory(source=world_tmp / "src", mountpoint=world_tmp / "mnt",
                      options=OPTS + ",allow_other")
    warm_up(m)
    s = settle(m)
    before = state(m)
    r = zcachefs("stat", str(m.mountpoint), user=True)
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout)[0][:5] == [str(m.mountpoint), "lz4", "8M",
                                     statcli.human(s["mem_used_total"]),
                                     str(int(s["stored_pages"]))]
    r = zcachefs("stat", "--json", str(m.mountpoint), user=True)
    assert r.returncode == 0 and json.loads(r.stdout) == {"mountpoint": str(m.mountpoint), **s}
    for args in (["set", str(m.mountpoint), "memlimit=4M"], ["drop", str(m.mountpoint)],
                 ["set", str(m.mountpoint), "reset_stats=1"]):
        r = zcachefs(*args, user=True)
        assert r.returncode == 1, args
        assert r.stderr.count("\n") == 1 and "permission denied" in r.stderr, r.stderr
    assert state(m) == before


@needs_setpriv
def test_without_allow_other_another_user_gets_one_line(
        mount_factory: Callable[..., Mount], world_tmp: Path) -> None:
    (world_tmp / "src").mkdir()
    (world_tmp / "mnt").mkdir()
    m = mount_factory(source=world_tmp / "src", mountpoint=world_tmp / "mnt", options=OPTS)
    r = zcachefs("stat", str(m.mountpoint), user=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "permission denied" in r.stderr, r.stderr


def test_every_knob_and_counter_reachable_from_the_client(zmount: Mount) -> None:
    """The client names exactly what the mount serves (nothing lost in between)."""
    got = json.loads(zcachefs("stat", "--json", str(zmount.mountpoint)).stdout)
    assert set(got) - {"mountpoint"} == set(COUNTER_NAMES)
    for knob in KNOBS:
        if knob.parse is None:
            continue
        value = "1" if knob.name in ACTIONS else ctl(zmount, knob.name).read_text().strip()
        r = zcachefs("set", str(zmount.mountpoint), f"{knob.name}={value}")
        assert r.returncode == 0, (knob.name, r.stderr)
    assert {k.name for k in KNOBS} == set(KNOB_NAMES)


def test_watch_needs_a_positive_interval(zmount: Mount) -> None:
    for bad in ("0", "-1", "x", "nan", "inf"):
        r = zcachefs("stat", "--watch", bad, str(zmount.mountpoint))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (bad, r.stderr)


# -- the live view (stat --watch, top) -------------------------------------------------

BASE = {"cache_hits": 100, "cache_misses": 50, "hits": 30, "misses": 20,
        "backing_read_bytes": 1 << 20, "mem_used_total": 2 << 20, "memlimit": 8 << 20,
        "memlimit_effective": 8 << 20, "compression_ratio": 2.5, "hit_ratio": 0.5,
        "pressure_shrinks": 0, "reclaimed_pages": 0}


def test_live_fields_are_rates_of_the_interval() -> None:
    first = statcli.live_fields(BASE, None, 0.0)
    assert first["HITS/s"] == first["MISSES/s"] == first["BACKING"] == first["HIT%"] == "-"
    assert first["TOTAL%"] == "50.0" and first["RATIO"] == "2.50" and first["RAW"] == "-"
    assert first["POOL"] == "2M" and first["LIMIT"] == "8M (25%)"
    assert first["PRESSURE"] == "ok"
    cur = {**BASE, "cache_hits": 300, "cache_misses": 150, "hits": 50, "misses": 100,
           "backing_read_bytes": (1 << 20) + 4_000_000, "raw_pages": 7}
    f = statcli.live_fields(cur, BASE, 2.0)
    # 200 tier-1 hits + 20 pool hits of 300 lookups; 80 misses; 4 MB read, in 2 s
    assert (f["HITS/s"], f["MISSES/s"], f["HIT%"]) == ("110", "40", "73.3")
    assert f["BACKING"] == "2.0MB/s" and f["RAW"] == "7"
    idle = statcli.live_fields(cur, cur, 2.0)
    assert idle["HIT%"] == "-" and idle["HITS/s"] == "0"
    # reset_stats between two readings: the new values count from zero
    reset = {**BASE, "cache_hits": 10, "hits": 0, "cache_misses": 0, "misses": 4}
    assert statcli.live_fields(reset, cur, 1.0)["HITS/s"] == "10"
    # a daemon without some counters: '-' where they are missing, no crash
    assert set(statcli.live_fields({"memlimit": 1 << 20}, {}, 1.0).values()) <= {
        "-", "1M", "ok"}


def test_pressure_state() -> None:
    assert statcli.pressure_state(BASE, None) == "ok"
    low = {**BASE, "memlimit_effective": 6 << 20}
    assert statcli.pressure_state(low, BASE) == "limited:6M"
    shrunk = {**low, "pressure_shrinks": 2, "reclaimed_pages": 5}
    assert statcli.pressure_state(shrunk, low) == "shrinking:6M+reclaimed:5"
    assert statcli.pressure_state({**BASE, "pressure_shrinks": 1}, BASE) == "shrinking"


def test_live_table_and_lines() -> None:
    f = statcli.live_fields(BASE, None, 0.0)
    out = statcli.live_table([("/a", f), ("/very/long/mountpoint", "the daemon is gone")])
    lines = out.splitlines()
    assert lines[0].split() == list(statcli.LIVE_TITLES)
    assert lines[1].startswith("/a ") and lines[1].endswith(" ok")
    assert lines[2] == "/very/long/mountpoint the daemon is gone"
    line = statcli.live_line("T", "/a", f)
    assert line == ("T /a hit%=- total%=50.0 hits/s=- misses/s=- backing=- pool=2M "
                    "limit=8M(25%) ratio=2.50 raw_pages=- pressure=ok\n")


class PtyReader:
    """Everything a child writes to its pseudo-terminal, collected by a thread."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def live_hits_per_second(frame: str, mountpoint: str) -> int | None:
    for line in frame.splitlines():
        cells = line.split()
        if cells and cells[0] == mountpoint and len(cells) > 4 and cells[3] != "-":
            return int(cells[3].replace(",", ""))
    return None


def test_live_view_redraws_in_place_on_a_terminal(mount_factory: Callable[..., Mount]
                                                   ) -> None:
    """In a pseudo-terminal: the screen is redrawn in place (cursor home + clear), the
    mount's row shows the hits that reads through it cause, Ctrl-C exits 0 and gives
    the cursor back."""
    zmount = mount_factory(options="direct_io")  # every read reaches the daemon
    data = os.urandom(64 << 10) * 16  # 1 MiB, pages that compress
    (zmount.source / "f").write_bytes(data)
    mp = str(zmount.mountpoint)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "zcachefs", "stat", "--watch", "0.2", mp],
                            stdin=slave, stdout=slave, stderr=slave, cwd="/",
                            env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    reader = PtyReader(master)
    try:
        def hits_shown() -> bool:
            # direct_io: every read reaches the daemon; the second and later are hits
            assert (zmount.mountpoint / "f").read_bytes() == data
            frames = reader.text().split(statcli.HOME_CLEAR)
            return len(frames) > 3 and any((live_hits_per_second(f, mp) or 0) > 0
                                           for f in frames)

        assert poll(hits_shown, timeout=30), reader.text()[-2000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.thread.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = reader.text()
    assert text.startswith(statcli.HIDE_CURSOR)
    assert text.count(statcli.HOME_CLEAR) >= 3
    assert statcli.SHOW_CURSOR in text.rsplit(statcli.HOME_CLEAR, 1)[1]
    assert "Traceback" not in text
    last = text.rsplit(statcli.HOME_CLEAR, 1)[1]
    assert re.search(r"^MOUNTPOINT +HIT% +TOTAL% +HITS/s", last, re.M), last
    row = next(line for line in last.splitlines() if line.startswith(mp + " "))
    assert row.split()[-1] == "ok"  # pressure=off: the limit never moves


def test_top_is_the_live_view_one_line_per_interval(zmount: Mount, tmp_path: Path) -> None:
    out = tmp_path / "out"
    mp = str(zmount.mountpoint)
    for cmd in (["top", "-n", "0.1", mp], ["stat", "--watch", mp], ["top", "-n", "0.1"]):
        with open(out, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "zcachefs", *cmd], stdout=f,
                                    stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            # --watch without SECONDS reads every 2 s: wait for two lines then
            want = 2 if "--watch" in cmd else 3
            assert poll(lambda n=want: out.read_text().count(f" {mp} hit%=") >= n), \
                (cmd, out.read_text())
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0 and "Traceback" not in err, (cmd, err)
        lines = [line for line in out.read_text().splitlines() if f" {mp} " in line]
        assert all(re.fullmatch(r"\S+ \S+ hit%=\S+ total%=\S+ hits/s=\S+ misses/s=\S+ "
                                r"backing=\S+ pool=\S+ limit=\S+ ratio=\S+ raw_pages=\S+ "
                                r"pressure=\S+", line) for line in lines), lines


def test_live_view_of_a_named_dead_mount_exits_1(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(options=OPTS)
    os.kill(m.pid, signal.SIGKILL)
    assert m.proc is not None
    m.proc.wait(timeout=30)
    r = zcachefs("stat", "--watch", "0.1", str(m.mountpoint), timeout=30)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "not connected" in r.stderr, r.stderr

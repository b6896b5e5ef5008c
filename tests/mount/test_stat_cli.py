"""`zcachefs stat`, `zcachefs set` and `zcachefs drop`: the client commands, run as a
user would run them (a subprocess), against real mounts, other file systems, dead and
stuck mounts, and as another user (their pure helpers: tests/unit/test_statcli.py)."""

from __future__ import annotations

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
    poll,
    settle,
    state,
    stats_json,
    warm_up,
    world_mount,
)
from tests.support.client import parse_prometheus, zcachefs
from tests.support.mounting import Mount
from tests.support.procs import kill_if_running
from zcachefs import client, live, stats
from zcachefs.settings import ACTIONS
from zcachefs.settings import CONTROLS as KNOBS


def rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["MOUNTPOINT", "ALGORITHM", *(c.title for c in client.COLUMNS)]
    return [line.split() for line in lines[1:]]


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
    h = stats.human
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
        fam = fams[stats.metric_name(name)]
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
            kill_if_running(proc)
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
    m = world_mount(mount_factory, world_tmp)
    s = settle(m)
    before = state(m)
    r = zcachefs("stat", str(m.mountpoint), user=True)
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout)[0][:5] == [str(m.mountpoint), "lz4", "8M",
                                     stats.human(s["mem_used_total"]),
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
        if not knob.writable:
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
            frames = reader.text().split(live.HOME_CLEAR)
            return len(frames) > 3 and any((live_hits_per_second(f, mp) or 0) > 0
                                           for f in frames)

        assert poll(hits_shown, timeout=30), reader.text()[-2000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.thread.join(timeout=10)
    finally:
        kill_if_running(proc)
        os.close(master)
    text = reader.text()
    assert text.startswith(live.HIDE_CURSOR)
    assert text.count(live.HOME_CLEAR) >= 3
    assert live.SHOW_CURSOR in text.rsplit(live.HOME_CLEAR, 1)[1]
    assert "Traceback" not in text
    last = text.rsplit(live.HOME_CLEAR, 1)[1]
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
            kill_if_running(proc)
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

"""The seed-replay benchmark (scripts/bench, issue 5): its parsers and data generator
in milliseconds, then `scripts/bench --quick` end to end, and an interrupted run that
must leave no mount, cgroup or modified data behind. Never asserts timings: only that
the run completes and its results are well-formed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounting import force_unmount, is_fuse_mounted, wait_until

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gen_data  # noqa: E402
from benchlib import apps, cgroup, report  # noqa: E402
from benchlib import workloads as wl  # noqa: E402

WORKLOADS = [w.name for w in wl.workloads(5, 10)]
CONFIGS = ["plain", "none", "lz4", "lzo", "lz4-dio", "ramfs"]

# -- fast tests of the pieces ----------------------------------------------------------

IOZONE_SAMPLE = """\
\tIozone: Performance Test of File I/O
\t        Version $Revision: 3.489 $
\tRun began: Thu Nov 26 16:00:00 2026

\tInclude fsync in write timing
\tFile size set to 327680 kB
\tRecord Size 64 kB
\tCommand line used: iozone -i 0 -i 1 -i 2 -e -w -s 327680k -r 64k -f /mnt/iozone.tmp
\tOutput is in kBytes/sec
                                                              random    random     bkwd\
    record    stride
              kB  reclen    write  rewrite    read    reread    read     write     read\
   rewrite      read   fwrite frewrite    fread  freread
          327680      64   612345   701234    51234    52345    48123   401234

iozone test complete.
"""


def test_parse_iozone() -> None:
    got = wl.parse_iozone(IOZONE_SAMPLE)
    assert got == {"write": 612345.0, "rewrite": 701234.0, "read": 51234.0,
                   "reread": 52345.0, "random_read": 48123.0, "random_write": 401234.0}
    with pytest.raises(ValueError):
        wl.parse_iozone("iozone: command not found\n")


def test_iozone_args_are_the_seed_tests() -> None:
    args = wl.iozone_args(Path("/m/f"), 3 << 30, "64k")
    assert args[:7] == ["iozone", "-i", "0", "-i", "1", "-i", "2"]
    assert f"{3 << 20}k" in args and "/m/f" in args


def test_iolog_writes_are_restored(tmp_path: Path) -> None:
    data, pristine = tmp_path / "data", tmp_path / "pristine"
    data.mkdir()
    pristine.mkdir()
    (pristine / "a b").write_bytes(bytes(range(256)) * 64)
    shutil.copyfile(pristine / "a b", data / "a b")
    with open(data / "a b", "r+b") as f:
        f.seek(4096)
        f.write(b"x" * 4096)
    log = tmp_path / "iolog"
    log.write_text(f"fio version 3 iolog\n1 {data}/a b add\n2 {data}/a b open\n"
                   f"3 {data}/a b read 0 4096\n4 {data}/a b write 4096 4096\n"
                   f"5 {data}/a b close\n")
    writes = wl.parse_iolog_writes(log, data)
    assert writes == {"a b": [(4096, 4096)]}
    assert wl.restore_writes(writes, pristine, data) == 4096
    assert (data / "a b").read_bytes() == (pristine / "a b").read_bytes()


def test_fio_args_never_invalidate() -> None:
    for w in wl.workloads(5, 10):
        args = wl.fio_args(w, Path("/d"), ["a:b", "c"], Path("/o.json"))
        assert "--invalidate=0" in args
        assert "--filename=a\\:b:c" in args
        assert ("--time_based" in args) == w.timed
        assert "--opendir=/d/data" in wl.fio_args(w, Path("/d"), None, Path("/o.json"))


def test_fio_json_is_summed_over_jobs(tmp_path: Path) -> None:
    job = {"job_runtime": 2000, "usr_cpu": 1.0, "sys_cpu": 2.0, "error": 0,
           "read": {"iops": 100.0, "bw_bytes": 409600, "io_bytes": 819200, "total_ios": 200,
                    "clat_ns": {"mean": 5000.0, "percentile": {"99.000000": 9000}}},
           "write": {"iops": 0.0, "bw_bytes": 0, "io_bytes": 0, "total_ios": 0}}
    out = tmp_path / "fio.json"
    out.write_text("note: fio said something first\n" + json.dumps({"jobs": [job, job]}))
    got = wl.parse_fio(out)
    assert got["read_iops"] == 200.0 and got["read_bytes"] == 1638400
    assert got["read_p99_us"] == 9.0 and got["runtime_s"] == 2.0


def test_generated_data_is_deterministic(tmp_path: Path) -> None:
    files = gen_data.plan(64 << 20, seed=3)
    assert len(files) == gen_data.MIN_FILES
    assert {k for _, k, _ in files} == set(gen_data.MIX)
    assert files == gen_data.plan(64 << 20, seed=3)
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    for name, kind, size in files[:3] + [f for f in files if f[1] == "sqlite"][:1]:
        size = min(size, 1 << 20)
        one = gen_data.make_file(tmp_path / "1" / name, kind, size, seed=3)
        two = gen_data.make_file(tmp_path / "2" / name, kind, size, seed=3)
        assert one == two, kind
        assert (tmp_path / "1" / name).stat().st_size >= size


def test_logs10_is_log_text_with_one_random_chunk_in_ten(tmp_path: Path) -> None:
    files = gen_data.plan(64 << 20, seed=3, dataset="logs10")
    assert {k for _, k, _ in files} == {"logs10"}
    name, kind, _ = files[0]
    size = 40 * gen_data.CHUNK
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    one = gen_data.make_file(tmp_path / "1" / name, kind, size, seed=3)
    assert one == gen_data.make_file(tmp_path / "2" / name, kind, size, seed=3)
    data = (tmp_path / "1" / name).read_bytes()
    chunks = [data[i:i + gen_data.CHUNK] for i in range(0, size, gen_data.CHUNK)]
    text = [c.isascii() and c.count(b"\n") > 100 for c in chunks]
    for group in range(4):  # exactly one non-text chunk in every ten
        assert text[group * 10:group * 10 + 10].count(False) == 1
    stats = gen_data.page_stats([(tmp_path / "1" / name, kind)],
                                codecs=("lz4",))["lz4"]["total"]
    assert stats["admitted_pct"] == pytest.approx(90, abs=1)


def test_apps_data(tmp_path: Path) -> None:
    n = gen_data.write_lookup_db(tmp_path / "db", 2 << 20, seed=1)
    import sqlite3
    con = sqlite3.connect(tmp_path / "db")
    assert con.execute("SELECT count(*), min(id), max(id) FROM t").fetchone() == (n, 1, n)
    con.close()
    assert (tmp_path / "db").stat().st_size >= 2 << 20
    logs = gen_data.write_logs(tmp_path / "logs", 5 << 20, seed=1, file_size=2 << 20)
    assert [p.stat().st_size for p in logs] == [2 << 20, 2 << 20, 1 << 20]
    assert all(b" INFO  [" in p.read_bytes() for p in logs)


def test_page_stats_counts_zero_and_incompressible_pages(tmp_path: Path) -> None:
    p = tmp_path / "mix"
    p.write_bytes(bytes(4096) + random.Random(1).randbytes(4096) + b"abcd" * 1024)
    stats = gen_data.page_stats([(p, "mix")], codecs=("lz4",))["lz4"]["total"]
    assert stats["same_filled_pct"] == pytest.approx(33.3, abs=0.1)
    assert stats["admitted_pct"] == pytest.approx(66.7, abs=0.1)  # the random page is not
    assert stats["ratio"] > 1.4


def load_bench() -> Any:
    """scripts/bench as a module (it has no .py suffix)."""
    loader = SourceFileLoader("bench_script", str(SCRIPTS / "bench"))
    spec = importlib.util.spec_from_loader("bench_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def test_pyspy_summary(tmp_path: Path) -> None:
    bench = load_bench()
    raw = tmp_path / "raw.txt"
    raw.write_text("main (zcachefs/mount.py:90);read (zcachefs/fs.py:470) 7\n"
                   "main (zcachefs/mount.py:90);get (zcachefs/cache.py:12) 3\n")
    got = bench.summarize_pyspy(raw)
    assert got["samples"] == 10
    assert got["self"][0] == ["read (zcachefs/fs.py)", 7] or \
        got["self"][0] == ("read (zcachefs/fs.py)", 7)
    assert dict(got["inclusive"])["main (zcachefs/mount.py)"] == 10


def test_targets_and_ratios() -> None:
    rows = {"randread": {"plain": {"read_iops": 1000.0, "read_mbps": 4.0},
                         "none": {"read_iops": 2000.0, "read_mbps": 8.0},
                         "lz4": {"read_iops": 6000.0, "read_mbps": 24.0}}}
    units = {"randread": "IOPS"}
    report.add_ratios(rows, units)
    assert rows["randread"]["lz4"]["vs_plain"] == 6.0
    assert rows["randread"]["lz4"]["vs_none"] == 3.0
    targets = {t["name"]: t for t in report.evaluate_targets(rows, units)}
    assert targets["random-read-vs-plain"]["met"] is True
    assert targets["compression-on-vs-off"]["ratio"] == 3.0
    assert targets["seq-reread-vs-plain"]["met"] is None  # not measured


def test_iozone_table_says_gain_or_loss_per_kind() -> None:
    io = {"plain": {"write": 100_000.0, "rewrite": 100_000.0, "read": 50_000.0,
                    "reread": 50_000.0, "random_read": 40_000.0, "random_write": 90_000.0},
          "lz4": {"write": 50_000.0, "rewrite": 101_000.0, "read": 60_000.0,
                  "reread": 150_000.0, "random_read": 80_000.0, "random_write": 10_000.0},
          "lzo": {"error": "daemon is gone"}}
    report.add_iozone_ratios(io)
    assert io["lz4"]["vs_plain"]["reread"] == 3.0
    table = report.iozone_table(io, {"plain": "plain", "lz4": "z", "lzo": "o"})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert rows["write"].endswith("| 0.50 loss | - |")
    assert rows["rewrite"].endswith("| 1.01 even | - |")
    assert rows["re-read"].endswith("| 3.00 gain | - |")
    assert "Failed: o: daemon is gone" in table
    groups = report.extra_groups(io, {})
    assert groups["iozone re-read"]["lz4"] == {"vs_plain": 3.0}


def test_app_ratios_and_table() -> None:
    rows = {"plain": {"rate": 100.0, "warm_bytes": 10e6, "warm_s": 1.0, "check": 7},
            "lz4": {"rate": 250.0, "warm_bytes": 10e6, "warm_s": 0.5, "check": 7,
                    "hit_ratio": 0.5}}
    report.add_app_ratios({"grep": rows})
    assert rows["lz4"]["vs_plain"] == 2.5
    table = report.app_table("grep", "t", "MB/s", rows, {})
    assert "| lz4 | 250.0 | 2.50 | 20.0 | 50.0 |" in table


def test_app_runner_answers_the_same_everywhere(tmp_path: Path) -> None:
    """The runner itself, on a small database and log directory (no budget)."""
    gen_data.write_lookup_db(tmp_path / "db", 1 << 20, seed=1)
    gen_data.write_logs(tmp_path / "logs", 1 << 20, seed=1, file_size=256 << 10)
    out = {}
    for app, path in (("sqlite", "db"), ("grep", "logs"), ("scan", "db")):
        for _ in range(2):
            r = subprocess.run([sys.executable, str(SCRIPTS / "benchlib" / "apps.py"), app,
                                str(tmp_path / path), "--runtime", "0.2"],
                               capture_output=True, text=True, check=True)
            got = json.loads(r.stdout)
            assert got["rate"] > 0 and got["ops"] >= 1
            assert out.setdefault(app, got["check"]) == got["check"]
    assert out["scan"] == (tmp_path / "db").stat().st_size
    assert out["grep"] > 0


# -- the real thing ---------------------------------------------------------------------

def _why_not_runnable(workdir: Path) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("fio", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed"
    try:
        cgroup.detect()
        cgroup.block_device(workdir)
    except cgroup.CgroupError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data set for the module's runs (generated by the first one)."""
    d = tmp_path_factory.mktemp("bench-work")
    why = _why_not_runnable(d)
    if why:
        pytest.skip(why)
    return d


def _leftovers(workdir: Path, pid: int) -> list[str]:
    out = []
    if is_fuse_mounted(workdir / "mnt"):
        out.append("mount")
    for c in cgroup.detect().values():
        out += [str(d) for d in c.root.glob(f"{cgroup.PREFIX}{pid}-*")]
    return out


def bench(workdir: Path, results: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(SCRIPTS / "bench"), "--quick", "--runtime",
                             "3", "--workdir", str(workdir), "--results", str(results), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_quick_run_produces_wellformed_results(workdir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = bench(workdir, results)
    try:
        out, _ = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(workdir / "mnt")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert not _leftovers(workdir, proc.pid)

    doc = json.loads((results / "results.json").read_text())
    assert doc["complete"] is True
    assert list(doc["configs"]) == CONFIGS
    assert doc["throttle_check"]["MB_s"] > 0
    assert doc["verify"] == "all files match their SHA-256"
    for codec in ("lz4", "lzo"):
        total = doc["data"]["ratios"][codec]["total"]
        assert total["ratio"] > 1.0 and 0 < total["admitted_pct"] <= 100
    assert set(doc["results"]) == set(WORKLOADS)
    for wname, rows in doc["results"].items():
        expected = CONFIGS if wname.startswith("fit-") else CONFIGS[:-1]
        assert list(rows) == expected, wname
        for cfg, row in rows.items():
            assert "error" not in row, (wname, cfg, row.get("error"))
            assert row["read_iops"] > 0 and row["read_mbps"] > 0
            assert row["cgroup_peak"] > 0
            assert row["vs_plain"] is not None
            if cfg in ("none", "lz4", "lzo", "lz4-dio"):
                assert row["daemon_cpu_s"] >= 0
                assert row["zcachefs"]["memlimit"] > 0
                assert row["hit_ratio"] is None or 0 <= row["hit_ratio"] <= 1
    assert {t["name"] for t in doc["targets"]} == {t[0] for t in report.TARGETS}
    for t in doc["targets"]:
        assert isinstance(t["ratio"], float) and t["met"] in (True, False)

    png = (results / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 400 and height > 300

    md = (results / "results.md").read_text()
    assert "## Targets" in md
    for wname in WORKLOADS:
        assert f"**{wname}**" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| plain directory |")]
    assert len(table_rows) == len(WORKLOADS) + len(doc["apps"])
    assert (results / "fio" / "lz4-randread.json").exists()

    # Real applications, in --apps-configs (plain,lz4): the same answers everywhere.
    assert list(doc["apps"]) == [app.name for app in apps.APPS]
    for name, rows in doc["apps"].items():
        assert list(rows) == ["plain", "lz4"], name
        for cfg, row in rows.items():
            assert "error" not in row, (name, cfg, row["error"])
            assert row["rate"] > 0 and row["ops"] > 0 and row["vs_plain"] is not None
        assert rows["plain"]["check"] == rows["lz4"]["check"], name
        assert f"**{name}**" in md and f"apps.py {name} " in md
    assert "## Real applications" in md
    # iozone where it is installed (make bench-deps), a one-line skip otherwise.
    if wl.iozone_path():
        assert list(doc["iozone"]) == CONFIGS[:-1]
        for cfg, row in doc["iozone"].items():
            assert "error" not in row, (cfg, row["error"])
            assert all(row[t] > 0 for t in wl.IOZONE_TESTS)
        for title in report.IOZONE_TITLES.values():
            row = next(line for line in md.splitlines() if line.startswith(f"| {title} |"))
            assert re.search(r"\d\.\d\d (gain|loss|even) \|$", row), row
    else:
        assert "iozone: not installed" in text
    # Progress: a [step/total] line before every timed step, up to the last.
    steps = [(int(a), int(b)) for a, b in re.findall(r"-> \[(\d+)/(\d+)\] ", text)]
    assert steps and [a for a, _ in steps] == list(range(1, steps[-1][1] + 1))


@pytest.mark.slow
def test_interrupted_run_cleans_up(workdir: Path, tmp_path: Path) -> None:
    """SIGTERM while a zcachefs configuration runs: no mount, no cgroup, exit 130, the
    data unchanged, partial results written."""
    results = tmp_path / "results"
    proc = bench(workdir, results, "--configs", "lz4", "--no-iozone")
    try:
        # Wait for the set phase (the second mount) to be reading.
        seen = wait_until(lambda: (results / "fio" / "lz4-fit-randread.json").exists()
                          and is_fuse_mounted(workdir / "mnt"), timeout=600, interval=0.2)
        assert seen, "the benchmark never reached its set phase"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(workdir / "mnt")
    assert proc.returncode == 130, out.decode(errors="replace")[-3000:]
    assert not _leftovers(workdir, proc.pid)
    doc = json.loads((results / "results.json").read_text())
    assert doc["complete"] is False
    manifest = json.loads((workdir / "data-manifest.json").read_text())
    assert load_bench().verify(workdir / "set" / "data", manifest["files"]) == []


# -- the demo ---------------------------------------------------------------------------

LAST_LINE = re.compile(r"demo: re-read \d+\.\d\dx, random read \d+\.\d\dx vs plain "
                       r"\(chart: (/\S+\.png)\)")


def demo(workdir: Path, chart: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen([sys.executable, str(SCRIPTS / "demo"), "--ram", "128M",
                                 "--runtime", "1", "--workdir", str(workdir), "--chart",
                                 str(chart), *args], stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT)


def _demo_leftovers(workdir: Path, pid: int) -> list[str]:
    out = [str(workdir)] if workdir.exists() else []
    if is_fuse_mounted(workdir / "mnt"):
        out.append("mount")
    with contextlib.suppress(cgroup.CgroupError):
        for c in cgroup.detect().values():
            out += [str(d) for d in c.root.glob(f"{cgroup.PREFIX}{pid}-*")]
    return out


def _finish(proc: subprocess.Popen[bytes], workdir: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(workdir / "mnt")


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["budget", "no-budget"])
def test_demo_prints_its_table_and_last_line(tmp_path: Path, budget: str) -> None:
    if _why_not_runnable(tmp_path) and budget == "budget":
        pytest.skip(_why_not_runnable(tmp_path) or "")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    workdir, chart, out = tmp_path / "demo", tmp_path / "chart.png", tmp_path / "out"
    proc = demo(workdir, chart, out, *(["--no-budget"] if budget == "no-budget" else []))
    _finish(proc, workdir, timeout=600)
    text = out.read_text()
    assert proc.returncode == 0, text[-3000:]
    lines = text.splitlines()
    m = LAST_LINE.fullmatch(lines[-1])
    assert m and m.group(1) == str(chart), lines[-1]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for needed in ("re-read, MB/s", "4 KiB random read, IOPS", "zcachefs hit ratio",
                   "orig_data_size", "mem_used_total", "zcachefs stat:", "MOUNTPOINT"):
        assert needed in text, needed
    assert [line for line in lines if re.match(r"demo: \[\d/7 ", line)], text
    assert ("not meaningful" in text) == (budget == "no-budget")
    assert not _demo_leftovers(workdir, proc.pid)


@pytest.mark.slow
def test_interrupted_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    workdir, chart, out = tmp_path / "demo", tmp_path / "chart.png", tmp_path / "out"
    proc = demo(workdir, chart, out)
    try:
        # SIGINT (Ctrl-C) while zcachefs is mounted and reading
        assert wait_until(lambda: "zcachefs: sequential re-read" in out.read_text()
                          and is_fuse_mounted(workdir / "mnt"), timeout=600, interval=0.1), \
            out.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
    finally:
        _finish(proc, workdir, timeout=120)
    assert proc.returncode == 130, out.read_text()[-3000:]
    assert "interrupted by SIGINT" in out.read_text()
    assert not _demo_leftovers(workdir, proc.pid)
    assert not chart.exists()

"""The seed-replay benchmark's pieces (scripts/bench, issue 5): its parsers, tables and
data generator, in milliseconds and without a mount (the runs end to end:
tests/mount/test_bench_run.py)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import gen_data  # scripts/ is on sys.path: pyproject's pytest pythonpath
import pytest
from benchlib import report
from benchlib import workloads as wl

from tests.support.bench import load_bench

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"

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


def test_cold_pass_table_says_how_much_of_the_data_stayed_cached() -> None:
    row = {"read_mbps": 50.0, "read_iops": 400.0, "disk_read_bytes": 1000 * 2**20}
    rows = {"plain": {**row, "backing_resident_bytes": 800 * 2**20},
            "lz4": {**row, "backing_resident_bytes": 2**20}}
    table = report.workload_table("seq-cold", "t", "MB/s", rows, {"lz4": "zcachefs lz4"})
    assert ("(mincore): plain 800 MiB (80.0% of the data read); zcachefs lz4 1 MiB "
            "(0.1% of the data read).") in table
    assert "mincore" not in report.workload_table("randread", "t", "IOPS", {"lz4": row}, {})


def test_resident_bytes_counts_cached_pages(tmp_path: Path) -> None:
    import os

    from benchlib.run import resident_bytes

    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "f"
    f.write_bytes(b"x" * (1 << 20))
    (tmp_path / "empty").write_bytes(b"")
    with open(f, "rb") as fh:
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert resident_bytes(tmp_path) < 64 << 10
    f.read_bytes()
    assert resident_bytes(tmp_path) == 1 << 20


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

"""The workloads of the seed replay: fio jobs (and iozone when installed), run inside a
budget, with their results parsed into flat dicts.

Every fio job uses `invalidate=0`: fio otherwise drops a file's page cache at the start
of every job, which silently turns the plain directory cold between passes while the
daemon's own cache survives. Cold starts are made explicitly (caches dropped before
each configuration). Random jobs use a fixed seed, so every configuration sees the
same offsets in the same order.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FIO_SEED = 20100716  # the day zcache was posted


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    target: str  # "set" (the whole data set) or "fit" (the file that fits in RAM)
    unit: str  # "MB/s" or "IOPS": the number the table ranks by
    fio: dict[str, str] = field(default_factory=dict)
    timed: bool = False  # time_based for `runtime`; otherwise one pass (runtime caps it)
    warm: bool = False  # read the target once, untimed, before the measured job
    writes: bool = False


def workloads(runtime: int, seq_cap: int) -> list[Workload]:
    """The workloads in the order they run in every configuration."""
    seq = {"rw": "read", "bs": "128k", "file_service_type": "sequential",
           "runtime": str(seq_cap)}
    rand = {"rw": "randread", "bs": "4k", "file_service_type": "random",
            "runtime": str(runtime)}
    return [
        Workload("seq-cold", "sequential read of the whole set, first pass (cold)", "set",
                 "MB/s", seq),
        Workload("seq-reread", "sequential re-read of the whole set", "set", "MB/s", seq),
        Workload("randread", "4 KiB random read, 1 job", "set", "IOPS", rand, timed=True),
        Workload("randread-4jobs", "4 KiB random read, 4 parallel jobs", "set", "IOPS",
                 {**rand, "numjobs": "4", "group_reporting": "1"}, timed=True),
        Workload("randrw", "4 KiB random 70% read / 30% write, 1 job", "set", "IOPS",
                 {**rand, "rw": "randrw", "rwmixread": "70"}, timed=True, writes=True),
        Workload("randread-after-rw", "4 KiB random read again (same offsets as randread), "
                 "files reopened after the writes", "set", "IOPS", rand, timed=True),
        Workload("fit-seq", "sequential reads of a file that fits in the budget (warm)",
                 "fit", "MB/s", {**seq, "file_service_type": "roundrobin",
                                 "runtime": str(runtime)}, timed=True, warm=True),
        Workload("fit-randread", "4 KiB random read of a file that fits (warm)", "fit",
                 "IOPS", {**rand, "file_service_type": "roundrobin"}, timed=True, warm=True),
    ]


def fio_escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace(":", "\\:")


def fio_args(w: Workload, base: Path, files: list[str] | None, output: Path,
             iolog: Path | None = None) -> list[str]:
    """The fio command of `w` on `files` (relative to base), or on every file under
    base/data when files is None (--opendir, for sets whose list of names would pass
    fio's 4096-character limit for one option; the order is then the directory's, the
    same through the mount as without it)."""
    if files is None:
        target = [f"--opendir={base / 'data'}"]
    else:
        target = [f"--directory={base}",
                  f"--filename={':'.join(fio_escape(f) for f in files)}"]
    args = ["fio", f"--name={w.name}", *target, "--ioengine=psync",
            "--invalidate=0", "--direct=0", f"--randseed={FIO_SEED}", "--randrepeat=1",
            "--output-format=json", f"--output={output}"]
    args += [f"--{k}={v}" for k, v in w.fio.items()]
    if w.timed:
        args.append("--time_based")
    if iolog is not None:
        args.append(f"--write_iolog={iolog}")
    return args


def parse_fio(path: Path) -> dict[str, float]:
    """The numbers the report needs from fio's JSON output (summed over jobs)."""
    text = path.read_text()
    data = json.loads(text[text.index("{"):])  # fio may print notes before the JSON
    out = {"read_iops": 0.0, "read_mbps": 0.0, "write_iops": 0.0, "write_mbps": 0.0,
           "read_bytes": 0.0, "runtime_s": 0.0, "read_lat_us": 0.0, "read_p99_us": 0.0,
           "fio_cpu_pct": 0.0, "errors": 0.0}
    jobs = data["jobs"]
    for job in jobs:
        r, wr = job["read"], job["write"]
        out["read_iops"] += r["iops"]
        out["read_mbps"] += r["bw_bytes"] / 1e6
        out["write_iops"] += wr["iops"]
        out["write_mbps"] += wr["bw_bytes"] / 1e6
        out["read_bytes"] += r["io_bytes"]
        out["runtime_s"] = max(out["runtime_s"], job["job_runtime"] / 1000)
        out["fio_cpu_pct"] += job["usr_cpu"] + job["sys_cpu"]
        out["errors"] += job.get("error", 0)
        if r["total_ios"]:
            out["read_lat_us"] = max(out["read_lat_us"], r["clat_ns"]["mean"] / 1000)
            pct = r["clat_ns"].get("percentile", {})
            p99 = pct.get("99.000000")
            if p99 is not None:
                out["read_p99_us"] = max(out["read_p99_us"], p99 / 1000)
    return out


def parse_iolog_writes(path: Path, directory: Path) -> dict[str, list[tuple[int, int]]]:
    """{file relative to directory: [(offset, length)]} of the writes an iolog recorded
    (fio iolog versions 2 and 3)."""
    out: dict[str, list[tuple[int, int]]] = {}
    prefix = str(directory).rstrip("/") + "/"
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[-3] == "write":
                name = " ".join(parts[1:-3]) if parts[0].isdigit() and len(parts) >= 5 \
                    else " ".join(parts[:-3])
                name = name.removeprefix(prefix)
                out.setdefault(name, []).append((int(parts[-2]), int(parts[-1])))
    return out


def restore_writes(writes: dict[str, list[tuple[int, int]]], pristine: Path,
                   data: Path) -> int:
    """Copy back from `pristine` every range a workload wrote; returns bytes restored."""
    n = 0
    for name, ranges in writes.items():
        with open(pristine / name, "rb") as src, open(data / name, "r+b") as dst:
            for off, length in sorted(set(ranges)):
                src.seek(off)
                block = src.read(length)
                dst.seek(off)
                dst.write(block)
                n += len(block)
            dst.flush()
    return n


def restore_all(pristine: Path, data: Path, names: list[str]) -> int:
    """Compare every file with its pristine copy and rewrite the blocks that differ
    (after an interrupted write workload, when the iolog may be incomplete)."""
    n = 0
    block = 1 << 20
    for name in names:
        with open(pristine / name, "rb") as src, open(data / name, "r+b") as dst:
            off = 0
            while True:
                want = src.read(block)
                have = dst.read(len(want))
                if want != have:
                    dst.seek(off)
                    dst.write(want)
                    n += len(want)
                if not want:
                    break
                off += len(want)
                dst.seek(off)
            dst.truncate(off)
    return n


# -- iozone ---------------------------------------------------------------------------

IOZONE_TESTS = ("write", "rewrite", "read", "reread", "random_read", "random_write")


def iozone_path() -> str | None:
    return shutil.which("iozone")


def iozone_args(file: Path, size: int, record: str) -> list[str]:
    """-i 0 (write/rewrite) -i 1 (read/reread) -i 2 (random read/write) on one file
    larger than the budget; -e counts fsync in the write times, -w keeps the file
    between the tests (we delete it afterwards)."""
    return ["iozone", "-i", "0", "-i", "1", "-i", "2", "-e", "-w", "-s", f"{size // 1024}k",
            "-r", record, "-f", str(file)]


def parse_iozone(text: str) -> dict[str, float]:
    """KB/s per test from iozone's report: the first row of numbers after the header
    that names `reclen` (kB, reclen, then one column per test that ran)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "reclen" in line and "kB" in line:
            for row in lines[i + 1:]:
                nums = row.split()
                if len(nums) >= 2 + len(IOZONE_TESTS) and all(re.fullmatch(r"\d+", x)
                                                              for x in nums):
                    return {t: float(v) for t, v in zip(IOZONE_TESTS, nums[2:], strict=False)}
    raise ValueError("no iozone result row found")


def run_logged(cmd: list[str], log: Path, timeout: float,
               on_start: Callable[[subprocess.Popen[bytes]], None] | None = None) -> int:
    """Run cmd (its own session, output to log); returns its exit status."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        if on_start is not None:
            on_start(proc)
        try:
            return proc.wait(timeout=timeout)
        except BaseException:
            # SIGTERM first: fio then stops its jobs and flushes its logs (the iolog that
            # says what to restore); SIGKILL if it does not go.
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise

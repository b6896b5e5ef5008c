"""py-spy on the daemon during one workload (scripts/bench --py-spy), and the summary of
its raw output that the report shows. Runs py-spy as a child process; not thread-safe."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """py-spy on PATH, or next to this Python (`make bench-deps` installs it there)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


class Profiler:
    """py-spy record on the daemon while one workload runs (outside the budget), of the
    thread holding the GIL only (--gil): py-spy counts threads blocked in epoll or on a
    queue as busy here, so all-thread samples would not tell work from waiting. Samples /
    (rate x seconds) is then the share of time Python code ran; C code that releases
    the GIL (lz4/lzo, pread) shows in the per-thread CPU times instead."""

    RATE = 100

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", str(self.RATE),
             "--gil", "--nonblocking", "--format", "raw", "--output", str(out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = summarize_pyspy(self.out)
        if out:
            out["gil_busy"] = round(out["samples"] / (self.RATE * wall), 3)
        return out


def summarize_pyspy(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed)
    output; idle threads are not sampled, so samples / (rate x seconds) is CPU use."""
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return {"samples": total, "self": selfc.most_common(top), "inclusive": incl.most_common(top)}


def _frame(f: str) -> str:
    """'read (zcachefs/fs.py:470)' -> 'read (zcachefs/fs.py)'."""
    name, _, where = f.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where.split('/work/main/')[-1]})" if where else name

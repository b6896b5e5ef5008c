"""The measured steps of one configuration: a fio workload, a real application, iozone,
each with the readings before and after it (the budget's peak memory, disk reads and OOM
kills, the daemon's CPU time and RSS, zcachefs's counters), and undoing what the
read/write workload wrote. A base class of scripts/bench's `Bench`; it uses the
attributes `Bench.__init__` sets (a, log, work, setdir, data, pristine, mnt, dirty, res,
iologs, files, meta, results, iozone, apps) and its `start_daemon()` and `step()`."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from . import apps, cgroup
from . import workloads as wl
from .configs import Config
from .profile import Profiler
from .run import (
    REPO,
    BudgetMount,
    drop_caches,
    read_stats,
    resident_bytes,
    signals_blocked,
    stats_kind,
    warm_tools,
)

MiB = 1 << 20


class Steps:
    """The steps of a configuration (see the module docstring)."""

    a: Any
    log: Any
    meta: dict[str, Any]
    iozone: dict[str, Any]

    def restore(self, complete: bool) -> None:
        """Undo what the read/write workload wrote: the ranges its iolog names after a
        clean run, a full comparison with the pristine copy otherwise."""
        if not self.dirty.exists():
            return
        done = False
        if complete and self.iologs:
            try:
                writes = [wl.parse_iolog_writes(log, d) for log, d in self.iologs]
                n = sum(wl.restore_writes(w, self.pristine, self.data) for w in writes)
                self.log(f"   restored the {n / MiB:.1f} MiB the read/write workload wrote")
                done = True
            except (OSError, ValueError) as exc:
                self.log(f"   cannot restore from the iolog ({exc}); comparing instead")
        if not done:
            n = wl.restore_all(self.pristine, self.data, self.files)
            self.log(f"   restored {n / MiB:.1f} MiB by comparing with the pristine copy")
        for iolog, _ in self.iologs:
            iolog.unlink(missing_ok=True)
        self.iologs = []
        os.sync()
        self.dirty.unlink()

    def _summary(self, w: wl.Workload, row: dict[str, Any]) -> str:
        if "error" in row:
            return f"FAILED: {row['error']}"
        value = row["read_mbps"] if w.unit == "MB/s" else row["read_iops"]
        extra = f" hit {100 * row['hit_ratio']:.0f}%" if row.get("hit_ratio") is not None else ""
        return (f"{value:10,.1f} {w.unit:<4} peak {row['cgroup_peak'] / MiB:6,.0f} MiB, "
                f"disk {row['disk_read_bytes'] / MiB:7,.0f} MiB{extra}")

    def run_workload(self, cfg: Config, w: wl.Workload, b: cgroup.Budget,
                     daemon: BudgetMount | None, base: Path) -> dict[str, Any]:
        a = self.a
        if daemon is not None and not daemon.alive():
            return {"error": "daemon is gone" + self._oom_note(b)}
        if w.target == "set":
            files = [f"data/{n}" for n in self.files]  # in the manifest's order
            if len(":".join(files)) > 4000:  # fio's limit for one option is 4096
                files = None  # every file under base/data, in directory order (--opendir)
        else:
            files = ["fit.bin"] if cfg.kind == "ramfs" else ["fit/fit.bin"]
        if w.warm and files:
            subprocess.run(b.wrap(["cat", *files]), cwd=base, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False, timeout=a.seq_cap * 3)
        out = self.res / "fio" / f"{cfg.name}-{w.name}.json"
        out.parent.mkdir(exist_ok=True)
        iolog = None
        if w.writes:
            iolog = self.work / f"iolog-{cfg.name}-{w.name}"
            self.iologs.append((iolog, base / "data"))
            self.dirty.touch()
        probe = self.probe_start(cfg, b, daemon)
        oom0 = probe["oom0"]
        prof = None
        if a.py_spy and daemon is not None and cfg.kind == "zcachefs":
            (self.res / "py-spy").mkdir(exist_ok=True)
            prof = Profiler(daemon.pid, self.res / "py-spy" / f"{cfg.name}-{w.name}.txt")
        args = wl.fio_args(w, base, files, out, iolog)
        timeout = a.runtime + a.seq_cap + 120
        try:
            status = wl.run_logged(b.wrap(args), self.res / "fio.log", timeout)
        except subprocess.TimeoutExpired:
            status = -1
        finally:
            profile = prof.stop() if prof else None
        row: dict[str, Any] = {}
        try:
            row.update(wl.parse_fio(out))
        except (OSError, ValueError, KeyError) as exc:
            row["error"] = f"fio exit {status}, no result ({type(exc).__name__})"
        if status != 0 and "error" not in row:
            row["error"] = f"fio exit {status}"
        if "error" in row:
            row["error"] += self._oom_note(b, oom0)
        self.probe_end(probe, cfg, b, daemon, row)
        if w.name == "seq-cold":  # issue 11: the backing files stay out of the page cache
            row["backing_resident_bytes"] = resident_bytes(self.setdir / "data")
        if profile:
            row["py_spy"] = profile
        return row

    def probe_start(self, cfg: Config, b: cgroup.Budget,
                    daemon: BudgetMount | None) -> dict[str, Any]:
        """Readings before a measured step (see probe_end)."""
        probe = {"zs0": read_stats(self.mnt) if cfg.kind == "zcachefs" else {},
                 "cpu0": daemon.cpu_seconds() if daemon else 0.0,
                 "main0": daemon.cpu_seconds("task/PID/stat") if daemon else 0.0,
                 "t0": time.monotonic(), "disk0": b.disk_read_bytes(), "oom0": b.oom_kills()}
        b.reset_peak()
        return probe

    def probe_end(self, probe: dict[str, Any], cfg: Config, b: cgroup.Budget,
                  daemon: BudgetMount | None, row: dict[str, Any]) -> None:
        """What the budget, the daemon and zcachefs's counters say about the step."""
        zs0, cpu0, main0 = probe["zs0"], probe["cpu0"], probe["main0"]
        row["cgroup_peak"] = b.peak()
        row["peak_since_start"] = not b.peak_resettable
        row["cgroup_memory"] = b.breakdown()  # file / anon / active / inactive at the end
        row["disk_read_bytes"] = b.disk_read_bytes() - probe["disk0"]
        row["oom_kills"] = b.oom_kills() - probe["oom0"]
        row["wall_s"] = round(time.monotonic() - probe["t0"], 2)
        if daemon is not None:
            row["daemon_cpu_s"] = round(daemon.cpu_seconds() - cpu0, 2)
            row["daemon_main_thread_cpu_s"] = round(
                daemon.cpu_seconds("task/PID/stat") - main0, 2)
            st = daemon.status()
            row["daemon_rss"] = st.get("VmRSS")
            row["daemon_hwm"] = st.get("VmHWM")
        if cfg.kind == "zcachefs":
            zs = read_stats(self.mnt)
            if zs and zs0:
                looks = (zs["cache_hits"] + zs["cache_misses"]) - \
                    (zs0["cache_hits"] + zs0["cache_misses"])
                hits = (zs["cache_hits"] + zs["hits"]) - (zs0["cache_hits"] + zs0["hits"])
                row["hit_ratio"] = round(hits / looks, 4) if looks else None
                row["daemon_lookups"] = looks
                row["backing_read_bytes"] = zs["backing_read_bytes"] - zs0["backing_read_bytes"]
                row["orig_per_mem"] = round(zs["orig_data_size"] / zs["mem_used_total"], 3) \
                    if zs["mem_used_total"] else None
                row["zcachefs"] = zs  # the whole stats.json at the end of the workload
                row["zcachefs_delta"] = {k: zs[k] - zs0[k] for k in zs
                                         if k in zs0 and stats_kind(k) == "counter"}

    def run_app(self, cfg: Config, app: apps.App, b: cgroup.Budget) -> None:
        """One real application, after a drop of the caches, with a fresh daemon."""
        a = self.a
        self.step(cfg, app.name, app.title)
        drop_caches()
        warm_tools()
        daemon = self.start_daemon(cfg, b, f"app-{app.name}")
        row: dict[str, Any] = {}
        try:
            base = self.setdir if daemon is None else self.mnt
            cmd = apps.command(app, base, a.runtime)
            self.meta.setdefault("app_commands", {})[app.name] = shlex.join(
                apps.command(app, Path("DATA"), a.runtime)).replace(str(REPO) + "/", "")
            out = self.res / "apps" / f"{cfg.name}-{app.name}.json"
            out.parent.mkdir(exist_ok=True)
            probe = self.probe_start(cfg, b, daemon)
            size = int(app.size_factor * a.ram)
            timeout = a.runtime * 4 + 8 * size / a.disk_bps + 120
            try:
                with open(out, "wb") as f, open(self.res / "apps.log", "ab") as err:
                    proc = subprocess.run(b.wrap(cmd), stdout=f, stderr=err, timeout=timeout,
                                          check=False, stdin=subprocess.DEVNULL)
                row.update(json.loads(out.read_text().strip().splitlines()[-1]))
                if proc.returncode:
                    row["error"] = f"exit {proc.returncode}"
            except (subprocess.TimeoutExpired, ValueError, IndexError, OSError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:200] + self._oom_note(
                    b, probe["oom0"])
            self.probe_end(probe, cfg, b, daemon, row)
        finally:
            if daemon is not None:
                with signals_blocked():
                    daemon.stop()
        self.apps[app.name][cfg.name] = row
        if "error" in row:
            self.log(f"   {app.name:<15} FAILED: {row['error']}")
        else:
            hit = f", hit {100 * row['hit_ratio']:.0f}%" if row.get("hit_ratio") is not None \
                else ""
            self.log(f"   {app.name:<15} {row['rate']:10,.1f} {row['unit']} (first pass "
                     f"{row['warm_bytes'] / row['warm_s'] / 1e6:,.1f} MB/s), disk "
                     f"{row['disk_read_bytes'] / MiB:,.0f} MiB{hit}")

    def _oom_note(self, b: cgroup.Budget, before: int = 0) -> str:
        n = b.oom_kills() - before
        return f" (the budget's OOM killer fired {n}x)" if n else ""

    def run_iozone(self, cfg: Config, b: cgroup.Budget, daemon: BudgetMount | None,
                   base: Path) -> None:
        a = self.a
        if not a.iozone:
            return
        if wl.iozone_path() is None:
            self.meta["iozone_note"] = ("not installed: skipped (Debian: package iozone3 in "
                                   "non-free; any iozone on PATH is used)")
            if cfg.name == self.a.configs[0]:
                self.log("   iozone: not installed, skipped (install iozone3 to add it)")
            return
        if daemon is not None and not daemon.alive():
            self.iozone[cfg.name] = {"error": "daemon is gone"}
            return
        self.step(cfg, "iozone", "iozone -i 0 -i 1 -i 2 (write, rewrite, read, re-read, "
                  "random read, random write)")
        size = int(a.iozone_size)
        target = base / "iozone.tmp"
        args = wl.iozone_args(target, size, a.iozone_record)
        self.meta["iozone_note"] = shlex.join(args)
        log = self.res / f"iozone-{cfg.name}.txt"
        cpu0 = daemon.cpu_seconds() if daemon else 0.0
        b.reset_peak()
        try:
            status = wl.run_logged(b.wrap(args), log, timeout=max(600, 12 * size / a.disk_bps))
            row: dict[str, Any] = wl.parse_iozone(log.read_text())
            if status:
                row["error"] = f"iozone exit {status}"
        except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
            row = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        finally:
            with contextlib.suppress(OSError):
                (self.setdir / "iozone.tmp").unlink()
        row["cgroup_peak"] = b.peak()
        if daemon is not None:
            row["daemon_cpu_s"] = round(daemon.cpu_seconds() - cpu0, 2)
        self.iozone[cfg.name] = row
        self.log("   iozone          " + ", ".join(
            f"{k} {v / 1000:,.0f} MB/s" for k, v in row.items() if k in wl.IOZONE_TESTS))

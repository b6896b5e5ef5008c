"""Before the first configuration runs: the data set, the real applications' data and
the check that the disk throttle holds. A base class of scripts/bench's `Bench`; it uses
the attributes `Bench.__init__` sets (a, log, work, setdir, data, fit, pristine, mnt,
dirty, manifest_path, manifest, files, meta) and its `budget()`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from typing import Any

import gen_data

from tests.support.mounting import force_unmount, is_fuse_mounted

from . import apps, cgroup
from .data import build_fit, copy_user_data, sync_pristine
from .run import drop_caches, warm_tools

MiB = 1 << 20


class Preparation:
    """Setting up the data and checking the throttle (see the module docstring)."""

    a: Any
    log: Any
    manifest: dict[str, Any]
    meta: dict[str, Any]

    def prepare(self) -> None:
        a = self.a
        if is_fuse_mounted(self.mnt):  # a benchmark killed with SIGKILL left it
            self.log(f"unmounting a stale mount at {self.mnt}")
            force_unmount(self.mnt)
            time.sleep(1)  # let its daemon exit, so its cgroup empties
        for stale in cgroup.remove_stale(self.ctrls):
            self.log(f"removed a stale cgroup {stale}")
        self.mnt.mkdir(parents=True, exist_ok=True)
        if self.dirty.exists():
            self.log("data: an earlier run was interrupted while writing; checking it")
            self.manifest_path.unlink(missing_ok=True)  # regenerate / recopy
            self.dirty.unlink()
        if a.data:
            self.manifest = copy_user_data(a.data, self.data, a.size, self.log,
                                           self.manifest_path)
        else:
            self.manifest = gen_data.generate(self.data, a.size, a.seed, log=self.log,
                                              manifest_path=self.manifest_path,
                                              dataset=a.dataset)
        files = self.manifest["files"]
        self.files = [f["name"] for f in files]
        fit_bytes = build_fit(self.data, files, a.fit_size, self.fit)
        sync_pristine(self.data, self.pristine, files)
        self.log(f"data: {len(files)} files, {self.manifest['size'] / MiB:,.0f} MiB; "
                 f"fits-in-RAM file {fit_bytes / MiB:,.0f} MiB")
        ratios_path = self.work / f"ratios-{self._manifest_id()}.json"
        try:
            ratios = json.loads(ratios_path.read_text())
        except (OSError, ValueError):
            self.log("data: measuring codec ratios of every 4 KiB page")
            ratios = gen_data.page_stats([(self.data / f["name"], f["kind"]) for f in files])
            ratios_path.write_text(json.dumps(ratios))
        print(gen_data.format_ratios(ratios), flush=True)
        self.meta.update({
            "data": {"source": str(a.data) if a.data else
                     f"scripts/gen_data.py --dataset {a.dataset} --seed {a.seed}",
                     "dataset": None if a.data else a.dataset,
                     "bytes": self.manifest["size"], "files": len(files),
                     "fit_bytes": fit_bytes, "ratios": ratios}})
        if a.apps_configs:
            self.prepare_apps()

    def prepare_apps(self) -> None:
        """The real applications' data, next to the set (under the mount's source): a
        SQLite database of 1.3x the budget and log files of 1.2x (regenerated only when
        their recipe changes), and a scan file of 1.1x made of equal slices of the set's
        files (rebuilt only when the set changes)."""
        a = self.a
        sizes = {app.name: int(app.size_factor * a.ram) for app in apps.APPS}
        paths = {app.name: self.setdir / app.path for app in apps.APPS}
        recipe = {"version": 1, "seed": a.seed, "sqlite": sizes["sqlite"],
                  "grep": sizes["grep"]}
        stamp = self.work / "apps-manifest.json"
        try:
            fresh = json.loads(stamp.read_text()) == recipe and paths["sqlite"].exists() \
                and paths["grep"].is_dir()
        except (OSError, ValueError):
            fresh = False
        if fresh:
            self.log("apps: reusing the SQLite database and the logs")
        else:
            stamp.unlink(missing_ok=True)
            self.log(f"apps: generating a {sizes['sqlite'] / MiB:,.0f} MiB SQLite database "
                     f"and {sizes['grep'] / MiB:,.0f} MiB of logs")
            paths["sqlite"].parent.mkdir(parents=True, exist_ok=True)
            rows = gen_data.write_lookup_db(paths["sqlite"], sizes["sqlite"], a.seed)
            if paths["grep"].exists():
                shutil.rmtree(paths["grep"])
            gen_data.write_logs(paths["grep"], sizes["grep"], a.seed)
            stamp.write_text(json.dumps(recipe) + "\n")
            self.log(f"apps: {rows:,} rows in the database")
        scan = build_fit(self.data, self.manifest["files"], sizes["scan"], paths["scan"])
        self.log(f"apps: scan file {scan / MiB:,.0f} MiB")

    def _manifest_id(self) -> str:
        return hashlib.sha256(json.dumps([f["sha256"] for f in self.manifest["files"]])
                              .encode()).hexdigest()[:12]

    def check_throttle(self) -> None:
        """A cold read of ~2 s worth of data inside a budget: the slow disk must really
        be slow (the read throttle acts on buffered reads too)."""
        a = self.a
        want = max(16 * MiB, min(128 * MiB, 2 * a.disk_bps))
        files, nbytes = [], 0
        for f in self.manifest["files"]:
            if nbytes >= want:
                break
            files.append(str(self.data / f["name"]))
            nbytes += f["size"]
        drop_caches()
        warm_tools()
        b = self.budget("throttle")
        try:
            t0 = time.monotonic()
            subprocess.run(b.wrap(["cat", *files]), check=True, stdout=subprocess.DEVNULL,
                           timeout=300)
            dt = time.monotonic() - t0
            disk = b.disk_read_bytes()
        finally:
            b.remove()
        mbps = nbytes / dt / 1e6
        limit = a.disk_bps / 1e6
        ok = mbps <= limit * 1.3
        self.meta["throttle_check"] = {"MB_s": round(mbps, 1), "limit_MB_s": round(limit, 1),
                                       "bytes": nbytes, "disk_read_bytes": disk,
                                       "effective": ok}
        self.log(f"throttle check: a cold read of {nbytes / MiB:.0f} MiB ran at {mbps:.1f} MB/s "
                 f"(limit {limit:.1f} MB/s) {'ok' if ok else 'NOT EFFECTIVE'}")
        if not ok:
            self.log("WARNING: the disk throttle does not hold; results compare caches "
                     "against a fast disk")

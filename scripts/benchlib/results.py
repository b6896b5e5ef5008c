"""The bench's results: results.json, results.md and chart.png in --results, from what the
steps recorded. A base class of scripts/bench's `Bench`; it uses the attributes
`Bench.__init__` sets (a, res, device, ctrls, workloads, results, iozone, apps, meta,
manifest)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gen_data

from . import apps, cgroup, report
from .configs import LABELS
from .run import human

MiB = 1 << 20


class Reporting:
    """Writing the report (see the module docstring)."""

    a: Any
    meta: dict[str, Any]
    iozone: dict[str, Any]

    def machine(self) -> dict[str, Any]:
        cpu = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        fio = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
        import pyfuse3
        return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
                "ram_bytes": mem, "kernel": platform.release(),
                "python": platform.python_version(), "pyfuse3": pyfuse3.__version__,
                "fio": fio, "disk": self.device[2],
                "cgroups": cgroup.describe(self.ctrls)}

    def write_report(self, started: float, complete: bool) -> None:
        a = self.a
        units = {w.name: w.unit for w in self.workloads}
        results = {w: rows for w, rows in self.results.items() if rows}
        report.add_ratios(results, units)
        targets = report.evaluate_targets(results, units)
        report.add_iozone_ratios(self.iozone)
        app_rows = {name: rows for name, rows in self.apps.items() if rows}
        report.add_app_ratios(app_rows)
        doc = {"command": " ".join(shlex.quote(x) for x in sys.argv),
               "complete": complete, "started": time.strftime(
                   "%Y-%m-%d %H:%M:%S", time.localtime(started)),
               "duration_s": round(time.time() - started, 1),
               "machine": self.machine(),
               "budget": {"ram": a.ram, "disk_bps": a.disk_bps, "disk_iops": a.disk_iops,
                          "zcachefs_memlimit": a.memlimit, "zcachefs_cache_size": a.cache_size},
               "configs": {c: LABELS[c] for c in a.configs},
               "workloads": {w.name: {"title": w.title, "unit": w.unit, "target": w.target,
                                      "fio": w.fio} for w in self.workloads},
               "apps_meta": {app.name: {"title": app.title, "unit": app.unit,
                                        "size": int(app.size_factor * a.ram)}
                             for app in apps.APPS},
               **self.meta, "results": results, "iozone": self.iozone, "apps": app_rows,
               "targets": targets}
        (self.res / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        if results:
            extra = report.extra_groups(self.iozone, app_rows)
            report.chart(results, a.configs, LABELS, self.res / "chart.png",
                         f"zcachefs seed replay: {human(a.ram)} budget, "
                         f"{human(self.manifest.get('size', 0))} data"
                         f"{'' if a.data else ' (' + a.dataset + ')'}, disk "
                         f"{a.disk_bps / 1e6:.0f} MB/s + {a.disk_iops} IOPS", extra=extra)
        (self.res / "results.md").write_text(self.markdown(doc, units))

    def markdown(self, doc: dict[str, Any], units: dict[str, str]) -> str:
        a = self.a
        m = doc["machine"]
        lines = [f"# zcachefs seed replay, {doc['started']}", "",
                 f"Command: `{doc['command']}`" + ("" if doc["complete"] else
                                                   " (**interrupted: partial results**)"),
                 "",
                 f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.0f} GiB, "
                 f"kernel {m['kernel']}, Python {m['python']}, pyfuse3 {m['pyfuse3']}, "
                 f"{m['fio']}; {m['cgroups']}; disk {m['disk']}.", "",
                 f"Budget: {human(a.ram)} of memory for everything in a configuration; reads "
                 f"of {m['disk']} throttled to {a.disk_bps / 1e6:g} MB/s and {a.disk_iops} IOPS. "
                 f"zcachefs: memlimit={human(a.memlimit)}, cache_size={human(a.cache_size)}. "
                 f"Run time {doc['duration_s'] / 60:.1f} min.", ""]
        tc = doc.get("throttle_check")
        if tc:
            lines += [f"Throttle check: a cold read of {tc['bytes'] / MiB:.0f} MiB in the budget "
                      f"ran at {tc['MB_s']} MB/s "
                      f"(limit {tc['limit_MB_s']} MB/s): "
                      f"{'effective' if tc['effective'] else '**not effective**'}.", ""]
        d = doc.get("data")
        if d:
            lines += [f"Data: {d['source']}, {d['files']} files, {d['bytes'] / MiB:,.0f} MiB; "
                      f"the file that fits: {d['fit_bytes'] / MiB:,.0f} MiB. Codec ratios of "
                      "its 4 KiB pages (each page alone, as zcachefs stores it; kept = pages "
                      "the pool admits: compressed to at most half a page, or same-filled):",
                      "", "```", gen_data.format_ratios(d["ratios"]), "```", ""]
        if "verify" in doc:
            lines += [f"Data integrity after the run: {doc['verify']}.", ""]
        lines += ["## Targets", "", report.targets_table(doc["targets"]), "## Workloads", "",
                  "x plain / x comp. off: throughput over the plain directory's / over "
                  "zcachefs compression off's. daemon hit %: zcachefs's own hit ratio during "
                  "the workload, (cache_hits + hits) / page lookups; reads the kernel's page "
                  "cache serves never reach the daemon, and a multi-page read stops looking "
                  "up at its first miss, so read it with disk MiB read. orig/mem: the pool's "
                  "orig_data_size / mem_used_total at the end. peak: the budget cgroup's "
                  "peak memory during the workload. anon / shmem / page cache: what the "
                  "budget held at the end, once fio had exited (anon: anonymous memory, the "
                  "daemon's heap, tier 1 and zcachefs's pool, whose slabs are private "
                  "anonymous mappings; shmem: shared memory (tmpfs, shm), which zcachefs "
                  "does not use; page cache: the kernel's cache of the mount's files and of "
                  "the backing files). daemon CPU: "
                  "user + system seconds of the daemon during the workload. disk MiB read: "
                  "bytes the budget read from the throttled disk.", ""]
        for w in self.workloads:
            rows = doc["results"].get(w.name)
            if rows:
                lines.append(report.workload_table(w.name, w.title, units[w.name], rows,
                                                   LABELS))
        lines += ["## iozone", ""]
        if self.iozone:
            lines += [f"`{doc.get('iozone_note', '')}` (file {human(a.iozone_size)}, 1.25x "
                      "the budget; MB/s, and x the plain directory: gain above 1.05, loss "
                      "below 0.95)", "", report.iozone_table(self.iozone, LABELS)]
        else:
            lines += [f"iozone: {doc.get('iozone_note', 'not run')}.", ""]
        if doc["apps"]:
            lines += ["## Real applications", "",
                      "Each after a drop of the caches, with a fresh daemon: the first pass "
                      "(cold), then the timed part; rate = queries/s or MB/s of the repeats. "
                      "check: the same value in every configuration (sum of the amounts of "
                      "the first 1,000 rows looked up; lines matched; bytes read).", ""]
            for name, rows in doc["apps"].items():
                meta = doc["apps_meta"][name]
                lines += [report.app_table(name, meta["title"], meta["unit"], rows, LABELS),
                          f"Command: `{doc.get('app_commands', {}).get(name, '')}`", ""]
        prof = [(c, w, r) for w, rows in doc["results"].items()
                for c, r in rows.items() if r.get("py_spy")]
        if prof:
            lines += ["## Where the daemon spends its time (py-spy, 100 Hz)", ""]
            lines += ["Samples of the thread holding the GIL (py-spy --gil): 'GIL busy' is the "
                      "share of the workload's time Python code ran in the daemon; then the "
                      "functions where those samples were (self time).", ""]
            for c, w, r in prof:
                p = r["py_spy"]
                top = ", ".join(f"{name} {100 * n / max(1, p['samples']):.0f}%"
                                for name, n in p["self"][:6])
                lines.append(f"- {c} / {w}: daemon CPU {r['daemon_cpu_s']:.1f} s (trio thread "
                             f"{r['daemon_main_thread_cpu_s']:.1f} s) in {r['wall_s']:.0f} s; "
                             f"GIL busy {100 * p.get('gil_busy', 0):.0f}%; {top}")
            lines.append("")
        return "\n".join(lines)

"""The report of a seed-replay run: Markdown tables, the targets, a PNG chart.

Input is the results dict that scripts/bench writes as results.json:
`results[workload][config]` = flat numbers (fio's, the cgroup's, the daemon's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# (name, workload, numerator config, denominator config, minimum ratio, the words)
TARGETS = (
    ("random-read-vs-plain", "randread", "lz4", "plain", 5.0,
     "4 KiB random reads: zcachefs >= 5x the plain directory"),
    ("seq-reread-vs-plain", "seq-reread", "lz4", "plain", 6.0,
     "sequential re-read: zcachefs >= 6x the plain directory"),
    ("compression-on-vs-off", "randread", "lz4", "none", 2.0,
     "random reads: compression on >= 2x compression off (same memory)"),
    ("fits-seq-vs-plain", "fit-seq", "lz4", "plain", 0.5,
     "data that fits: sequential reads no more than 2x slower than plain"),
    ("fits-random-vs-plain", "fit-randread", "lz4", "plain", 0.5,
     "data that fits: random reads no more than 2x slower than plain"),
)


def metric(row: dict[str, Any], unit: str) -> float:
    return float(row["read_mbps"] if unit == "MB/s" else row["read_iops"])


def add_ratios(results: dict[str, Any], units: dict[str, str]) -> None:
    """Add vs_plain and vs_none (throughput ratios) to every row."""
    for wname, rows in results.items():
        unit = units[wname]
        for base, key in (("plain", "vs_plain"), ("none", "vs_none")):
            b = rows.get(base)
            for row in rows.values():
                ok = b and "error" not in b and "error" not in row and metric(b, unit) > 0
                row[key] = round(metric(row, unit) / metric(b, unit), 3) if ok else None


def evaluate_targets(results: dict[str, Any], units: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for name, wname, num, den, minimum, words in TARGETS:
        rows = results.get(wname, {})
        a, b = rows.get(num), rows.get(den)
        ratio = None
        if a and b and "error" not in a and "error" not in b and metric(b, units[wname]) > 0:
            ratio = round(metric(a, units[wname]) / metric(b, units[wname]), 3)
        out.append({"name": name, "workload": wname, "config": num, "baseline": den,
                    "minimum": minimum, "ratio": ratio, "text": words,
                    "met": None if ratio is None else ratio >= minimum})
    return out


def _fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def workload_table(wname: str, title: str, unit: str, rows: dict[str, Any],
                   labels: dict[str, str]) -> str:
    lines = [f"**{wname}**: {title}", "",
             "| configuration | MB/s | IOPS | x plain | x comp. off | daemon hit % | "
             "orig/mem | peak MiB | anon / shmem / page cache MiB | daemon CPU s | disk MiB read |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for cfg, r in rows.items():
        label = labels.get(cfg, cfg)
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} ||||||||||")
            continue
        iops = _fmt(r["read_iops"])
        if r.get("write_iops"):
            iops += f" r + {_fmt(r['write_iops'])} w"
        mbps = _fmt(r["read_mbps"], ",.1f")
        hit = r.get("hit_ratio")
        mem = r.get("cgroup_memory") or {}
        # memory.stat's anon (the pool's private anonymous slabs included), shmem, file.
        split = "/".join(_mib(mem.get(k)) for k in ("anon", "shmem", "file")) if mem else "-"
        lines.append(
            f"| {label} | {mbps} | {iops} | {_fmt(r.get('vs_plain'), '.2f')} | "
            f"{_fmt(r.get('vs_none'), '.2f')} | {_fmt(None if hit is None else 100 * hit, '.1f')}"
            f" | {_fmt(r.get('orig_per_mem'), '.2f')} | {_mib(r.get('cgroup_peak'))} | {split} | "
            f"{_fmt(r.get('daemon_cpu_s'), '.1f')} | {_mib(r.get('disk_read_bytes'))} |")
    resident = [f"{labels.get(cfg, cfg)} {_mib(r['backing_resident_bytes'])} MiB"
                + (f" ({100 * r['backing_resident_bytes'] / r['disk_read_bytes']:.1f}% of the "
                   "data read)" if r.get("disk_read_bytes") else "")
                for cfg, r in rows.items() if "backing_resident_bytes" in r]
    if resident:
        lines += ["", "The data's own files in the page cache at the end (mincore): "
                  + "; ".join(resident) + "."]
    lines.append("")
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | needed | measured | met |", "|---|--:|--:|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['text']} | {t['minimum']:g}x | {_fmt(t['ratio'], '.2f')}x | {met} |")
    return "\n".join(lines) + "\n"


IOZONE_TITLES = {"write": "write", "rewrite": "rewrite", "read": "read",
                 "reread": "re-read", "random_read": "random read",
                 "random_write": "random write"}
GAIN, LOSS = 1.05, 0.95  # x plain above / below which a row is a gain / a loss


def add_iozone_ratios(iozone: dict[str, Any]) -> None:
    """Add vs_plain = {test: throughput / the plain directory's} to every iozone row."""
    base = iozone.get("plain", {})
    for row in iozone.values():
        if "error" in row or "error" in base:
            continue
        row["vs_plain"] = {t: round(row[t] / base[t], 3) for t in IOZONE_TITLES
                           if t in row and base.get(t)}


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return "gain" if ratio > GAIN else "loss" if ratio < LOSS else "even"


def iozone_table(iozone: dict[str, Any], labels: dict[str, str]) -> str:
    """One row per kind of I/O: MB/s of every configuration, and x plain with a gain /
    loss / even verdict for each zcachefs configuration."""
    if not iozone:
        return ""
    cfgs = list(iozone)
    others = [c for c in cfgs if c != "plain"]
    head = ["kind of I/O", *(f"{labels.get(c, c)} MB/s" for c in cfgs),
            *(f"{labels.get(c, c)} x plain" for c in others if "plain" in iozone)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for t, title in IOZONE_TITLES.items():
        if not any(t in r for r in iozone.values()):
            continue
        cells = [title]
        for c in cfgs:
            r = iozone[c]
            cells.append("failed" if "error" in r else _fmt(r.get(t, 0) / 1000, ",.1f"))
        if "plain" in iozone:
            for c in others:
                ratio = iozone[c].get("vs_plain", {}).get(t)
                cells.append(f"{_fmt(ratio, '.2f')} {verdict(ratio)}" if ratio else "-")
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"{labels.get(c, c)}: {r['error']}" for c, r in iozone.items() if "error" in r]
    if errors:
        lines += ["", "Failed: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def add_app_ratios(app_rows: dict[str, dict[str, Any]]) -> None:
    """Add vs_plain (rate / the plain directory's) to every real-application row."""
    for rows in app_rows.values():
        base = rows.get("plain")
        for row in rows.values():
            ok = base and "error" not in base and "error" not in row and base.get("rate")
            row["vs_plain"] = round(row["rate"] / base["rate"], 3) if ok else None


def app_table(name: str, title: str, unit: str, rows: dict[str, Any],
              labels: dict[str, str]) -> str:
    lines = [f"**{name}**: {title}", "",
             f"| configuration | {unit} | x plain | first pass MB/s | daemon hit % | "
             "orig/mem | peak MiB | disk MiB read | daemon CPU s | check |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for cfg, r in rows.items():
        label = labels.get(cfg, cfg)
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} |||||||||")
            continue
        hit = r.get("hit_ratio")
        first = r["warm_bytes"] / r["warm_s"] / 1e6 if r.get("warm_s") else None
        lines.append(
            f"| {label} | {_fmt(r['rate'], ',.1f')} | {_fmt(r.get('vs_plain'), '.2f')} | "
            f"{_fmt(first, ',.1f')} | {_fmt(None if hit is None else 100 * hit, '.1f')} | "
            f"{_fmt(r.get('orig_per_mem'), '.2f')} | {_mib(r.get('cgroup_peak'))} | "
            f"{_mib(r.get('disk_read_bytes'))} | {_fmt(r.get('daemon_cpu_s'), '.1f')} | "
            f"{r.get('check', '-')} |")
    lines.append("")
    return "\n".join(lines)


def extra_groups(iozone: dict[str, Any], app_rows: dict[str, dict[str, Any]]
                 ) -> dict[str, dict[str, Any]]:
    """iozone's tests and the real applications as chart groups: {group: {config:
    {"vs_plain": ratio}}}."""
    out: dict[str, dict[str, Any]] = {}
    for t, title in IOZONE_TITLES.items():
        rows = {c: {"vs_plain": r["vs_plain"][t]} for c, r in iozone.items()
                if t in r.get("vs_plain", {})}
        if any(c != "plain" for c in rows):
            out[f"iozone {title}"] = rows
    for name, rows in app_rows.items():
        got = {c: {"vs_plain": r["vs_plain"]} for c, r in rows.items() if r.get("vs_plain")}
        if any(c != "plain" for c in got):
            out[f"app: {name}"] = got
    return out


def chart(results: dict[str, Any], order: list[str], labels: dict[str, str],
          path: Path, title: str, extra: dict[str, dict[str, Any]] | None = None) -> None:
    """Grouped bars: throughput of each configuration / the plain directory's, per
    workload (log scale), with the targets marked; `extra` groups (iozone's tests, the
    real applications) in a second panel below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wnames = [w for w in results if any(c != "plain" for c in results[w])]
    cfgs = [c for c in order if c != "plain" and any(c in results[w] for w in wnames)]
    if extra:
        width_groups = max(len(wnames), len(extra))
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.4 * width_groups + 2), 10))
        _bars(ax2, extra, cfgs, labels)
        ax2.set_title("iozone and real applications, same budget", fontsize=10)
    else:
        fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(wnames) + 2), 5.2))
    width = 0.8 / max(1, len(cfgs))
    for i, cfg in enumerate(cfgs):
        xs, ys = [], []
        for j, w in enumerate(wnames):
            r = results[w].get(cfg)
            if r and r.get("vs_plain"):
                xs.append(j + (i - (len(cfgs) - 1) / 2) * width)
                ys.append(r["vs_plain"])
        ax.bar(xs, ys, width, label=labels.get(cfg, cfg))
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.2g}" if y < 10 else f"{y:.0f}", (x, y), ha="center",
                        va="bottom", fontsize=6.5, xytext=(0, 1), textcoords="offset points")
    for _, wname, _num, den, minimum, _ in TARGETS:
        if den == "plain" and wname in wnames:
            j = wnames.index(wname)
            ax.hlines(minimum, j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                      linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(wnames)))
    ax.set_xticklabels(wnames, rotation=15)
    ax.set_ylabel("throughput / plain directory (log scale)")
    ax.set_title(title, fontsize=10)
    if cfgs:
        ax.legend(fontsize=8, ncol=2)
    ax.text(0.0, -0.2, "dashed: targets vs plain (>= 5x random read, >= 6x re-read, "
            ">= 0.5x on data that fits)", transform=ax.transAxes, fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax: Any, groups: dict[str, dict[str, Any]], cfgs: list[str],
          labels: dict[str, str]) -> None:
    """Grouped bars of vs_plain (log scale) on `ax`."""
    names = list(groups)
    width = 0.8 / max(1, len(cfgs))
    for i, cfg in enumerate(cfgs):
        xs, ys = [], []
        for j, g in enumerate(names):
            r = groups[g].get(cfg)
            if r and r.get("vs_plain"):
                xs.append(j + (i - (len(cfgs) - 1) / 2) * width)
                ys.append(r["vs_plain"])
        ax.bar(xs, ys, width, label=labels.get(cfg, cfg))
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.2g}" if y < 10 else f"{y:.0f}", (x, y), ha="center",
                        va="bottom", fontsize=6.5, xytext=(0, 1), textcoords="offset points")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15)
    ax.set_ylabel("throughput / plain directory (log scale)")
    if cfgs:
        ax.legend(fontsize=8, ncol=2)

#!/usr/bin/env python3
"""Regenerate the tables of docs/control.md from the code, so they cannot disagree.

Usage: scripts/gen_control_doc.py [--check] [FILE]

The tables sit between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->`
markers (NAME: knobs, counters, columns); the prose around them is left alone. They
are built from settings.CONTROLS (the control directory's rows of the settings
table), stats.COUNTERS, the Prometheus metric names of stats.py and client.COLUMNS.
--check changes nothing and exits 1 if FILE is out of date
(tests/mount/test_control_mount.py runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zcachefs import client, stats  # noqa: E402
from zcachefs.control import Controls  # noqa: E402
from zcachefs.settings import CONTROLS  # noqa: E402

DOC = ROOT / "docs" / "control.md"
_REGION = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated: \2 -->)",
                     re.DOTALL)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _metric_names() -> dict[str, str]:
    """Counter name -> Prometheus metric name, as the daemon renders stats.prom."""
    return {name: stats.metric_name(name) for name in stats.COUNTERS}


def knobs() -> str:
    rows = ["| name | access | file mode | description |", "|---|---|---|---|"]
    for s in CONTROLS:
        access = "action (write 1)" if s.action else (
            "read-write" if s.writable else "read-only")
        mode = "0644" if Controls.writable(s.name) else "0444"
        rows.append(f"| `{s.name}` | {access} | {mode} | {_cell(s.ctl_doc)} |")
    return "\n".join(rows) + "\n"


def counters() -> str:
    metrics = _metric_names()
    rows = ["| name | type | description | Prometheus metric |", "|---|---|---|---|"]
    for name, (kind, doc) in stats.COUNTERS.items():
        rows.append(f"| `{name}` | {kind} | {_cell(doc)} | `{metrics[name]}` |")
    return "\n".join(rows) + "\n"


def columns() -> str:
    rows = ["| column | shows |", "|---|---|",
            "| MOUNTPOINT | the mount |",
            "| ALGORITHM | the `compressor` knob |"]
    for c in client.COLUMNS:
        rows.append(f"| {c.title} | `{c.counter}` ({_cell(stats.COUNTERS[c.counter][1])}) |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[], str]] = {"knobs": knobs, "counters": counters,
                                        "columns": columns}


def render(text: str) -> str:
    """`text` with every generated region rebuilt; unknown or missing regions raise."""
    seen: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise ValueError(f"unknown generated region {name!r}")
        seen.add(name)
        return m.group(1) + TABLES[name]() + m.group(4)

    out = _REGION.sub(fill, text)
    missing = set(TABLES) - seen
    if missing:
        raise ValueError(f"no generated region for {', '.join(sorted(missing))}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file is out of date; change nothing")
    parser.add_argument("file", nargs="?", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.file} is out of date: run scripts/gen_control_doc.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.file.write_text(new, encoding="utf-8")
        print(f"updated {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `zcachefs` command and what it prints, for the tests of the client and of the
control surface (tests/mount/test_control_mount.py, tests/mount/test_stat_cli.py,
tests/unit/test_statcli.py): run it as a user would (a subprocess, as uid 1000 when
asked), and read Prometheus text strictly, as a scraper would.

Nothing here imports zcachefs; safe from any thread.
"""

from __future__ import annotations

import re
import subprocess
import sys

UID, GID = 1000, 1000  # the other user (setpriv), as in the mount tests


def zcachefs(*args: str, user: bool = False, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    """Run the `zcachefs` command (as uid 1000 when `user`)."""
    cmd = [sys.executable, "-m", "zcachefs", *args]
    if user:
        cmd = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")


_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)'
                     r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})?'
                     r' (\S+)')


def parse_prometheus(text: str) -> dict[str, dict[str, object]]:
    """A strict reader of the Prometheus text exposition format (version 0.0.4):
    family -> {"help", "type", "samples": [(labels, value)]}. Asserts on anything
    a scraper would reject: samples outside their family, TYPE after samples, a
    second HELP or TYPE, a bad name, label set or value."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, word, name, rest = [*line.split(" ", 3), ""][:4]
            assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), line
            fam = families.setdefault(name, {"samples": []})
            key = word.lower()
            assert key not in fam, f"second {word} for {name}"
            if key == "type":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert not fam["samples"], f"TYPE after samples of {name}"
            else:
                assert "\n" not in rest and not re.search(r"\\[^\\n]", rest), line
            fam[key] = rest
            current = name
        elif line.startswith("#") or not line.strip():
            continue
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert name == current, f"{name} outside its family (after {current})"
            samples = families[name]["samples"]
            assert isinstance(samples, list)
            samples.append((labels or "", float(value)))
    for name, fam in families.items():
        assert "type" in fam and "help" in fam and fam["samples"], name
    return families

"""The dependency rule: the pure core never imports pyfuse3, trio or psutil."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "zcachefs"
CORE = ["options", "inodes", "backing", "logs", "notify", "codecs", "pool", "pagecache",
        "cache", "stats", "control", "handles", "workers"]
FORBIDDEN = {"pyfuse3", "trio", "psutil"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_fuse_trio_psutil(module: str) -> None:
    assert not imported(PKG / f"{module}.py") & FORBIDDEN


def test_every_module_is_classified() -> None:
    adapters = {"fs", "ctldir", "entries", "tasks", "mount", "cli", "memory", "pressure",
                "statcli", "__init__", "__main__"}
    assert {p.stem for p in PKG.glob("*.py")} <= set(CORE) | adapters

"""The dependency rule: the pure core never imports pyfuse3, trio or psutil."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "zcachefs"
CORE = ["options", "inodes", "backing", "logs", "notify", "codecs", "pool", "pagecache",
        "cache", "files", "writes", "handoff", "stats", "control", "settings", "handles",
        "workers", "slabs", "compress", "_libc", "creds", "process"]
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
                "client", "live", "mounts", "threads", "__init__", "__main__"}
    assert {p.stem for p in PKG.glob("*.py")} <= set(CORE) | adapters


CLIENT = ("client", "live", "mounts")  # zcachefs stat/top/set/drop
CLIENT_MAY_IMPORT = {"settings", "stats", *CLIENT}


def package_imports(path: Path) -> set[str]:
    """The zcachefs modules a module imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= ({node.module.split(".")[0]} if node.module
                      else {a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "zcachefs":
            names.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("zcachefs.")}
    return names


def test_the_client_imports_only_settings_and_stats() -> None:
    """The client commands load no engine: from the package they import settings and
    stats only (and each other), and importing them loads no codec library, ctypes,
    mmap or engine module (settings and stats keep their own imports light)."""
    import subprocess
    import sys

    for module in CLIENT:
        assert package_imports(PKG / f"{module}.py") <= CLIENT_MAY_IMPORT, module
    code = ("import sys, zcachefs.client; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('zcachefs.') or m in ('lz4', 'lzo', 'ctypes', 'mmap', "
            "'pyfuse3', 'trio', 'psutil'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert set(loaded) == {f"zcachefs.{m}" for m in CLIENT_MAY_IMPORT}, loaded


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_only_the_core(module: str) -> None:
    """Inside the package the core depends on the core alone: no adapter (fs, ctldir,
    tasks, mount, pressure, memory...) and no client module."""
    assert package_imports(PKG / f"{module}.py") <= set(CORE), module

"""scripts/bench as a module, for the tests of its pieces (it has no .py suffix, so it is
loaded from its path). Loading it runs its imports, not the benchmark."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import SourceFileLoader
from typing import Any

from tests.support import REPO

SCRIPTS = REPO / "scripts"


def load_bench() -> Any:
    """scripts/bench as a module (it has no .py suffix)."""
    loader = SourceFileLoader("bench_script", str(SCRIPTS / "bench"))
    spec = importlib.util.spec_from_loader("bench_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module

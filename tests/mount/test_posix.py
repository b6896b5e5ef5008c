"""Differential POSIX tests: every scenario must observe the same on the mount as on
a plain directory of the same ext4 filesystem (bytes, stat fields, errno names)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.scenarios import SCENARIOS, run_scenario


def _json(obs: object) -> object:
    return json.loads(json.dumps(obs))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_matches_plain_directory(name: str, pair: tuple[Path, Path]) -> None:
    plain, mounted = pair
    old = os.umask(0o022)
    try:
        expected = _json(run_scenario(name, plain))
        got = _json(run_scenario(name, mounted))
    finally:
        os.umask(old)
    diffs = [(e, g) for e, g in zip(expected, got, strict=True) if e != g]  # type: ignore[call-overload]
    assert not diffs, "\n".join(f"plain {e}\nmount {g}" for e, g in diffs)

"""What `mount` asks of pyfuse3 at init: auto_inval_data=off sets the switch our pyfuse3
build reads (scripts/build-pyfuse3); on a stock pyfuse3 the kernel keeps libfuse's
FUSE_CAP_AUTO_INVAL_DATA, and the daemon says so once. poll_spin turns on the request
loop's spin (our build only, two CPUs or more), watching the thread pool's eventfd."""

from __future__ import annotations

import logging
import os
from typing import Any

import pyfuse3
import pytest

from tests.adapter.conftest import OpsFactory
from zcachefs import mount
from zcachefs.options import parse_options

RAM = 1 << 30


@pytest.mark.parametrize(("option", "patched", "kept", "warned"), [
    ("auto_inval_data=off", True, False, False),
    ("auto_inval_data=on", True, True, False),
    ("auto_inval_data=off", False, True, True),
    ("auto_inval_data=on", False, True, False),
])
def test_auto_inval_data_switch(make_ops: OpsFactory, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture, option: str,
                                patched: bool, kept: bool, warned: bool) -> None:
    if patched:
        monkeypatch.setattr(pyfuse3, "AUTO_INVAL_DATA_OPTIONAL", True, raising=False)
    else:
        monkeypatch.delattr(pyfuse3, "AUTO_INVAL_DATA_OPTIONAL", raising=False)
    a = make_ops(option)
    with caplog.at_level(logging.WARNING, logger="zcachefs.mount"):
        assert mount.auto_inval_data(a.ops, parse_options([option], RAM)) is kept
    assert a.ops.disable_auto_inval_data is (option.endswith("off"))
    assert any("auto_inval_data stays on" in r.getMessage() for r in caplog.records) is warned


def test_the_default_is_off() -> None:
    assert parse_options([], RAM).auto_inval_data is False


class SpinRecorder:
    """Stands in for our pyfuse3 build's set_poll_spin / poll_spin_stats."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []
        self.counters = (0, 0, 0)

    def set_poll_spin(self, usec: int, wake_fds: Any = ()) -> None:
        self.calls.append((usec, list(wake_fds)))

    def poll_spin_stats(self) -> tuple[int, int, int]:
        return self.counters


@pytest.fixture
def spin(monkeypatch: pytest.MonkeyPatch) -> SpinRecorder:
    rec = SpinRecorder()
    monkeypatch.setattr(pyfuse3, "POLL_SPIN", True, raising=False)
    monkeypatch.setattr(pyfuse3, "set_poll_spin", rec.set_poll_spin, raising=False)
    monkeypatch.setattr(pyfuse3, "poll_spin_stats", rec.poll_spin_stats, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    return rec


def test_poll_spin_watches_the_thread_pools_eventfd(make_ops: OpsFactory,
                                                    spin: SpinRecorder) -> None:
    a = make_ops()
    assert mount.poll_spin(a.ops, parse_options([], RAM)) == 50
    assert spin.calls == [(50, [a.ops.threads.wake_fd])]
    spin.counters = (10, 7, 3_000_000)
    assert mount.spin_summary(50) == ("; poll spins: 10, 7 found a request, "
                                      "0.003 s spinning")
    assert mount.spin_summary(0) == ""


@pytest.mark.parametrize(("option", "patched", "cpus", "expect", "message"), [
    ("poll_spin=0", True, {0, 1}, 0, None),
    ("poll_spin=200", True, {0, 1}, 200, None),
    ("poll_spin=50", True, {3}, 0, "the daemon may run on one CPU only"),
    ("poll_spin=50", False, {0, 1}, 0, "poll_spin is off: this pyfuse3"),
])
def test_poll_spin_is_off_where_it_cannot_pay(
        make_ops: OpsFactory, spin: SpinRecorder, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, option: str, patched: bool, cpus: set[int],
        expect: int, message: str | None) -> None:
    if not patched:
        monkeypatch.delattr(pyfuse3, "POLL_SPIN", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    a = make_ops(option)
    with caplog.at_level(logging.INFO, logger="zcachefs.mount"):
        assert mount.poll_spin(a.ops, parse_options([option], RAM)) == expect
    assert [usec for usec, _ in spin.calls] == ([expect] if expect else [])
    logged = [r.getMessage() for r in caplog.records]
    assert any(message in m for m in logged) if message else not logged


@pytest.mark.parametrize("bad", ["poll_spin=-1", "poll_spin=10001", "poll_spin=fast"])
def test_poll_spin_rejects_bad_values(bad: str) -> None:
    from zcachefs.options import OptionError

    with pytest.raises(OptionError, match="poll_spin"):
        parse_options([bad], RAM)

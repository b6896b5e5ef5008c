"""What `mount` asks of pyfuse3 at init: auto_inval_data=off sets the switch our pyfuse3
build reads (scripts/build-pyfuse3); on a stock pyfuse3 the kernel keeps libfuse's
FUSE_CAP_AUTO_INVAL_DATA, and the daemon says so once."""

from __future__ import annotations

import logging

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

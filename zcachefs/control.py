"""The control surface of one mount: read and write its names.

The names are the control directory's settings and actions (`settings.CONTROLS`:
name, parse, check, get, apply, doc), then the counters (`stats.COUNTERS`), then the
renderings of all counters (`RENDERED`). The control files
(`MOUNTPOINT/.zcachefs/<name>`), the xattrs (`user.zcachefs.<name>`), the client and
the docs all read those tables, so they cannot disagree.

A write is parsed and checked completely before anything changes. Every refusal is a
`ControlError` carrying the errno the xattr interface answers with: `EINVAL` for a
bad value, `ENODATA` (Linux's ENOATTR) for an unknown name, `EROFS` for a read-only
one; the state is then unchanged. Accepted changes are logged with the old and the
new value.

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe (trio thread).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from . import stats
from .cache import Cache
from .settings import CONTROLS, Setting

log = logging.getLogger(__name__)

RENDERED = ("stats", "stats.json", "stats.prom")
_RENDER: dict[str, Callable[[stats.Snapshot], str]] = {
    "stats": stats.text, "stats.json": stats.json_text, "stats.prom": stats.prometheus}
_BY_NAME: dict[str, Setting] = {s.name: s for s in CONTROLS}


class ControlError(Exception):
    """A refused read or write; `errno` says which kind, str() why (one line)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def _unknown(name: str) -> ControlError:
    return ControlError(errno.ENODATA, f"{name}: unknown name")


class Controls:
    """Reads and writes of the control surface of one mount."""

    def __init__(self, cache: Cache, ram: int, on_change: Callable[[], None] = lambda: None
                 ) -> None:
        self.cache: Cache = cache
        self.ram = ram
        self.on_change = on_change

    @staticmethod
    def names() -> list[str]:
        """Every name, settings and actions first, then counters, then rendered files."""
        counters = [n for n in stats.COUNTERS if n not in _BY_NAME]
        return [s.name for s in CONTROLS] + counters + list(RENDERED)

    @staticmethod
    def writable(name: str) -> bool:
        setting = _BY_NAME.get(name)
        return setting is not None and setting.writable

    @staticmethod
    def exists(name: str) -> bool:
        return name in _BY_NAME or name in stats.COUNTERS or name in RENDERED

    def read(self, name: str) -> str:
        """The file content for `name` (one value and a newline, or a rendering)."""
        render = _RENDER.get(name)
        if render is not None:
            return render(self.snapshot())
        setting = _BY_NAME.get(name)
        if setting is not None and setting.get is not None:
            return f"{setting.get(self.cache)}\n"
        if name in stats.COUNTERS:
            return stats.number(self.snapshot()[name]) + "\n"
        raise _unknown(name)

    def write(self, name: str, raw: bytes) -> None:
        """Parse, check and apply a new value (all or nothing)."""
        setting = _BY_NAME.get(name)
        if setting is None or not setting.writable or setting.apply is None \
                or setting.get is None:
            if self.exists(name):
                raise ControlError(errno.EROFS, f"{name}: read-only")
            raise _unknown(name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ControlError(errno.EINVAL, f"{name}: value is not UTF-8 text") from None
        text = text.strip()
        if len(text) > 64 or "\x00" in text:
            raise ControlError(errno.EINVAL, f"{name}: value too long or has NUL bytes")
        try:
            value = setting.check(setting.parse(text), self.ram, self.cache.page_size)
        except ValueError as exc:
            raise ControlError(errno.EINVAL, f"{name}: {exc}") from None
        old = setting.get(self.cache)
        setting.apply(self.cache, value)
        if setting.action:
            log.info("control: %s done", name)
        else:
            # WARNING for log_level: an INFO line would be hidden by the new level.
            log.log(logging.WARNING if name == "log_level" else logging.INFO,
                    "control: %s changed from %s to %s", name, old, setting.get(self.cache))
        self.on_change()

    def snapshot(self) -> dict[str, float]:
        """Every counter at one instant (a copy of `Cache.statistics()`)."""
        return dict(self.cache.statistics())

    def prometheus(self) -> str:
        """Prometheus text exposition format (HELP/TYPE per metric)."""
        return stats.prometheus(self.snapshot())

"""The control surface: one table of knobs, the counters, and their renderings.

Every tunable is one `Knob` (name, parse, format, get, set, doc). The control files
(`MOUNTPOINT/.zcachefs/<name>`), the xattrs (`user.zcachefs.<name>`), the CLI and the
docs all read `Controls.knobs` and `stats.COUNTERS`, so they cannot disagree.

A write is parsed completely before anything changes: a bad value raises
`ControlError` (EINVAL), an unknown name `UnknownName` (ENOATTR), a read-only one
`ReadOnly` (EROFS), and the state is unchanged. Accepted changes are logged with the
old and new value.

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe (trio thread).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import codecs, stats
from .cache import Cache
from .options import parse_percent, parse_size

log = logging.getLogger(__name__)

ACTIONS = ("drop_caches", "reset_stats")
RENDERED = ("stats", "stats.json", "stats.prom")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ControlError(ValueError):
    """A bad value for a knob; str() says why (one line)."""


class UnknownName(KeyError):
    pass


class ReadOnly(PermissionError):
    pass


@dataclass(frozen=True)
class Knob:
    name: str
    doc: str
    get: Callable[[Controls], Any]
    parse: Callable[[Controls, str], Any] | None  # None: read-only
    apply: Callable[[Controls, Any], None] | None
    fmt: Callable[[Any], str] = str


def _size(c: Controls, text: str) -> int:
    n = parse_size(text).resolve(c.ram)
    if n > c.ram:
        raise ValueError(f"{n} bytes is more than the usable RAM ({c.ram} bytes)")
    return n


def _cache_size(c: Controls, text: str) -> int:
    n = _size(c, text)
    if n < c.cache.page_size:
        raise ValueError(f"must be at least one page ({c.cache.page_size} bytes)")
    return n


def _threshold(c: Controls, text: str) -> int:
    n = parse_size(text).resolve(c.cache.page_size)
    if not 0 < n <= c.cache.page_size:
        raise ValueError(f"must be between 1 and page_size ({c.cache.page_size})")
    return n


def _level(c: Controls, text: str) -> str:
    low = text.strip().lower()
    if low not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return low


def _action(c: Controls, text: str) -> bool:
    """1 runs the action; 0 (what the file reads) does nothing, so a saved
    `getfattr -d` can be restored with `setfattr --restore`."""
    value = text.strip()
    if value not in ("0", "1"):
        raise ValueError("write 1 to run the action (0 does nothing)")
    return value == "1"


def _set_level(c: Controls, level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def _set_memlimit(c: Controls, n: int) -> None:
    c.cache.pool.set_memlimit(n)


def _drop(c: Controls, run: bool) -> None:
    if run:
        c.cache.drop_all()


def _reset(c: Controls, run: bool) -> None:
    if run:
        stats.reset(c.cache)


KNOBS: tuple[Knob, ...] = (
    Knob("memlimit", "memory limit of the compressed pool in bytes (K/M/G, N% of RAM)",
         lambda c: c.cache.pool.memlimit, _size, _set_memlimit),
    Knob("cache_size", "tier-1 page cache size in bytes (K/M/G, N% of RAM)",
         lambda c: c.cache.configured * c.cache.page_size, _cache_size,
         lambda c, n: c.cache.set_cache_size(n)),
    Knob("compressor", "codec for newly stored pages: " + ", ".join(codecs.BY_NAME),
         lambda c: c.cache.codec.name, lambda c, t: codecs.get(t).name,
         lambda c, name: c.cache.set_compressor(name)),
    Knob("threshold", "pages compressing to more bytes are stored raw (free room only)",
         lambda c: c.cache.pool.threshold, _threshold,
         lambda c, n: setattr(c.cache.pool, "threshold", n)),
    Knob("accept_threshold_percent", "after the pool fills, accept again below this % "
         "of memlimit", lambda c: c.cache.pool.accept_threshold_percent,
         lambda c, t: parse_percent(t),
         lambda c, n: setattr(c.cache.pool, "accept_threshold_percent", n)),
    Knob("page_size", "cache page size in bytes (set at mount time)",
         lambda c: c.cache.page_size, None, None),
    Knob("log_level", "daemon log level: " + ", ".join(LOG_LEVELS),
         lambda c: logging.getLevelName(logging.getLogger().level).lower(), _level,
         _set_level),
    Knob("drop_caches", "write 1: drop every page from both tiers",
         lambda c: 0, _action, _drop),
    Knob("reset_stats", "write 1: zero the event counters",
         lambda c: 0, _action, _reset),
)
KNOB_BY_NAME = {k.name: k for k in KNOBS}


class Controls:
    """Reads and writes of the control surface of one mount."""

    def __init__(self, cache: Cache, ram: int, on_change: Callable[[], None] = lambda: None
                 ) -> None:
        self.cache: Cache = cache
        self.ram = ram
        self.on_change = on_change

    @staticmethod
    def names() -> list[str]:
        """Every name, knobs first, then counters, then rendered files."""
        counters = [n for n in stats.COUNTERS if n not in KNOB_BY_NAME]
        return [k.name for k in KNOBS] + counters + list(RENDERED)

    @staticmethod
    def writable(name: str) -> bool:
        knob = KNOB_BY_NAME.get(name)
        return knob is not None and knob.parse is not None

    @staticmethod
    def exists(name: str) -> bool:
        return name in KNOB_BY_NAME or name in stats.COUNTERS or name in RENDERED

    def read(self, name: str) -> str:
        """The file content for `name` (one value and a newline, or a rendering)."""
        if name == "stats":
            return "".join(f"{k} {_num(v)}\n" for k, v in self.snapshot().items())
        if name == "stats.json":
            return json.dumps(dict(self.snapshot()), indent=1) + "\n"
        if name == "stats.prom":
            return self.prometheus()
        knob = KNOB_BY_NAME.get(name)
        if knob is not None:
            return knob.fmt(knob.get(self)) + "\n"
        if name in stats.COUNTERS:
            return _num(stats.snapshot(self.cache)[name]) + "\n"
        raise UnknownName(name)

    def write(self, name: str, raw: bytes) -> None:
        """Parse and apply a new value (all or nothing)."""
        knob = KNOB_BY_NAME.get(name)
        if knob is None:
            if self.exists(name):
                raise ReadOnly(name)
            raise UnknownName(name)
        if knob.parse is None or knob.apply is None:
            raise ReadOnly(name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ControlError(f"{name}: value is not UTF-8 text") from None
        text = text.strip()
        if len(text) > 64 or "\x00" in text:
            raise ControlError(f"{name}: value too long or has NUL bytes")
        try:
            value = knob.parse(self, text)
        except ValueError as exc:
            raise ControlError(f"{name}: {exc}") from None
        old = knob.get(self)
        knob.apply(self, value)
        if name in ACTIONS:
            log.info("control: %s done", name)
        else:
            # WARNING for log_level: an INFO line would be hidden by the new level.
            log.log(logging.WARNING if name == "log_level" else logging.INFO,
                    "control: %s changed from %s to %s", name, knob.fmt(old),
                    knob.fmt(knob.get(self)))
        self.on_change()

    def snapshot(self) -> dict[str, float]:
        values = dict(stats.snapshot(self.cache))
        return values

    def prometheus(self) -> str:
        """Prometheus text exposition format (HELP/TYPE per metric)."""
        out = []
        for name, value in self.snapshot().items():
            kind, doc = stats.COUNTERS[name]
            metric = metric_name(name)
            out.append(f"# HELP {metric} {doc}\n# TYPE {metric} {kind}\n{metric} {_num(value)}\n")
        return "".join(out)


def metric_name(name: str) -> str:
    """The Prometheus metric of a counter: counters end in _total, and only they do
    (so the gauge mem_used_total is exported as zcachefs_mem_used_bytes)."""
    if stats.COUNTERS[name][0] == "counter":
        return f"zcachefs_{name}_total"
    if name.endswith("_total"):
        return f"zcachefs_{name[:-len('_total')]}_bytes"
    return f"zcachefs_{name}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"

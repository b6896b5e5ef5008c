"""The configurations scripts/bench can run, by name: what each mounts (nothing, zcachefs
with which options, or scripts/ramfs.py) and its label in the report. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    """One configuration: its name, its label in the report, and what it mounts."""

    name: str
    label: str
    kind: str  # "plain", "zcachefs" or "ramfs"
    options: dict[str, str] = field(default_factory=dict)


CONFIGS = {
    "plain": Config("plain", "plain directory", "plain"),
    "none": Config("none", "zcachefs, compression off", "zcachefs", {"compressor": "none"}),
    "lz4": Config("lz4", "zcachefs lz4", "zcachefs", {"compressor": "lz4"}),
    "lzo": Config("lzo", "zcachefs lzo", "zcachefs", {"compressor": "lzo"}),
    "lz4-dio": Config("lz4-dio", "zcachefs lz4, direct_io", "zcachefs",
                      {"compressor": "lz4", "direct_io": ""}),
    "ramfs": Config("ramfs", "pyfuse3 RAM ceiling (fit only)", "ramfs"),
    # Not run by default (diagnostics, --configs): the pool keeps pages that compress to
    # at most 3 KiB instead of half a page.
    "lz4-t3k": Config("lz4-t3k", "zcachefs lz4, threshold=3072", "zcachefs",
                      {"compressor": "lz4", "threshold": "3072"}),
    # Cache page (compression unit) size against the default.
    "lz4-4k": Config("lz4-4k", "zcachefs lz4, page_size=4K", "zcachefs",
                     {"compressor": "lz4", "page_size": "4K"}),
    "lz4-16k": Config("lz4-16k", "zcachefs lz4, page_size=16K", "zcachefs",
                      {"compressor": "lz4", "page_size": "16K"}),
    # The pool's slabs not MADV_FREE: the kernel cannot discard pool pages itself.
    "lz4-nv": Config("lz4-nv", "zcachefs lz4, volatile=off", "zcachefs",
                     {"compressor": "lz4", "volatile": "off"}),
}
DEFAULT_CONFIGS = ("plain", "none", "lz4", "lzo", "lz4-dio", "ramfs")
LABELS = {c.name: c.label for c in CONFIGS.values()}



"""Statistics: one immutable snapshot of every counter, taken in one call.

Names follow zcache (zero_pages, orig_data_size, compr_data_size, mem_used_total),
zswap (stored_pages, same_filled_pages, reject_compress_poor, pool_limit_hit),
zram (mem_used_max) and cleancache (puts, invalidates; hits/misses are its
succ_gets/failed_gets). `COUNTERS` holds the kind and one-line description of each;
the control files, `zcachefs stat --help` and the docs read it. The values come from
`Cache.statistics()`, one frozen snapshot; the renderings here (`text`, `json_text`,
`prometheus`; `human` for the client's tables) take that snapshot or its values, so
the client can use them without the engine.

Must not import the engine at run time (the client imports this module: no cache,
pool or codecs, which load ctypes, mmap, lz4 and lzo), nor pyfuse3, trio or psutil.
Thread-safe (pure functions; the counters are reset by their owner, `Cache.reset_stats`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# name -> (kind, description). kind: "gauge" (a level) or "counter" (only grows until
# reset_stats); Prometheus TYPE lines use it.
COUNTERS: dict[str, tuple[str, str]] = {
    "zero_pages": ("gauge", "zero-filled pages in the pool (they cost no data memory)"),
    "same_filled_pages": ("gauge",
                          "pages of one repeated non-zero byte in the pool (no data memory)"),
    "stored_pages": ("gauge", "pages in the pool holding data (compressed or raw)"),
    "raw_pages": ("gauge", "pages stored as they are because they did not compress to "
                           "the threshold (part of stored_pages)"),
    "raw_data_size": ("gauge", "bytes of the raw-stored pages (part of compr_data_size)"),
    "orig_data_size": ("gauge",
                       "uncompressed bytes of the compressed pages in the pool (zero and "
                       "same-filled pages excluded)"),
    "compr_data_size": ("gauge", "compressed bytes of the pages in the pool"),
    "mem_used_total": ("gauge",
                       "bytes the pool really uses: slab memory (slack included) + index "
                       "entries"),
    "mem_used_max": ("gauge", "highest mem_used_total since mount or reset_stats"),
    "memlimit": ("gauge", "the pool's memory limit in bytes (as configured)"),
    "memlimit_effective": ("gauge",
                           "the limit in force: memlimit, or lower while under memory "
                           "pressure"),
    "pressure_shrinks": ("counter", "times memory pressure made the caches give memory back"),
    "cache_size": ("gauge", "tier-1 (uncompressed page cache) limit in bytes"),
    "cache_pages": ("gauge", "pages in tier 1, including those waiting for compression"),
    "cache_files": ("gauge", "files the cache keeps state for (open, or with cached pages)"),
    "inodes": ("gauge", "backing inodes the kernel holds references to (each costs the "
                        "daemon ~1 KiB and an O_PATH descriptor until the kernel forgets it)"),
    "hits": ("counter", "page lookups that found the page in the compressed pool"),
    "misses": ("counter", "page lookups that found the page in no tier"),
    "cache_hits": ("counter", "page lookups served by tier 1"),
    "cache_misses": ("counter", "page lookups tier 1 could not serve"),
    "puts": ("counter", "pages offered to the pool"),
    "invalidates": ("counter", "pool pages dropped because their file changed"),
    "evicted_pages": ("counter", "pool pages evicted (LRU, second chance) to stay in limit"),
    "reject_compress_poor": ("counter",
                             "compressions that came out above the threshold (the page is "
                             "then stored raw)"),
    "reject_raw_full": ("counter", "raw pages refused because the pool had no free room "
                                   "(they never evict compressed pages)"),
    "reject_cold": ("counter", "new pages refused while the pool was nearly full (it "
                               "takes them when they come back: scan resistance)"),
    "raw_skips": ("counter", "pages stored raw without compressing, because they did not "
                             "compress last time"),
    "pool_limit_hit": ("counter",
                       "stores refused because the pool was at its limit (or, once full, "
                       "not yet back under accept_threshold_percent)"),
    "reject_alloc_fail": ("counter", "stores refused because no slab could be mapped"),
    "reclaimed_pages": ("counter",
                        "pool pages the kernel discarded while memory was short (the "
                        "slabs are MADV_FREE then); dropped, read again from the file"),
    "compacted_pages": ("counter",
                        "pool pages moved into fuller slabs so that partly empty ones "
                        "(left by rewrites and evictions) could be given back"),
    "backing_reads": ("counter", "read calls made on backing files to fill the cache"),
    "backing_read_bytes": ("counter", "bytes read from backing files to fill the cache"),
    "backing_fallbacks": ("counter", "backing reads that could not use RWF_DONTCACHE and "
                                     "dropped the range with fadvise(DONTNEED) instead"),
    "write_fills": ("counter", "pages cached from writes through the mount"),
    "hit_ratio": ("gauge", "(cache_hits + hits) / page lookups"),
    "compression_ratio": ("gauge", "orig_data_size / mem_used_total (effective, all costs)"),
}


Snapshot = Mapping[str, float]  # every name of COUNTERS, read at one instant


def number(v: float) -> str:
    """A value as the control files show it: integers without a point, ratios to 4."""
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"


def text(snap: Snapshot) -> str:
    """The `stats` file: one `name value` line per counter."""
    return "".join(f"{k} {number(v)}\n" for k, v in snap.items())


def json_text(snap: Snapshot) -> str:
    """The `stats.json` file: one JSON object."""
    return json.dumps(dict(snap), indent=1) + "\n"


def human(nbytes: float) -> str:
    """A size in binary units as zramctl prints them: 0B, 512B, 4K, 1.5M, 2G."""
    n = float(nbytes)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            break
        n /= 1024
    if unit == "B" or n.is_integer():
        return f"{n:.0f}{unit}"
    return f"{n:.1f}{unit}"


def metric_name(name: str) -> str:
    """The Prometheus metric of a counter: counters end in _total, and only they do
    (so the gauge mem_used_total is exported as zcachefs_mem_used_bytes)."""
    if COUNTERS[name][0] == "counter":
        return f"zcachefs_{name}_total"
    if name.endswith("_total"):
        return f"zcachefs_{name[:-len('_total')]}_bytes"
    return f"zcachefs_{name}"


def prometheus(snap: Snapshot) -> str:
    """The `stats.prom` file: Prometheus text exposition format (HELP/TYPE per metric)."""
    out = []
    for name, value in snap.items():
        kind, doc = COUNTERS[name]
        metric = metric_name(name)
        out.append(f"# HELP {metric} {doc}\n# TYPE {metric} {kind}\n{metric} {number(value)}\n")
    return "".join(out)


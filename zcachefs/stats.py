"""Statistics: one immutable snapshot of every counter, taken in one call.

Names follow zcache (zero_pages, orig_data_size, compr_data_size, mem_used_total),
zswap (stored_pages, same_filled_pages, reject_compress_poor, pool_limit_hit),
zram (mem_used_max) and cleancache (puts, invalidates; hits/misses are its
succ_gets/failed_gets). `COUNTERS` holds the one-line description of each; the
control files, `zcachefs stat --help` and the docs read it.

Pure core: must not import pyfuse3, trio or psutil.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cache import Cache

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
    "backing_reads": ("counter", "read calls made on backing files to fill the cache"),
    "backing_read_bytes": ("counter", "bytes read from backing files to fill the cache"),
    "backing_fallbacks": ("counter", "backing reads that could not use RWF_DONTCACHE and "
                                     "dropped the range with fadvise(DONTNEED) instead"),
    "write_fills": ("counter", "pages cached from writes through the mount"),
    "hit_ratio": ("gauge", "(cache_hits + hits) / page lookups"),
    "compression_ratio": ("gauge", "orig_data_size / mem_used_total (effective, all costs)"),
}


def snapshot(cache: Cache) -> Mapping[str, float]:
    """Every counter of COUNTERS, read at one instant (no await in between)."""
    pool, pc, cc = cache.pool, cache.pool.c, cache.c
    used = pool.mem_used_total
    lookups = cc.cache_hits + cc.cache_misses
    values: dict[str, float] = {
        "zero_pages": pool.zero_pages,
        "same_filled_pages": pool.same_filled_pages,
        "stored_pages": pool.stored_pages,
        "raw_pages": pool.raw_pages,
        "raw_data_size": pool.raw_data_size,
        "orig_data_size": pool.orig_data_size,
        "compr_data_size": pool.compr_data_size,
        "mem_used_total": used,
        "mem_used_max": max(pc.mem_used_max, used),
        "memlimit": pool.memlimit,
        "memlimit_effective": pool.limit,
        "pressure_shrinks": cc.pressure_shrinks,
        "cache_size": cache.configured * cache.page_size,
        "cache_pages": len(cache.tier1) + len(cache.pending),
        "cache_files": cache.file_count,
        "inodes": cache.inodes_known(),
        "hits": pc.succ_gets,
        "misses": pc.failed_gets,
        "cache_hits": cc.cache_hits,
        "cache_misses": cc.cache_misses,
        "puts": pc.puts,
        "invalidates": pc.invalidates,
        "evicted_pages": pc.evicted_pages,
        "reject_compress_poor": pc.reject_compress_poor,
        "reject_raw_full": pc.reject_raw_full,
        "reject_cold": pc.reject_cold,
        "raw_skips": pc.raw_skips,
        "pool_limit_hit": pc.pool_limit_hit,
        "reject_alloc_fail": pc.reject_alloc_fail,
        "reclaimed_pages": pc.reclaimed_pages,
        "backing_reads": cc.backing_reads,
        "backing_read_bytes": cc.backing_read_bytes,
        "backing_fallbacks": cc.backing_fallbacks,
        "write_fills": cc.write_fills,
        "hit_ratio": round((cc.cache_hits + pc.succ_gets) / lookups, 4) if lookups else 0.0,
        "compression_ratio": round(pool.orig_data_size / used, 4) if used else 0.0,
    }
    return MappingProxyType(values)


def reset(cache: Cache) -> None:
    """Zero the event counters (gauges are levels and stay)."""
    from .cache import CacheCounters
    from .pool import PoolCounters

    cache.c = CacheCounters()
    cache.pool.c = PoolCounters(mem_used_max=cache.pool.mem_used_total)

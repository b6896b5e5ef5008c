"""zcachefs: a FUSE passthrough filesystem with a compressed second-chance RAM cache.

Modules, one job each. The pure core (no pyfuse3, trio or psutil; tests/unit/test_layering.py):
- settings: the one table of settings (-o, control files, xattrs, --help, docs)
- options: mount option strings (-o groups, fstab flags, the options file)
- inodes: the node id table (node ids <-> backing inodes, lookup counts)
- backing: fd-relative system calls on SOURCE (and Ref, the handle of a backing inode)
- creds: whose credentials a backing call runs with (setfsuid/setgroups per thread)
- process: process-wide tuning (malloc arenas and trim, the open-files limit)
- _libc: the one ctypes handle on libc (the *at calls, mincore, mallopt, ...)
- workers: the thread side of every blocking backing call (accounting, credentials)
- handles: the open files and directories of a mount
- codecs: page codecs behind a registry
- pagecache: tier 1, the uncompressed LRU of pages
- pool: tier 2, the compressed pool (admission, CLOCK eviction, ghosts)
- slabs: the pool's slab allocator (mmap slabs, size classes, MADV_FREE)
- compress: a page compressed for the pool (or kept raw), off the trio thread
- cache: the two tiers of a mount: lookups, read geometry, invalidation, statistics
- files: the cache's per-file state (FileState, its signature; the table by identity)
- writes: the cache's side of writes and truncates through the mount
- handoff: pending pages to the compressor (a worker thread) and into the pool
- stats: the counters and one snapshot of them
- control: the control files, read and written by name over settings
- logs: log setup (stderr, syslog, journal)
- notify: systemd readiness notification
The adapter, the daemon around it, and the command line:
- fs: the pyfuse3 handlers (the one place exceptions become errnos)
- ctldir: the virtual control directory and its xattrs
- entries: the attributes and lookup counts the kernel is told
- tasks: background work (compressor, heap trimmer, signal watcher)
- threads: the worker-thread pool of the blocking backing calls (queue in, eventfd out)
- memory: measuring memory (cgroup limits and headroom, PSI, LazyFree, eventfds)
- pressure: the memory-pressure policy (when and how much to give back)
- mount: the daemon's lifecycle (mount, serve, unmount)
- cli: the `zcachefs` command line
- client: the client commands (stat, top, set, drop); imports only settings and stats
- mounts: the client's view of the mounts (mountinfo, control files, xattrs)
- live: the client's live view (top, stat --watch)
"""

__version__ = "0.1.0"

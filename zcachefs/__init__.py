"""zcachefs: a FUSE passthrough filesystem with a compressed second-chance RAM cache.

Modules, one noun each: options (mount options), inodes (node id table), backing
(fd-relative system calls on SOURCE), fs (the pyfuse3 adapter), mount (daemon
lifecycle), notify (systemd readiness), logs (log setup), cli (the command line).
"""

__version__ = "0.1.0"

"""zcachefs's tests, in three tiers (see tests/support/__init__.py for the shared helpers):

- `tests/unit`: the pure core and the scripts' pure parts, in process, no mounts, no root;
  the whole tier runs in seconds (`make test-unit`).
- `tests/adapter`: `zcachefs.fs.Operations` called in process under pytest-trio with a
  fake request context over a temporary backing directory; no kernel, no FUSE.
- `tests/mount`: real mounts and real processes (the daemon, the client, mount(8),
  systemd, make install); they skip, with the reason, without fuse3, /dev/fuse or root.

A package (not loose modules on sys.path): a test imports `tests.support.NAME`, and so do
the scripts in scripts/ (see tests/support/__init__.py for how they find it).
"""

"""Helpers shared by the test tiers and by scripts/ (bench, demo, bench_cache.py,
bench_passthrough.py), each written once:

- `mounting`: start and stop real mounts (`Mount`), read /proc/self/mountinfo, settle a
  mount's counters;
- `mountinfo`: the one parser of /proc/PID/mountinfo lines;
- `control`: read and write a live mount's control files (`ctl`, `set_ctl`);
- `probe`: the small scripts that tests run as another user (prelude, runner);
- `cgroups`: find the mounted cgroup hierarchies (tests/mount/test_pressure.py and
  scripts/benchlib/cgroup.py);
- `scenarios`: the POSIX scenarios of the differential test (also a script);
- `client`: run the `zcachefs` command, read Prometheus text strictly;
- `procs`: no child process outlives its test;
- `bench`: scripts/bench loaded as a module, for the tests of its pieces.

How it is imported: as the package `tests.support`, from the repository root. pytest puts
the root on sys.path itself (tests/ is a package, rootdir-based "prepend" import mode).
For scripts/, `make venv` writes a .pth file into the checkout's own .venv that names the
checkout (Makefile, target $(STAMP)), so any program the venv's Python runs can
`import tests.support.mounting`; `make install` installs only the zcachefs package and
never ships these. Nothing here imports pytest at module level (scripts use it too) or
any of zcachefs: the helpers talk to a mount as a program would.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root (the checkout that holds tests/, scripts/ and zcachefs/)."""

"""Helpers of scripts/bench (the seed-replay benchmark, issue 5): memory/io budgets in
cgroups, the slow-disk throttle, fio/iozone workloads and the report. They never touch
zcachefs internals: the benchmark sees zcachefs as a user does (the CLI, the mount, its
stats.json)."""

"""The prelude of the probes: small scripts that tests run as another user
(`setpriv ... python -c PROBE ARGS`), which record what each operation observes.

`PRELUDE` defines `obs` (label -> value) and `do(label, fn)`: it calls `fn` and records
its value, bytes decoded as UTF-8, or "errno:NAME" when it raises OSError. A probe is
`PRELUDE + its own lines + FINISH` (FINISH prints `obs` as JSON on stdout), run by
`run_probe`. The text uses only the standard library: the other user's Python imports
nothing of ours.
"""

from __future__ import annotations

import subprocess
import sys

PRELUDE = r'''
import errno, json, os, sys
obs = {}
def do(label, fn):
    try:
        v = fn()
    except OSError as e:
        v = "errno:" + errno.errorcode[e.errno]
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    obs[label] = v
'''

FINISH = "json.dump(obs, sys.stdout)\n"


def run_probe(script: str, *args: str, uid: int, gid: int, groups: str = "--clear-groups",
              timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the Python `script` (a probe: PRELUDE + lines + FINISH; or any one-liner) as
    uid:gid through setpriv, from "/", with `groups` as setpriv's group option
    (--clear-groups or --groups=LIST)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", groups,
                           sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=timeout, check=check, cwd="/")

"""The prelude of the probes: small scripts that tests run as another user
(`setpriv ... python -c PROBE ARGS`), which record what each operation observes.

`PRELUDE` defines `obs` (label -> value) and `do(label, fn)`: it calls `fn` and records
its value, bytes decoded as UTF-8, or "errno:NAME" when it raises OSError. A probe is
`PRELUDE + its own lines + FINISH` (FINISH prints `obs` as JSON on stdout). The text uses
only the standard library: the other user's Python imports nothing of ours.
"""

from __future__ import annotations

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

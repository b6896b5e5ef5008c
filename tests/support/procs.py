"""Child processes of the tests (the client's live view, the bench, the demo): whatever
happens in a test, none outlives it. Safe from any thread; each call handles one child.
"""

from __future__ import annotations

import subprocess
from typing import Any


def kill_if_running(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child and reap it, if it has not exited (for a `finally:`)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()

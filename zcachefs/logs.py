"""Log setup: stderr in the foreground, syslog when daemonized, journal under systemd.

Under systemd (JOURNAL_STREAM names our stderr) each line starts with a `<N>` syslog
priority prefix, which the journal turns into the entry's priority (sd-daemon(3)).
Must not import pyfuse3, trio or psutil.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority, as sd-daemon(3) describes."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def under_journal() -> bool:
    """True when stderr is connected to the systemd journal."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(debug: bool, daemon: bool) -> None:
    """Configure the root logger for the daemon."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    elif daemon:
        if os.path.exists("/dev/log"):
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("zcachefs[%(process)d]: %(message)s"))
        else:
            handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s zcachefs %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)

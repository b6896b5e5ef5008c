"""systemd readiness notification (sd_notify) without libsystemd.

Sends `READY=1` / `STOPPING=1` datagrams to $NOTIFY_SOCKET (a path or an abstract
socket starting with '@'). A no-op when the variable is unset. Never raises.
Must not import pyfuse3, trio or psutil.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one notification; True if it was delivered."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message, exc)
        return False

"""Worker-thread accounting: what runs on the thread side of every blocking backing call.

Role: `Workers.work` is what the adapter hands to its thread pool (threads.ThreadPool)
for each call on SOURCE: it counts the calls in flight (`peak_inflight`, logged at
unmount), applies the slow-backing test hook, and runs the call under the caller's
credentials (`creds.call_as`) where the daemon can switch them. The adapter keeps the
await, the pool and the errno mapping; this is the part of a backing call that
runs off the trio thread, so the one lock it needs is here.

Must not import pyfuse3, trio or psutil. Thread-safe: `work` runs in any worker thread
(the counters are under a lock); the rest is read on the trio thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import creds
from .creds import Caller

T = TypeVar("T")


class Workers:
    """See the module docstring."""

    def __init__(self) -> None:
        # Root runs each call as its caller (fsuid/fsgid/groups); otherwise every call
        # runs with the daemon's own credentials.
        self.switch_ids = creds.can_switch_credentials()
        self.peak_inflight = 0  # most backing calls running at once
        self._running = 0  # backing calls running in worker threads (under _lock)
        self._lock = threading.Lock()
        # Test hook: emulate a slow backing store (milliseconds per blocking call).
        self.delay = float(os.environ.get("ZCACHEFS_DEBUG_BACKING_DELAY_MS", "0")) / 1000

    def work(self, caller: Caller | None, fn: Callable[..., T], *args: Any) -> T:
        """Runs in a worker thread: one backing call, counted for peak_inflight."""
        if not self.switch_ids:
            caller = None
        with self._lock:
            self._running += 1
            self.peak_inflight = max(self.peak_inflight, self._running)
        try:
            if self.delay:
                time.sleep(self.delay)
            return creds.call_as(caller, fn, *args)
        finally:
            with self._lock:
                self._running -= 1

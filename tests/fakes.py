"""In-memory and controllable stand-ins for the ports (only where the real part cannot be driven)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class FakeClock:
    """A clock the test moves by hand; thread-safe because paramiko threads read it too."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The fake current time."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        """Move time forward."""
        with self._lock:
            self._now += delta

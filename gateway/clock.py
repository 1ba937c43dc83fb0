"""The real clock; tests inject ``tests.fakes.FakeClock`` instead."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """Wall-clock time, tz-aware UTC."""

    def now(self) -> datetime:
        """The current time."""
        return datetime.now(UTC)

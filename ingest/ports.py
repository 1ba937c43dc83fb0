"""Ports the ingest package needs from the outside; ``gateway/wiring.py`` provides the implementations."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Source of the current time, injected so that ingest code is testable."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware, in UTC."""
        ...


class SubjectTokens(Protocol):
    """Maps a phone number to its subject token in the metadata store."""

    def token_for(self, tenant: str, e164: str) -> str:
        """Return the stable random token (``sub_...``) of ``e164`` for ``tenant``, creating it if new."""
        ...

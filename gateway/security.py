"""Secrets the gateway hands out and checks: passwords, bearer tokens, and failed-login throttling.

- Operator and release passwords: argon2id (argon2-cffi); only the hash is stored.
- Bearer tokens (operator sessions, PBXs): 256 random bits; only their SHA-256 is stored, which is
  enough for a value that cannot be guessed, and fast enough for every ingest request.
- ``LoginThrottle`` scores failures per (scope, source address) in the metadata store, so every gateway
  node sees the same score, and bans an address for a while after too many.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.db import Database, parse_utc, utc_text

_PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # noqa: S105 - an alphabet


def new_password(length: int = 24) -> str:
    """A high-entropy password (about 140 bits at 24 characters) without look-alike characters."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def new_token(prefix: str) -> str:
    """A bearer token: a readable prefix and 256 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    """What the store keeps of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


class PasswordHashing:
    """argon2id hashing with configurable cost; verifies in constant work even for unknown users."""

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 1) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy = self._hasher.hash(new_password())

    def hash(self, password: str) -> str:
        """The argon2id hash to store."""
        return str(self._hasher.hash(password))

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with no stored hash, burns the same work and says False."""
        try:
            return bool(self._hasher.verify(stored_hash or self._dummy, password)) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True, slots=True)
class ThrottleState:
    """Whether a source is banned, and until when."""

    banned_until: datetime | None
    failures: int

    def banned(self, now: datetime) -> bool:
        """True while the ban lasts."""
        return self.banned_until is not None and now < self.banned_until


class LoginThrottle:
    """Scores failed logins per (scope, source) and bans a source after too many in a window."""

    def __init__(self, db: Database, *, max_failures: int, window: timedelta, ban: timedelta) -> None:
        self._db = db
        self._max_failures = max_failures
        self._window = window
        self._ban = ban

    def state(self, scope: str, source: str) -> ThrottleState:
        """The current score of ``source``."""
        row = self._db.fetch_one(
            "SELECT failures, banned_until FROM login_failures WHERE scope = ? AND source = ?",
            (scope, source),
        )
        if row is None:
            return ThrottleState(None, 0)
        until = parse_utc(row["banned_until"]) if row["banned_until"] else None
        return ThrottleState(until, int(row["failures"]))

    def record_failure(self, scope: str, source: str, now: datetime) -> ThrottleState:
        """Count one failure; returns the new state (banned once the limit is reached)."""
        with self._db.transaction() as tx:
            row = tx.fetch_one(
                "SELECT failures, window_start, banned_until FROM login_failures WHERE scope = ? AND source = ?",
                (scope, source),
            )
            ban_over = row is not None and row["banned_until"] is not None and now >= parse_utc(row["banned_until"])
            if row is None or ban_over or now - parse_utc(row["window_start"]) > self._window:
                failures, window_start = 1, now
            else:
                failures, window_start = int(row["failures"]) + 1, parse_utc(row["window_start"])
            banned_until = now + self._ban if failures >= self._max_failures else None
            tx.execute("DELETE FROM login_failures WHERE scope = ? AND source = ?", (scope, source))
            tx.execute(
                "INSERT INTO login_failures (scope, source, failures, window_start, banned_until)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    scope,
                    source,
                    failures,
                    utc_text(window_start),
                    utc_text(banned_until) if banned_until else None,
                ),
            )
        return ThrottleState(banned_until, failures)

    def record_success(self, scope: str, source: str) -> None:
        """Forget the failures of ``source`` after a good login."""
        with self._db.transaction() as tx:
            tx.execute(
                "DELETE FROM login_failures WHERE scope = ? AND source = ? AND banned_until IS NULL",
                (scope, source),
            )

"""Operators (the people who run telgate) and their session tokens, in the metadata store."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.db import Database, Transaction, parse_utc, utc_text
from gateway.errors import BadRequestError, ConflictError, NotFoundError
from gateway.rbac import OPERATOR_ROLES, Role
from gateway.security import PasswordHashing, new_password, new_token, token_digest

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Operator:
    """A person with a role; the password hash never leaves the store."""

    name: str
    role: Role
    disabled: bool
    created_at: datetime
    created_by: str


def validate_name(name: str, what: str = "name") -> str:
    """Names are lower-case identifiers so they are safe in logs, paths and URLs."""
    if not NAME_PATTERN.match(name):
        raise BadRequestError(f"{what} must match {NAME_PATTERN.pattern}: {name!r}")
    return name


def _operator(row: dict[str, object]) -> Operator:
    return Operator(
        name=str(row["name"]),
        role=Role(str(row["role"])),
        disabled=bool(row["disabled"]),
        created_at=parse_utc(str(row["created_at"])),
        created_by=str(row["created_by"]),
    )


class OperatorStore:
    """Creates, lists, disables and authenticates operators; issues and resolves session tokens."""

    def __init__(self, db: Database, hashing: PasswordHashing) -> None:
        self._db = db
        self._hashing = hashing

    def add(self, tx: Transaction, name: str, role: str, created_by: str, now: datetime) -> str:
        """Create an operator with a fresh password; returns the password (shown once, never stored)."""
        validate_name(name, "operator name")
        if role not in OPERATOR_ROLES:
            raise BadRequestError(f"role must be one of {', '.join(sorted(OPERATOR_ROLES))}")
        if tx.fetch_one("SELECT name FROM operators WHERE name = ?", (name,)):
            raise ConflictError(f"operator {name} already exists")
        password = new_password()
        tx.execute(
            "INSERT INTO operators (name, role, password_hash, disabled, created_at, created_by)"
            " VALUES (?, ?, ?, 0, ?, ?)",
            (name, role, self._hashing.hash(password), utc_text(now), created_by),
        )
        return password

    def get(self, name: str) -> Operator:
        """One operator by name."""
        row = self._db.fetch_one("SELECT * FROM operators WHERE name = ?", (name,))
        if row is None:
            raise NotFoundError(f"no operator named {name}")
        return _operator(row)

    def list(self) -> list[Operator]:
        """Every operator, by name."""
        return [_operator(row) for row in self._db.fetch_all("SELECT * FROM operators ORDER BY name")]

    def count(self) -> int:
        """How many operators exist (``init`` creates the first DPO only when there are none)."""
        row = self._db.fetch_one("SELECT COUNT(*) AS n FROM operators")
        return int(row["n"]) if row else 0

    def disable(self, tx: Transaction, name: str) -> None:
        """Disable an operator and end their sessions."""
        if tx.execute("UPDATE operators SET disabled = 1 WHERE name = ?", (name,)) == 0:
            raise NotFoundError(f"no operator named {name}")
        tx.execute("DELETE FROM sessions WHERE operator = ?", (name,))

    def authenticate(self, name: str, password: str) -> Operator | None:
        """The operator when name and password match and the account is enabled; None otherwise."""
        row = self._db.fetch_one("SELECT * FROM operators WHERE name = ?", (name,))
        stored = str(row["password_hash"]) if row is not None else None
        if not self._hashing.verify(stored, password) or row is None or row["disabled"]:
            return None
        return _operator(row)

    def open_session(self, tx: Transaction, name: str, source: str, now: datetime, ttl: timedelta) -> str:
        """Issue a session token for ``name``; only its digest is stored."""
        token = new_token("tgs")
        tx.execute("DELETE FROM sessions WHERE expires_at < ?", (utc_text(now),))
        tx.execute(
            "INSERT INTO sessions (token_hash, operator, created_at, expires_at, source) VALUES (?, ?, ?, ?, ?)",
            (token_digest(token), name, utc_text(now), utc_text(now + ttl), source),
        )
        return token

    def resolve_session(self, token: str, now: datetime) -> Operator | None:
        """The enabled operator owning an unexpired session token, or None."""
        row = self._db.fetch_one(
            "SELECT o.* FROM sessions s JOIN operators o ON o.name = s.operator"
            " WHERE s.token_hash = ? AND s.expires_at > ? AND o.disabled = 0",
            (token_digest(token), utc_text(now)),
        )
        return _operator(row) if row is not None else None

    def close_session(self, token: str) -> None:
        """End a session (logout)."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE token_hash = ?", (token_digest(token),))

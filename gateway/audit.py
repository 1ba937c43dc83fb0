"""The tamper-evident audit trail: append-only, hash-chained, with an authenticated head.

Each entry's ``hash`` is HMAC-SHA256 (audit key) over its canonical JSON, which includes the previous
entry's hash: altering an entry breaks its own hash, deleting one breaks the sequence and the chain,
reordering breaks the chain. The ``audit_head`` row holds the last ``seq`` and ``hash`` with its own
MAC, so cutting entries off the end is detected too. Without the audit key (``var/secrets/audit.key``,
never in the database) nobody can forge a consistent chain.

Entries never hold a password, a token or a raw phone number: ``append`` refuses detail keys that name
secrets, and callers pass subject tokens, never numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.db import Database, Transaction, parse_utc, utc_text

GENESIS = "0" * 64
SYSTEM_ACTOR = "system"  # actor and role of what the gateway does on its own (first DPO, expiries)
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_HEAD_FOR_UPDATE = _HEAD + " FOR UPDATE"
_FORBIDDEN_DETAIL_KEYS = ("password", "token", "secret", "key_material", "number", "phone")


class Clock(Protocol):
    """Source of the current time (tz-aware UTC)."""

    def now(self) -> datetime:
        """The current time."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record: who did what to which object, why, with what outcome, from where."""

    seq: int
    at: datetime
    actor: str
    role: str
    action: str
    object: str
    reason: str
    outcome: str
    source: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict."""
        data = asdict(self)
        data["at"] = utc_text(self.at)
        return data


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of ``AuditTrail.verify``: ok, or the first bad entry and why."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class AuditTrail:
    """Appends and verifies the hash chain stored in the metadata database."""

    def __init__(self, db: Database, key: bytes, clock: Clock) -> None:
        if len(key) < 32:
            raise ValueError("audit key must be at least 32 bytes")
        self._db = db
        self._key = key
        self._clock = clock

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def _entry_hash(self, seq: int, at: str, prev_hash: str, **fields: Any) -> str:
        return self._mac(_canonical({"seq": seq, "at": at, "prev_hash": prev_hash, **fields}))

    def _head_mac(self, seq: int, entry_hash: str) -> str:
        return self._mac(_canonical({"head": seq, "hash": entry_hash}))

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        object: str = "",
        reason: str = "",
        outcome: str = "ok",
        source: str = "",
        details: Mapping[str, Any] | None = None,
        tx: Transaction | None = None,
    ) -> int:
        """Append one entry (inside ``tx`` when given, so it commits with the action); returns its seq."""
        details = dict(details or {})
        for key in details:
            if any(word in key.lower() for word in _FORBIDDEN_DETAIL_KEYS):
                raise ValueError(f"audit details must not carry secrets or numbers: {key!r}")
        if tx is not None:
            return self._append(tx, actor, role, action, object, reason, outcome, source, details)
        with self._db.transaction() as own:
            return self._append(own, actor, role, action, object, reason, outcome, source, details)

    def _append(
        self,
        tx: Transaction,
        actor: str,
        role: str,
        action: str,
        obj: str,
        reason: str,
        outcome: str,
        source: str,
        details: dict[str, Any],
    ) -> int:
        # PostgreSQL: lock the head row so concurrent nodes chain in turn; SQLite holds the write lock already.
        head = tx.fetch_one(_HEAD_FOR_UPDATE if tx.dialect == "postgresql" else _HEAD)
        seq, prev_hash = (int(head["seq"]) + 1, str(head["hash"])) if head else (1, GENESIS)
        at = utc_text(self._clock.now())
        fields = {
            "actor": actor,
            "role": role,
            "action": action,
            "object": obj,
            "reason": reason,
            "outcome": outcome,
            "source": source,
            "details": details,
        }
        entry_hash = self._entry_hash(seq, at, prev_hash, **fields)
        tx.execute(
            "INSERT INTO audit (seq, at, actor, role, action, object, reason, outcome, source, details,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                at,
                actor,
                role,
                action,
                obj,
                reason,
                outcome,
                source,
                json.dumps(details, sort_keys=True),
                prev_hash,
                entry_hash,
            ),
        )
        mac = self._head_mac(seq, entry_hash)
        if head:
            tx.execute("UPDATE audit_head SET seq = ?, hash = ?, mac = ? WHERE id = 1", (seq, entry_hash, mac))
        else:
            tx.execute("INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?, ?, ?)", (seq, entry_hash, mac))
        return seq

    def entries(self, since: datetime | None = None, limit: int | None = None) -> Iterator[AuditEntry]:
        """Entries in sequence order, optionally from a time on."""
        sql = "SELECT * FROM audit"
        params: list[Any] = []
        if since is not None:
            sql += " WHERE at >= ?"
            params.append(utc_text(since))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        for row in self._db.fetch_all(sql, params):
            yield AuditEntry(
                seq=int(row["seq"]),
                at=parse_utc(row["at"]),
                actor=row["actor"],
                role=row["role"],
                action=row["action"],
                object=row["object"],
                reason=row["reason"],
                outcome=row["outcome"],
                source=row["source"],
                details=json.loads(row["details"]),
                prev_hash=row["prev_hash"],
                hash=row["hash"],
            )

    def verify(self) -> VerifyReport:
        """Walk the whole chain; report the first entry that was altered, removed or moved."""
        rows = self._db.fetch_all("SELECT * FROM audit ORDER BY seq")
        head = self._db.fetch_one("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
        prev_hash = GENESIS
        expected_seq = 1
        for row in rows:
            seq = int(row["seq"])
            if seq != expected_seq:
                return VerifyReport(False, len(rows), expected_seq, f"entry {expected_seq} is missing")
            if row["prev_hash"] != prev_hash:
                return VerifyReport(False, len(rows), seq, "chain broken: previous hash does not match")
            try:
                details = json.loads(row["details"])
            except ValueError:
                return VerifyReport(False, len(rows), seq, "entry altered: details unreadable")
            recomputed = self._entry_hash(
                seq,
                row["at"],
                row["prev_hash"],
                actor=row["actor"],
                role=row["role"],
                action=row["action"],
                object=row["object"],
                reason=row["reason"],
                outcome=row["outcome"],
                source=row["source"],
                details=details,
            )
            if not hmac.compare_digest(recomputed, row["hash"]):
                return VerifyReport(False, len(rows), seq, "entry altered: hash does not match its content")
            prev_hash = row["hash"]
            expected_seq += 1
        last_seq = expected_seq - 1
        if head is None:
            if rows:
                return VerifyReport(False, len(rows), 1, "audit head missing")
            return VerifyReport(True, 0)
        if not hmac.compare_digest(self._head_mac(int(head["seq"]), head["hash"]), head["mac"]):
            return VerifyReport(False, len(rows), int(head["seq"]), "audit head altered")
        if int(head["seq"]) != last_seq or head["hash"] != prev_hash:
            return VerifyReport(False, len(rows), last_seq + 1, f"entries after {last_seq} were removed")
        return VerifyReport(True, len(rows))

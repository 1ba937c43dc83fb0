"""The vault's catalog and key store in the metadata database (component ``vault``).

``SqlRecordingCatalog`` implements both ``vault.service.RecordingCatalog`` and ``vault.service.KeyStore``
over ``gateway.db.Database``, and writes the vault's ``AuditEvent``s to the audit trail inside the
same transaction as the change they describe.

Tables::

    recordings       one row per recording; after shredding a tombstone (shredded_at, shred_reason)
                     that keeps metadata but no key material; (tenant, call_id) is unique among live rows
    recording_keys   recording_id -> (key_version, wrapped data key): deleting the row is the crypto-shred
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.audit import AuditTrail
from gateway.db import Database, Migrations, Transaction, parse_utc, utc_text
from gateway.errors import BackendUnavailableError, ConflictError
from vault.errors import RecordingNotFoundError
from vault.ports import WrappedKey
from vault.service import AuditEvent, KeyReplacement, KeyStore, Recording, RecordingCatalog

MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE recordings (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                pbx TEXT NOT NULL,
                call_id TEXT NOT NULL,
                content_type TEXT NOT NULL,
                size INTEGER NOT NULL,
                sha256 TEXT NOT NULL,
                received_at TEXT NOT NULL,
                blob_id TEXT NOT NULL,
                shredded_at TEXT,
                shred_reason TEXT
            )""",
            "CREATE UNIQUE INDEX recordings_live_call ON recordings(tenant, call_id) WHERE shredded_at IS NULL",
            "CREATE INDEX recordings_received ON recordings(received_at)",
            "CREATE INDEX recordings_tenant_received ON recordings(tenant, received_at)",
            """CREATE TABLE recording_keys (
                recording_id TEXT PRIMARY KEY REFERENCES recordings(id),
                key_version INTEGER NOT NULL,
                wrapped BLOB NOT NULL,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX recording_keys_version ON recording_keys(key_version)",
        ],
    ),
]

log = logging.getLogger("telgate.vault")

_LIVE_BY_CALL = "SELECT * FROM recordings WHERE tenant = ? AND call_id = ? AND shredded_at IS NULL"


def _recording(row: dict[str, Any]) -> Recording:
    return Recording(
        recording_id=str(row["id"]),
        tenant=str(row["tenant"]),
        pbx=str(row["pbx"]),
        call_id=str(row["call_id"]),
        content_type=str(row["content_type"]),
        size=int(row["size"]),
        sha256=str(row["sha256"]),
        received_at=parse_utc(str(row["received_at"])),
        blob_id=str(row["blob_id"]),
        shredded_at=parse_utc(str(row["shredded_at"])) if row["shredded_at"] else None,
        shred_reason=str(row["shred_reason"]) if row["shred_reason"] is not None else None,
    )


class SqlRecordingCatalog:
    """Recording rows and wrapped-key rows in the metadata store; audit entries commit with changes."""

    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit

    def _forget_deleted(self) -> None:
        """SQLite: checkpoint and truncate the WAL, whose older frames still hold the deleted key row.

        Copies outside this file (backups, PostgreSQL's dead tuples until VACUUM) are what master-key
        rotation and retirement are for.
        """
        if self._db.dialect != "sqlite":
            return
        try:
            row = self._db.fetch_one("PRAGMA wal_checkpoint(TRUNCATE)")
        except BackendUnavailableError:
            log.warning("vault: WAL checkpoint after a shred failed; it is retried after the next one")
            return
        if row is not None and next(iter(row.values())):
            log.warning("vault: WAL checkpoint after a shred was blocked by a reader; retried after the next one")

    def _append(self, tx: Transaction, event: AuditEvent) -> None:
        self._audit.append(
            actor=event.actor,
            role=event.role,
            action=event.action,
            object=event.object,
            reason=event.reason,
            outcome=event.outcome,
            source=event.source,
            details=event.details,
            tx=tx,
        )

    # --- RecordingCatalog --------------------------------------------------------------------------

    def add(self, recording: Recording, wrapped: WrappedKey, event: AuditEvent) -> Recording:
        """Insert recording, key row and audit entry, or return the live recording of the same call."""
        try:
            with self._db.transaction() as tx:
                existing = tx.fetch_one(_LIVE_BY_CALL, (recording.tenant, recording.call_id))
                if existing is not None:
                    return _recording(existing)
                tx.execute(
                    "INSERT INTO recordings (id, tenant, pbx, call_id, content_type, size, sha256, received_at,"
                    " blob_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        recording.recording_id,
                        recording.tenant,
                        recording.pbx,
                        recording.call_id,
                        recording.content_type,
                        recording.size,
                        recording.sha256,
                        utc_text(recording.received_at),
                        recording.blob_id,
                    ),
                )
                tx.execute(
                    "INSERT INTO recording_keys (recording_id, key_version, wrapped, created_at) VALUES (?, ?, ?, ?)",
                    (recording.recording_id, wrapped.version, wrapped.ciphertext, utc_text(recording.received_at)),
                )
                self._append(tx, event)
        except ConflictError:
            # Another node inserted the same call between our read and our insert.
            row = self._db.fetch_one(_LIVE_BY_CALL, (recording.tenant, recording.call_id))
            if row is None:
                raise
            return _recording(row)
        return recording

    def get(self, recording_id: str) -> Recording:
        """One recording or tombstone."""
        row = self._db.fetch_one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
        if row is None:
            raise RecordingNotFoundError(f"no recording {recording_id}")
        return _recording(row)

    def find(
        self,
        *,
        tenant: str | None = None,
        since: datetime | None = None,
        include_shredded: bool = False,
        limit: int | None = None,
    ) -> list[Recording]:
        """Recordings received at or after ``since``, oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if since is not None:
            clauses.append("received_at >= ?")
            params.append(utc_text(since))
        if not include_shredded:
            clauses.append("shredded_at IS NULL")
        sql = "SELECT * FROM recordings"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY received_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_recording(row) for row in self._db.fetch_all(sql, params)]

    def page(self, after: str, limit: int) -> list[Recording]:
        """Live recordings with an id greater than ``after``, by id."""
        rows = self._db.fetch_all(
            "SELECT * FROM recordings WHERE id > ? AND shredded_at IS NULL ORDER BY id LIMIT ?", (after, limit)
        )
        return [_recording(row) for row in rows]

    def totals(self) -> tuple[int, int]:
        """(count, plaintext bytes) of live recordings."""
        row = self._db.fetch_one(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM recordings WHERE shredded_at IS NULL"
        )
        return (int(row["n"]), int(row["bytes"])) if row else (0, 0)

    def shred(self, recording_id: str, shredded_at: datetime, reason: str, event: AuditEvent) -> tuple[Recording, bool]:
        """Delete the key row, mark the tombstone and audit, in one transaction (the crypto-shred)."""
        with self._db.transaction() as tx:
            row = tx.fetch_one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
            if row is None:
                raise RecordingNotFoundError(f"no recording {recording_id}")
            if row["shredded_at"]:
                tx.execute("DELETE FROM recording_keys WHERE recording_id = ?", (recording_id,))
                return _recording(row), False
            tx.execute("DELETE FROM recording_keys WHERE recording_id = ?", (recording_id,))
            tx.execute(
                "UPDATE recordings SET shredded_at = ?, shred_reason = ? WHERE id = ?",
                (utc_text(shredded_at), reason, recording_id),
            )
            self._append(tx, event)
            row = tx.fetch_one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
        self._forget_deleted()
        if row is None:  # pragma: no cover - read back inside the same transaction
            raise RecordingNotFoundError(f"no recording {recording_id}")
        return _recording(row), True

    # --- KeyStore ----------------------------------------------------------------------------------

    def wrapped_key(self, recording_id: str) -> WrappedKey | None:
        """The wrapped data key of a live recording, or None."""
        row = self._db.fetch_one(
            "SELECT key_version, wrapped FROM recording_keys WHERE recording_id = ?", (recording_id,)
        )
        if row is None:
            return None
        return WrappedKey(version=int(row["key_version"]), ciphertext=bytes(row["wrapped"]))

    def page_keys(self, after: str, limit: int, exclude_version: int) -> list[tuple[str, WrappedKey]]:
        """Key rows not under ``exclude_version``, by recording id after ``after``."""
        rows = self._db.fetch_all(
            "SELECT recording_id, key_version, wrapped FROM recording_keys"
            " WHERE recording_id > ? AND key_version <> ? ORDER BY recording_id LIMIT ?",
            (after, exclude_version, limit),
        )
        return [
            (str(r["recording_id"]), WrappedKey(version=int(r["key_version"]), ciphertext=bytes(r["wrapped"])))
            for r in rows
        ]

    def replace(self, replacements: Sequence[KeyReplacement]) -> int:
        """Store rewrapped keys; a row shredded or changed meanwhile is left alone (never resurrected)."""
        if not replacements:
            return 0
        changed = 0
        with self._db.transaction() as tx:
            for item in replacements:
                changed += tx.execute(
                    "UPDATE recording_keys SET key_version = ?, wrapped = ?"
                    " WHERE recording_id = ? AND key_version = ? AND wrapped = ?",
                    (item.new.version, item.new.ciphertext, item.recording_id, item.old.version, item.old.ciphertext),
                )
        return changed

    def counts(self) -> dict[int, int]:
        """Key rows per master-key version."""
        rows = self._db.fetch_all("SELECT key_version, COUNT(*) AS n FROM recording_keys GROUP BY key_version")
        return {int(r["key_version"]): int(r["n"]) for r in rows}


def _conforms(catalog: SqlRecordingCatalog) -> RecordingCatalog:
    """Static check (mypy): SqlRecordingCatalog satisfies the RecordingCatalog port."""
    return catalog


def _conforms_key_store(catalog: SqlRecordingCatalog) -> KeyStore:
    """Static check (mypy): SqlRecordingCatalog satisfies the KeyStore port too."""
    return catalog

"""Durable staging: what a 2xx promises is committed here first, then flushed to the lake.

Data flow::

    request -> parse/pseudonymise -> StagingWriter.stage()  (group commit: one transaction, one fsync,
                                       |                     for every request queued meanwhile)
                                       v
             staged (pseudonymised records, JSON)  + dedupe (keys seen)  + quarantine (sealed rejects)
                                       |
                      Flusher.flush_once(): read a batch in seq order -> lake.append(marker=max seq)
                                       -> delete staged rows <= marker

Exactly once: a record's dedupe key is inserted in the same transaction as the record, so a retried
record is a duplicate whether or not the first copy has reached the lake yet. The lake commit carries
the highest staged seq it contains; after a crash between the lake commit and the staging delete,
``Flusher.reconcile`` deletes what the lake already has, so nothing is appended twice.

Backpressure: ``StagingWriter.stage`` raises ``OverloadedError`` (503 + Retry-After) once the staged
backlog exceeds its limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.audit import Clock
from gateway.db import Database, Migrations, Transaction, utc_text
from gateway.errors import OverloadedError
from ingest.records import AcdEventRecord, CdrRecord
from vault.envelope import decrypt_bytes, encrypt_bytes

log = logging.getLogger("telgate.staging")

MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE staged (
                seq INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                tenant TEXT NOT NULL,
                records INTEGER NOT NULL,
                payload BLOB NOT NULL,
                staged_at TEXT NOT NULL
            )""",
            "CREATE INDEX staged_kind ON staged(kind, seq)",
            # seq must never be reused (the lake remembers the highest seq it holds), so it comes from
            # a counter rather than SQLite's rowid, which restarts after the table empties.
            "CREATE TABLE staging_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
            "INSERT INTO staging_counter (id, value) VALUES (1, 0)",
            """CREATE TABLE dedupe (
                key TEXT PRIMARY KEY,
                seen_at TEXT NOT NULL
            )""",
            "CREATE INDEX dedupe_seen ON dedupe(seen_at)",
            """CREATE TABLE quarantine (
                id TEXT PRIMARY KEY,
                received_at TEXT NOT NULL,
                pbx TEXT NOT NULL,
                tenant TEXT NOT NULL,
                format TEXT NOT NULL,
                line INTEGER NOT NULL,
                reason TEXT NOT NULL,
                sealed BLOB NOT NULL,
                replayed_at TEXT
            )""",
            "CREATE INDEX quarantine_received ON quarantine(received_at)",
        ],
    ),
]

Kind = Literal["cdr", "acd_event"]
KINDS: tuple[Kind, ...] = ("cdr", "acd_event")
Record = CdrRecord | AcdEventRecord


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be accepted: kept, sealed, for replay."""

    line: int
    reason: str
    raw: bytes


@dataclass(slots=True)
class StageRequest:
    """One request's records and rejects, staged atomically."""

    kind: Kind
    tenant: str
    pbx: str
    source_format: str
    records: Sequence[Record]
    rejects: Sequence[Rejected] = ()


@dataclass(slots=True)
class StageOutcome:
    """What staging did with a request's records."""

    accepted: int = 0
    duplicates: int = 0
    quarantined: list[str] = field(default_factory=list)


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1_000_000)
    return value


def encode_records(records: Sequence[Record]) -> bytes:
    """Records as compact JSON rows (values in schema order; times as epoch microseconds)."""
    rows = [[_encode_value(getattr(r, f.name)) for f in dataclasses.fields(r)] for r in records]
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()


_TIME_FIELDS = {
    "cdr": {"start_at", "answer_at", "end_at", "ingested_at"},
    "acd_event": {"event_at", "ingested_at"},
}
_RECORD_TYPES: dict[str, type[CdrRecord] | type[AcdEventRecord]] = {"cdr": CdrRecord, "acd_event": AcdEventRecord}


def decode_records(kind: str, payload: bytes) -> list[Record]:
    """Inverse of ``encode_records``."""
    record_type = _RECORD_TYPES[kind]
    names = [f.name for f in dataclasses.fields(record_type)]
    times = _TIME_FIELDS[kind]
    out: list[Record] = []
    for row in json.loads(payload):
        values: dict[str, Any] = {
            name: datetime.fromtimestamp(value / 1_000_000, UTC) if name in times and value is not None else value
            for name, value in zip(names, row, strict=True)
        }
        out.append(record_type(**values))
    return out


class StagingStore:
    """SQL operations on staging, dedupe and quarantine (blocking; called from the writer thread)."""

    def __init__(self, db: Database, sealing_key: bytes, clock: Clock) -> None:
        self._db = db
        self._sealing_key = sealing_key
        self._clock = clock

    def stage(self, tx: Transaction, request: StageRequest, now: datetime) -> StageOutcome:
        """Stage one request's new records and quarantine its rejects, inside ``tx``."""
        outcome = StageOutcome()
        seen_at = utc_text(now)
        fresh: list[Record] = []
        for record in request.records:
            inserted = tx.execute(
                "INSERT INTO dedupe (key, seen_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (record.dedupe_key, seen_at),
            )
            if inserted:
                fresh.append(record)
            else:
                outcome.duplicates += 1
        if fresh:
            counter = tx.fetch_one("UPDATE staging_counter SET value = value + 1 WHERE id = 1 RETURNING value")
            assert counter is not None
            tx.execute(
                "INSERT INTO staged (seq, kind, tenant, records, payload, staged_at) VALUES (?, ?, ?, ?, ?, ?)",
                (int(counter["value"]), request.kind, request.tenant, len(fresh), encode_records(fresh), seen_at),
            )
        outcome.accepted = len(fresh)
        for reject in request.rejects:
            quarantine_id = "q_" + secrets.token_hex(8)
            tx.execute(
                "INSERT INTO quarantine (id, received_at, pbx, tenant, format, line, reason, sealed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    quarantine_id,
                    seen_at,
                    request.pbx,
                    request.tenant,
                    request.source_format,
                    reject.line,
                    reject.reason,
                    encrypt_bytes(reject.raw, self._sealing_key, quarantine_id),
                ),
            )
            outcome.quarantined.append(quarantine_id)
        return outcome

    def backlog(self) -> int:
        """Records staged and not yet in the lake."""
        row = self._db.fetch_one("SELECT COALESCE(SUM(records), 0) AS n FROM staged")
        return int(row["n"]) if row else 0

    def batch(self, kind: str, max_records: int) -> tuple[int, list[Record]]:
        """The oldest staged rows of ``kind`` up to about ``max_records``: (highest seq, records)."""
        rows = self._db.fetch_all(
            "SELECT seq, records, payload FROM staged WHERE kind = ? ORDER BY seq LIMIT ?", (kind, 10_000)
        )
        records: list[Record] = []
        last_seq = 0
        for row in rows:
            if records and len(records) + int(row["records"]) > max_records:
                break
            records.extend(decode_records(kind, bytes(row["payload"])))
            last_seq = int(row["seq"])
        return last_seq, records

    def oldest_staged_at(self, kind: str) -> datetime | None:
        """When the oldest staged row of ``kind`` arrived."""
        row = self._db.fetch_one("SELECT MIN(staged_at) AS t FROM staged WHERE kind = ?", (kind,))
        if row is None or row["t"] is None:
            return None
        return datetime.strptime(str(row["t"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)

    def delete_through(self, kind: str, seq: int) -> int:
        """Drop staged rows of ``kind`` that the lake holds (seq <= marker); returns records dropped."""
        with self._db.transaction() as tx:
            row = tx.fetch_one(
                "SELECT COALESCE(SUM(records), 0) AS n FROM staged WHERE kind = ? AND seq <= ?", (kind, seq)
            )
            tx.execute("DELETE FROM staged WHERE kind = ? AND seq <= ?", (kind, seq))
        return int(row["n"]) if row else 0

    def expire_dedupe(self, before: datetime) -> int:
        """Forget dedupe keys older than the window."""
        with self._db.transaction() as tx:
            return tx.execute("DELETE FROM dedupe WHERE seen_at < ?", (utc_text(before),))

    def quarantined(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Quarantined records (metadata only, never the sealed content)."""
        return self._db.fetch_all(
            "SELECT id, received_at, pbx, tenant, format, line, reason, replayed_at FROM quarantine"
            " ORDER BY received_at, id LIMIT ?",
            (limit,),
        )

    def unseal(self, quarantine_id: str) -> tuple[dict[str, Any], bytes] | None:
        """A quarantined record's metadata and raw bytes, for replay."""
        row = self._db.fetch_one("SELECT * FROM quarantine WHERE id = ?", (quarantine_id,))
        if row is None:
            return None
        raw = decrypt_bytes(bytes(row.pop("sealed")), self._sealing_key, quarantine_id)
        return row, raw

    def mark_replayed(self, tx: Transaction, quarantine_id: str, now: datetime) -> None:
        """Record that a quarantined record was replayed successfully."""
        tx.execute("UPDATE quarantine SET replayed_at = ? WHERE id = ?", (utc_text(now), quarantine_id))


@dataclass
class _Pending:
    request: StageRequest
    future: asyncio.Future[StageOutcome]
    loop: asyncio.AbstractEventLoop


class StagingWriter:
    """Group commit: one writer thread commits every request queued meanwhile in one transaction."""

    def __init__(self, db: Database, store: StagingStore, clock: Clock, *, max_backlog: int, max_group: int = 512):
        self._db = db
        self._store = store
        self._clock = clock
        self._max_backlog = max_backlog
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._backlog = store.backlog()
        self._backlog_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="telgate-staging", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Records staged and not yet flushed, as this node counts them."""
        with self._backlog_lock:
            return self._backlog

    def flushed(self, records: int) -> None:
        """The flusher moved ``records`` to the lake."""
        with self._backlog_lock:
            self._backlog = max(0, self._backlog - records)

    async def stage(self, request: StageRequest) -> StageOutcome:
        """Commit a request durably; returns once it is on disk."""
        if self.backlog >= self._max_backlog:
            raise OverloadedError("staging is full; retry shortly", retry_after=2)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StageOutcome] = loop.create_future()
        self._queue.put(_Pending(request, future, loop))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
            self._commit(group)

    def _commit(self, group: list[_Pending]) -> None:
        try:
            now = self._clock.now()
            with self._db.transaction() as tx:
                outcomes = [self._store.stage(tx, pending.request, now) for pending in group]
        except Exception as exc:
            log.exception("staging commit of %d requests failed", len(group))
            for pending in group:
                pending.loop.call_soon_threadsafe(_fail, pending.future, exc)
            return
        with self._backlog_lock:
            self._backlog += sum(outcome.accepted for outcome in outcomes)
        for pending, outcome in zip(group, outcomes, strict=True):
            pending.loop.call_soon_threadsafe(_resolve, pending.future, outcome)


def _resolve(future: asyncio.Future[StageOutcome], outcome: StageOutcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _fail(future: asyncio.Future[StageOutcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

"""Durable staging: what a 2xx promises is committed here first, then flushed to the lake.

Data flow::

    request -> parse/pseudonymise -> StagingWriter.stage()  (group commit: one transaction, one fsync,
                                       |                     for every request queued meanwhile)
                                       v
             staged (pseudonymised rows, Arrow IPC)  + dedupe (keys seen)  + quarantine (sealed rejects)
                                       |                     + pbx_activity (each PBX's last post, counts)
                                       v
                      Flusher.flush_kind(): drop staged rows <= the lake's marker, read a batch in seq
                                       order -> lake.append(marker=max seq) -> delete staged rows <= marker

Exactly once: a record's dedupe key is inserted in the same transaction as the record, so a retried
record is a duplicate whether or not the first copy has reached the lake yet. The lake commit carries
the highest staged seq it contains; after a crash between the lake commit and the staging delete (of
this process or of another one), the next flush first deletes what the lake already has, so nothing is
appended twice.

Dedupe rows are keyed ``HHHHHHH:<first 128 bits of the record's dedupe key>``, where ``HHHHHHH`` is the
UTC hour of the record's own time (start of the call, time of the event), zero-padded. A retried
record carries the same time, so it finds its key; and keys arrive roughly in time order, so a batch
of inserts touches a few B-tree pages of the current hours instead of pages all over a table of tens
of millions of random keys (which cost 10-20 us per key and tens of MB of WAL per commit). The price:
a record re-sent after its PBX's time zone setting was changed (Asterisk writes local times) lands in
another hour and is staged again. Keys of a whole commit group are inserted with one statement reading
a JSON array (``json_each``); only when that statement reports fewer new rows than keys (a retry, or
the same record twice in a group) is it rolled back to a savepoint and redone with ``RETURNING``, to
learn which records are new. The schema of migration 1 is unchanged (the same columns hold the new keys).

Staged payloads are Arrow IPC streams (zstd) in the lake's schema: many small requests of one commit
group share one staged row; a large request (a Master.csv batch parsed column-wise) keeps its own.
Payloads written by earlier versions as JSON rows are still read.

Backpressure: ``StagingWriter.stage`` raises ``OverloadedError`` (503 + Retry-After) once the staged
backlog exceeds its limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import operator
import queue
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc

from gateway.audit import Clock
from gateway.db import Database, Migrations, Transaction, parse_utc, utc_text
from gateway.errors import OverloadedError
from ingest.records import ACD_EVENT_SCHEMA, CDR_SCHEMA, AcdEventRecord, CdrRecord
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
    (
        2,
        [
            # The flusher asks every second when the oldest staged row of each kind arrived: this index
            # answers alone. Read from the table, staged_at comes after the payload, so SQLite walked
            # every staged payload's overflow pages to find it (16 ms with four Master.csv batches staged).
            "CREATE INDEX staged_kind_time ON staged(kind, seq, staged_at)",
            "DROP INDEX staged_kind",
        ],
    ),
    (
        3,
        [
            # What each PBX has sent: a PBX that falls silent (a changed password, a full disk on the
            # PBX, a firewall) shows as an old last_at. One upsert per PBX per commit group.
            """CREATE TABLE pbx_activity (
                pbx TEXT PRIMARY KEY,
                last_at TEXT NOT NULL,
                posts INTEGER NOT NULL,
                accepted INTEGER NOT NULL,
                duplicates INTEGER NOT NULL,
                rejected INTEGER NOT NULL
            )""",
        ],
    ),
]
_ACTIVITY_SQL = (
    "INSERT INTO pbx_activity (pbx, last_at, posts, accepted, duplicates, rejected) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (pbx) DO UPDATE SET last_at = CASE WHEN excluded.last_at > pbx_activity.last_at"
    " THEN excluded.last_at ELSE pbx_activity.last_at END, posts = pbx_activity.posts + excluded.posts,"
    " accepted = pbx_activity.accepted + excluded.accepted,"
    " duplicates = pbx_activity.duplicates + excluded.duplicates, rejected = pbx_activity.rejected + excluded.rejected"
)

# Staged payloads are read at most this many at once; ``StagingStore.scan`` also stops a read once it
# holds this many records (one large Master.csv payload, or a few hundred small commit groups).
_READ_PAYLOADS = 500
_SCAN_RECORDS = 20_000
# Answered from the index staged_kind_time alone (migration 2).
OLDEST_STAGED_SQL = "SELECT staged_at AS t FROM staged WHERE kind = ? ORDER BY seq LIMIT 1"

Kind = Literal["cdr", "acd_event"]
KINDS: tuple[Kind, ...] = ("cdr", "acd_event")
Record = CdrRecord | AcdEventRecord

SCHEMAS: dict[str, pa.Schema] = {"cdr": CDR_SCHEMA, "acd_event": ACD_EVENT_SCHEMA}
TIME_COLUMNS: dict[str, str] = {"cdr": "start_at", "acd_event": "event_at"}
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
_IPC_PLAIN = pa.ipc.IpcWriteOptions()
_COMPRESS_FROM_ROWS = 1000
_ROW_GETTERS = {kind: operator.attrgetter(*schema.names) for kind, schema in SCHEMAS.items()}
_ROW_TYPES = {kind: pa.struct(list(schema)) for kind, schema in SCHEMAS.items()}
_SCHEMA_MESSAGES: list[tuple[pa.Schema, bytes]] = [(schema, bytes(schema.serialize())) for schema in SCHEMAS.values()]
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # continuation marker, zero length
_US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be accepted: kept, sealed, for replay."""

    line: int
    reason: str
    raw: bytes


@dataclass(slots=True)
class StageRequest:
    """One request's records (objects, or an Arrow table in the kind's schema) and rejects, staged atomically."""

    kind: Kind
    tenant: str
    pbx: str
    source_format: str
    records: Sequence[Record]
    rejects: Sequence[Rejected] = ()
    table: pa.Table | None = None  # a large request parsed column-wise; ``records`` is then empty
    replayed: bool = False  # from the quarantine, by an operator: not the PBX's activity, rejects not kept again

    @property
    def size(self) -> int:
        """How many records the request carries."""
        return self.table.num_rows if self.table is not None else len(self.records)


@dataclass(slots=True)
class StageOutcome:
    """What staging did with a request's records."""

    accepted: int = 0
    duplicates: int = 0
    quarantined: list[str] = field(default_factory=list)


def staging_key(dedupe_key: str, at: datetime) -> str:
    """The dedupe row of a record: UTC hour of its time, then 128 bits of its dedupe key (see module doc)."""
    hour = max(0, int(at.timestamp()) // 3600)
    return f"{hour:07d}:{dedupe_key[:32] if len(dedupe_key) == 64 else dedupe_key}"


def staging_keys(table: pa.Table, kind: str) -> list[str]:
    """``staging_key`` of every row of a table in the kind's schema (dedupe keys are SHA-256 hex)."""
    micros = pc.cast(table.column(TIME_COLUMNS[kind]), pa.int64())
    hours = pc.max_element_wise(pc.divide(micros, _US_PER_HOUR), 0)
    keys = table.column("dedupe_key")
    if pc.any(pc.not_equal(pc.utf8_length(keys), 64)).as_py():
        times = table.column(TIME_COLUMNS[kind]).to_pylist()
        return [staging_key(k, t) for k, t in zip(keys.to_pylist(), times, strict=True)]
    joined = pc.binary_join_element_wise(
        pc.utf8_lpad(pc.cast(hours, pa.string()), 7, "0"), pc.utf8_slice_codeunits(keys, 0, 32), ":"
    )
    keys_text: list[str] = joined.to_pylist()
    return keys_text


def encode_table(table: pa.Table) -> bytes:
    """Rows as an Arrow IPC stream: what the ``staged.payload`` column holds.

    Large tables are zstd-compressed; small ones (a commit group of single CDRs) are not, since
    compressing each of their small buffers costs more CPU than the bytes it saves are worth.
    """
    if table.num_rows < _COMPRESS_FROM_ROWS:
        batches = table.to_batches()
        if len(batches) == 1:
            for schema, message in _SCHEMA_MESSAGES:
                if table.schema.equals(schema, check_metadata=True):
                    # what the stream writer writes: schema message, the batch's message, end-of-stream
                    return message + bytes(batches[0].serialize()) + _END_OF_STREAM
    sink = pa.BufferOutputStream()
    options = _IPC_OPTIONS if table.num_rows >= _COMPRESS_FROM_ROWS else _IPC_PLAIN
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def records_table(records: Sequence[Record], kind: str) -> pa.Table:
    """Record objects of one kind as an Arrow table in the kind's schema (column by column)."""
    schema = SCHEMAS[kind]
    rows = [_ROW_GETTERS[kind](record) for record in records]
    if rows:  # one conversion of the rows as a struct array costs far less than one per column
        batch = pa.RecordBatch.from_struct_array(pa.array(rows, type=_ROW_TYPES[kind]))
        return pa.Table.from_batches([batch], schema=schema)
    return pa.Table.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def encode_records(records: Sequence[Record]) -> bytes:
    """Records of one kind as a staged payload (Arrow IPC)."""
    kind = "acd_event" if records and isinstance(records[0], AcdEventRecord) else "cdr"
    return encode_table(records_table(records, kind))


def decode_table(kind: str, payload: bytes) -> pa.Table:
    """A staged payload as an Arrow table in the kind's schema (JSON payloads of earlier versions too)."""
    if payload[:1] == b"[":
        return records_table(_decode_json_records(kind, payload), kind)
    with pa.ipc.open_stream(payload) as reader:
        return reader.read_all()


def decode_records(kind: str, payload: bytes) -> list[Record]:
    """A staged payload as record objects (search over staging; inverse of ``encode_records``)."""
    if payload[:1] == b"[":
        return _decode_json_records(kind, payload)
    record_type = _RECORD_TYPES[kind]
    return [record_type(**row) for row in decode_table(kind, payload).to_pylist()]


_TIME_FIELDS = {
    "cdr": {"start_at", "answer_at", "end_at", "ingested_at"},
    "acd_event": {"event_at", "ingested_at"},
}
_RECORD_TYPES: dict[str, type[CdrRecord] | type[AcdEventRecord]] = {"cdr": CdrRecord, "acd_event": AcdEventRecord}


def _decode_json_records(kind: str, payload: bytes) -> list[Record]:
    """Payloads of earlier versions: JSON rows, values in schema order, times as epoch microseconds."""
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


_CLAIM_SQL = {
    "sqlite": "INSERT INTO dedupe (key, seen_at) SELECT value, ? FROM json_each(?) WHERE true"
    " ON CONFLICT (key) DO NOTHING",
    "postgresql": "INSERT INTO dedupe (key, seen_at) SELECT value, CAST(? AS TEXT)"
    " FROM json_array_elements_text(CAST(? AS JSON)) AS keys(value) ON CONFLICT (key) DO NOTHING",
}


def claim_keys(tx: Transaction, keys: list[str], seen_at: str) -> list[bool]:
    """Insert the dedupe rows of ``keys``; for each key, whether it is new (the first of equal keys wins)."""
    if not keys:
        return []
    sql = _CLAIM_SQL[tx.dialect]
    payload = json.dumps(keys)
    tx.execute("SAVEPOINT claim_keys")
    if tx.execute(sql, (seen_at, payload)) == len(keys):
        tx.execute("RELEASE SAVEPOINT claim_keys")
        return [True] * len(keys)
    # Some keys were there already (or repeat within the batch): redo it, learning which ones are new.
    tx.execute("ROLLBACK TO SAVEPOINT claim_keys")
    tx.execute("RELEASE SAVEPOINT claim_keys")
    inserted = {str(row["key"]) for row in tx.fetch_all(sql + " RETURNING key", (seen_at, payload))}
    fresh: list[bool] = []
    for key in keys:
        fresh.append(key in inserted)
        inserted.discard(key)
    return fresh


def seconds_since(moment: datetime, now: datetime) -> float:
    """How long ago ``moment`` was (0 for a moment after ``now``: clocks of processes may differ)."""
    return max(0.0, (now - moment).total_seconds())


@dataclass(frozen=True, slots=True)
class PbxActivity:
    """What one PBX has sent: when last, and how many posts and records (since its first post)."""

    last_at: datetime
    posts: int
    accepted: int
    duplicates: int
    rejected: int

    def to_json(self, now: datetime) -> dict[str, Any]:
        """As the API shows it (``ingest status``, ``pbx list``)."""
        return {
            "last_post_at": self.last_at.isoformat(),
            "last_post_age_seconds": seconds_since(self.last_at, now),
            "posts": self.posts,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }


def _count_activity(
    tx: Transaction, requests: Sequence[StageRequest], outcomes: Sequence[StageOutcome], seen_at: str
) -> None:
    """Add a commit group's PBX requests to ``pbx_activity`` (one statement per PBX)."""
    totals: dict[str, list[int]] = {}
    for request, outcome in zip(requests, outcomes, strict=True):
        if request.replayed:
            continue
        counts = totals.setdefault(request.pbx, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += outcome.accepted
        counts[2] += outcome.duplicates
        counts[3] += len(request.rejects)
    for pbx, (posts, accepted, duplicates, rejected) in totals.items():
        tx.execute(_ACTIVITY_SQL, (pbx, seen_at, posts, accepted, duplicates, rejected))


@dataclass(frozen=True, slots=True)
class KindStatus:
    """Staged records of one kind that are not in the lake yet."""

    records: int
    payloads: int  # staged rows: a large request's records, or a commit group's small requests
    oldest_staged_at: datetime | None  # when the next row to be flushed arrived

    def waited(self, now: datetime) -> float | None:
        """Seconds the oldest staged record has waited for the lake (None: nothing staged)."""
        return None if self.oldest_staged_at is None else seconds_since(self.oldest_staged_at, now)


@dataclass(frozen=True, slots=True)
class StagingStatus:
    """The staging area and the quarantine at one moment (``StagingStore.status``)."""

    kinds: dict[Kind, KindStatus]
    quarantine_pending: int  # rejected records not replayed (yet)
    quarantine_replayed: int
    pbxs: dict[str, PbxActivity]  # by PBX name; PBXs that never posted are absent

    @property
    def backlog(self) -> int:
        """Staged records of every kind."""
        return sum(kind.records for kind in self.kinds.values())


@dataclass(slots=True)
class PreparedGroup:
    """A commit group's requests with what staging them needs outside the transaction."""

    requests: Sequence[StageRequest]
    keys: list[str]  # staging keys of every record, in request order
    payloads: list[tuple[Kind, str, int, bytes]]  # kind, tenant, records, payload: every record new
    quarantine: list[list[tuple[str, Rejected, bytes]]]  # per request: quarantine id, reject, sealed raw


def _group_payloads(
    requests: Sequence[StageRequest], flags: Sequence[Sequence[bool]] | None
) -> list[tuple[Kind, str, int, bytes]]:
    """Staged payloads of a group's new records (``flags`` None: all are new): one per column-wise
    request, one per (kind, tenant) for the small requests, which share a row."""
    shared: dict[tuple[Kind, str], list[Record]] = {}
    payloads: list[tuple[Kind, str, int, bytes]] = []
    for index, request in enumerate(requests):
        new = None if flags is None else flags[index]
        if request.size == 0 or (new is not None and not any(new)):
            continue
        if request.table is not None:
            table = request.table if new is None or all(new) else request.table.filter(pa.array(new))
            payloads.append((request.kind, request.tenant, table.num_rows, encode_table(table)))
        else:
            group = shared.setdefault((request.kind, request.tenant), [])
            if new is None:
                group += request.records
            else:
                group += [record for record, fresh in zip(request.records, new, strict=True) if fresh]
    for (kind, tenant), records in shared.items():
        payloads.append((kind, tenant, len(records), encode_table(records_table(records, kind))))
    return payloads


class StagingStore:
    """SQL operations on staging, dedupe and quarantine (blocking; called from the writer thread)."""

    def __init__(self, db: Database, sealing_key: bytes, clock: Clock) -> None:
        self._db = db
        self._sealing_key = sealing_key
        self._clock = clock

    def stage(self, tx: Transaction, request: StageRequest, now: datetime) -> StageOutcome:
        """Stage one request's new records and quarantine its rejects, inside ``tx``."""
        return self.stage_many(tx, [request], now)[0]

    def stage_many(self, tx: Transaction, requests: Sequence[StageRequest], now: datetime) -> list[StageOutcome]:
        """Stage a commit group inside ``tx``: one dedupe statement for all, small requests share a row."""
        return self.stage_prepared(tx, self.prepare_group(requests), now)

    def prepare_group(self, requests: Sequence[StageRequest]) -> PreparedGroup:
        """Everything a commit group needs that no transaction does: keys, payloads, sealed rejects.

        The writer calls this before it takes the store's write lock, which every process of the node
        queues on: the lock is then held for the SQL statements and the commit only. Payloads are
        encoded as if every record were new, the common case; ``stage_prepared`` re-encodes the group
        when some records turn out to be duplicates.
        """
        keys: list[str] = []
        for request in requests:
            if request.table is not None:
                keys += staging_keys(request.table, request.kind)
            else:
                time_field = TIME_COLUMNS[request.kind]
                keys += [staging_key(r.dedupe_key, getattr(r, time_field)) for r in request.records]
        quarantine: list[list[tuple[str, Rejected, bytes]]] = []
        for request in requests:
            sealed = []
            for reject in () if request.replayed else request.rejects:  # a replay's record is quarantined already
                quarantine_id = "q_" + secrets.token_hex(8)
                sealed.append((quarantine_id, reject, encrypt_bytes(reject.raw, self._sealing_key, quarantine_id)))
            quarantine.append(sealed)
        return PreparedGroup(requests, keys, _group_payloads(requests, None), quarantine)

    def stage_prepared(self, tx: Transaction, group: PreparedGroup, now: datetime) -> list[StageOutcome]:
        """Stage a prepared commit group inside ``tx``."""
        seen_at = utc_text(now)
        fresh = claim_keys(tx, group.keys, seen_at)
        outcomes: list[StageOutcome] = []
        flags_by_request: list[list[bool]] = []
        offset = 0
        for request in group.requests:
            flags = fresh[offset : offset + request.size]
            offset += request.size
            accepted = sum(flags)
            outcomes.append(StageOutcome(accepted=accepted, duplicates=request.size - accepted))
            flags_by_request.append(flags)
        payloads = group.payloads if all(fresh) else _group_payloads(group.requests, flags_by_request)
        if payloads:
            counter = tx.fetch_one(
                "UPDATE staging_counter SET value = value + ? WHERE id = 1 RETURNING value", (len(payloads),)
            )
            assert counter is not None
            first_seq = int(counter["value"]) - len(payloads) + 1
            for seq, (kind, tenant, count, payload) in enumerate(payloads, start=first_seq):
                tx.execute(
                    "INSERT INTO staged (seq, kind, tenant, records, payload, staged_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, kind, tenant, count, payload, seen_at),
                )
        for request, outcome, sealed in zip(group.requests, outcomes, group.quarantine, strict=True):
            for quarantine_id, reject, blob in sealed:
                tx.execute(
                    "INSERT INTO quarantine (id, received_at, pbx, tenant, format, line, reason, sealed)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (quarantine_id, seen_at, request.pbx, request.tenant, request.source_format, reject.line,
                     reject.reason, blob),
                )  # fmt: skip
                outcome.quarantined.append(quarantine_id)
        _count_activity(tx, group.requests, outcomes, seen_at)
        return outcomes

    def pbx_activity(self) -> dict[str, PbxActivity]:
        """What each PBX has sent, by name (PBXs that never sent anything are absent)."""
        return {
            str(row["pbx"]): PbxActivity(
                parse_utc(str(row["last_at"])), int(row["posts"]), int(row["accepted"]), int(row["duplicates"]),
                int(row["rejected"]),
            )
            for row in self._db.fetch_all("SELECT * FROM pbx_activity")
        }  # fmt: skip

    def backlog(self) -> int:
        """Records staged and not yet in the lake."""
        row = self._db.fetch_one("SELECT COALESCE(SUM(records), 0) AS n FROM staged")
        return int(row["n"]) if row else 0

    def status(self) -> StagingStatus:
        """What is staged per kind (records, payloads, oldest arrival), what waits in quarantine, and
        what each PBX has posted.

        Shared by every process of the node (it is read from the store), so any HTTP worker answers
        the same. Reads ``records`` from each staged row, never a payload.
        """
        counts = {
            str(row["kind"]): (int(row["records"]), int(row["payloads"]))
            for row in self._db.fetch_all(
                "SELECT kind, COALESCE(SUM(records), 0) AS records, COUNT(*) AS payloads FROM staged GROUP BY kind"
            )
        }
        kinds = {
            kind: KindStatus(*counts.get(kind, (0, 0)), oldest_staged_at=self.oldest_staged_at(kind)) for kind in KINDS
        }
        row = self._db.fetch_one("SELECT COUNT(*) AS total, COUNT(replayed_at) AS replayed FROM quarantine")
        total, replayed = (int(row["total"]), int(row["replayed"])) if row else (0, 0)
        return StagingStatus(
            kinds, quarantine_pending=total - replayed, quarantine_replayed=replayed, pbxs=self.pbx_activity()
        )

    def batch(self, kind: str, max_records: int) -> tuple[int, pa.Table | None]:
        """The oldest staged rows of ``kind`` up to about ``max_records``: (highest seq, their records)."""
        rows = self._db.fetch_all("SELECT seq, records FROM staged WHERE kind = ? ORDER BY seq LIMIT ?", (kind, 10_000))
        seqs: list[int] = []
        total = 0
        for row in rows:
            if seqs and total + int(row["records"]) > max_records:
                break
            seqs.append(int(row["seq"]))
            total += int(row["records"])
        if not seqs:
            return 0, None
        tables = []
        for first in range(0, len(seqs), _READ_PAYLOADS):
            tables += self._decoded(kind, seqs[first : first + _READ_PAYLOADS])
        return seqs[-1], pa.concat_tables(tables)

    def _decoded(self, kind: str, seqs: Sequence[int]) -> list[pa.Table]:
        """The staged payloads with these seqs (at most ``_READ_PAYLOADS``), decoded, in seq order."""
        placeholders = ", ".join("?" * len(seqs))
        rows = self._db.fetch_all(
            f"SELECT payload FROM staged WHERE seq IN ({placeholders}) ORDER BY seq",  # noqa: S608 - placeholders only
            seqs,
        )
        return [decode_table(kind, bytes(row["payload"])) for row in rows]

    def scan(self, kind: Kind, matching: Callable[[pa.Table], pa.Array], tenant: str | None = None) -> pa.Table:
        """Staged rows of ``kind`` (of one ``tenant``, else all) not in the lake yet, where ``matching(payload
        table)`` is true.

        Payloads are read a few at a time, so memory follows the matches, not the backlog. A row the
        flusher moves meanwhile is either read here or already in the lake (it is appended there before
        it is deleted here): callers that want every row read staging first, then the lake.
        """
        sql = "SELECT seq, records FROM staged WHERE kind = ?"
        params: list[str] = [kind]
        if tenant is not None:  # a staged row holds one tenant's records
            sql += " AND tenant = ?"
            params.append(tenant)
        found = [SCHEMAS[kind].empty_table()]
        chunk: list[int] = []
        records = 0
        rows = self._db.fetch_all(sql + " ORDER BY seq", params)
        for index, row in enumerate(rows):
            chunk.append(int(row["seq"]))
            records += int(row["records"])
            if records >= _SCAN_RECORDS or len(chunk) == _READ_PAYLOADS or index == len(rows) - 1:
                found += [table.filter(matching(table)) for table in self._decoded(kind, chunk)]
                chunk, records = [], 0
        return pa.concat_tables(found)

    def oldest_staged_at(self, kind: str) -> datetime | None:
        """When the oldest staged row of ``kind`` (the lowest seq, the next to be flushed) arrived.

        Rows are numbered in commit order under the node's write lock; their times come from each
        process's clock, so in theory they may differ by a clock's skew between processes.
        """
        row = self._db.fetch_one(OLDEST_STAGED_SQL, (kind,))
        if row is None or row["t"] is None:
            return None
        return parse_utc(str(row["t"]))

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

    def expire_quarantine(self, before: datetime, record: Callable[[Transaction, int], None]) -> int:
        """Delete quarantined records received before ``before`` (replayed or not); ``record(tx, count)``
        writes what was deleted in the same transaction. Returns the count."""
        with self._db.transaction() as tx:
            deleted = tx.execute("DELETE FROM quarantine WHERE received_at < ?", (utc_text(before),))
            if deleted:
                record(tx, deleted)
        return deleted

    def quarantined(
        self, limit: int = 1000, *, pbx: str | None = None, pending: bool = False
    ) -> tuple[list[dict[str, Any]], int]:
        """Quarantined records, oldest first (metadata only, never the sealed content), of one PBX and
        only those not replayed when asked; and how many match in all (the list stops at ``limit``)."""
        where, params = _quarantine_filter(pbx, pending)
        rows = self._db.fetch_all(
            "SELECT id, received_at, pbx, tenant, format, line, reason, replayed_at FROM quarantine"  # noqa: S608
            f"{where} ORDER BY received_at, id LIMIT ?",
            [*params, limit],
        )
        total = self._db.fetch_one(f"SELECT COUNT(*) AS n FROM quarantine{where}", params)  # noqa: S608
        return rows, int(total["n"]) if total else 0

    def pending_quarantine(self, pbx: str, after: str | None, limit: int) -> list[str]:
        """Ids of a PBX's quarantined records not replayed yet, in id order after ``after`` (a cursor)."""
        where, params = _quarantine_filter(pbx, True)
        if after is not None:
            where += " AND id > ?"
            params.append(after)
        rows = self._db.fetch_all(f"SELECT id FROM quarantine{where} ORDER BY id LIMIT ?", [*params, limit])  # noqa: S608
        return [str(row["id"]) for row in rows]

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


def _quarantine_filter(pbx: str | None, pending: bool) -> tuple[str, list[str]]:
    """The WHERE clause (fixed text, values as parameters) selecting quarantined records."""
    conditions: list[str] = []
    params: list[str] = []
    if pbx is not None:
        conditions.append("pbx = ?")
        params.append(pbx)
    if pending:
        conditions.append("replayed_at IS NULL")
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


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
            del first, group  # do not hold the last group's records while waiting for the next

    def _commit(self, group: list[_Pending]) -> None:
        try:
            prepared = self._store.prepare_group([pending.request for pending in group])  # before the lock
            now = self._clock.now()
            with self._db.transaction() as tx:
                outcomes = self._store.stage_prepared(tx, prepared, now)
        except Exception as exc:
            log.exception("staging commit of %d requests failed", len(group))
            for pending in group:
                pending.loop.call_soon_threadsafe(_fail, pending.future, exc)
            return
        with self._backlog_lock:
            self._backlog += sum(outcome.accepted for outcome in outcomes)
        # One wake-up per event loop for the whole group, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[StageOutcome], StageOutcome]]] = {}
        for pending, outcome in zip(group, outcomes, strict=True):
            by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
        for loop, results in by_loop.items():
            loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future[StageOutcome], StageOutcome]]) -> None:
    for future, outcome in results:
        if not future.done():
            future.set_result(outcome)


def _fail(future: asyncio.Future[StageOutcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

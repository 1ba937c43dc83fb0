"""PBX ingest: parse -> normalise -> pseudonymise -> durable staging -> (flusher) -> Iceberg lake.

``IngestService.ingest`` is what every ingest endpoint calls; it returns only once the accepted
records are committed to staging, which is what makes a 2xx mean "durable". ``Flusher`` moves staged
records to the lake in large appends (by size or age) and reconciles after a crash; it also runs lake
maintenance (compaction, snapshot expiry) on a schedule.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.audit import Clock
from gateway.principals import Pbx
from gateway.staging import KINDS, Kind, Rejected, StageRequest, StagingStore, StagingWriter
from gateway.subjects import SqlSubjectTokens
from ingest.context import ParseResult, PbxContext
from ingest.formats import FORMAT_TABLES, PARSERS
from ingest.formats.queue_log import decode_form, parse_queue_log_store
from ingest.lake import IcebergLake
from ingest.policy import pseudonymise_all
from ingest.records import (
    ACD_EVENT_SCHEMA,
    CDR_SCHEMA,
    AcdEventRecord,
    CdrRecord,
    RawAcdEvent,
    RawCdr,
    records_to_table,
)

log = logging.getLogger("telgate.ingest")

QUEUE_LOG_STORE = "queue-log-store"
_SCHEMAS = {"cdr": CDR_SCHEMA, "acd_event": ACD_EVENT_SCHEMA}


@dataclass(slots=True)
class IngestResult:
    """The 202 body: how many records were accepted, how many were duplicates, which were rejected."""

    accepted: int
    duplicates: int
    rejected: list[dict[str, object]] = field(default_factory=list)


def pbx_context(pbx: Pbx) -> PbxContext:
    """The parsing context of a PBX principal."""
    return PbxContext(
        name=pbx.name,
        tenant=pbx.tenant,
        timezone=ZoneInfo(pbx.timezone),
        country=pbx.country,
        csv_columns=pbx.csv_columns,
    )


class IngestService:
    """Turns a PBX's request body into staged, pseudonymised records."""

    def __init__(self, subjects: SqlSubjectTokens, writer: StagingWriter, clock: Clock) -> None:
        self._subjects = subjects
        self._writer = writer
        self._clock = clock

    def _prepare(self, pbx: Pbx, source_format: str, body: bytes, content_type: str) -> StageRequest:
        """Parse and pseudonymise (CPU-bound; runs in a worker thread)."""
        ctx = pbx_context(pbx)
        result: ParseResult[RawCdr] | ParseResult[RawAcdEvent]
        if source_format == QUEUE_LOG_STORE:
            result = parse_queue_log_store(decode_form(body), ctx)
            kind: Kind = "acd_event"
        else:
            result = PARSERS[source_format](body, content_type, ctx)
            kind = FORMAT_TABLES[source_format]
        records: list[CdrRecord] | list[AcdEventRecord] = pseudonymise_all(
            result.records, ctx, self._subjects, self._clock.now()
        )
        rejects = [Rejected(reject.line or 0, reject.reason, reject.raw) for reject in result.rejects]
        return StageRequest(kind, pbx.tenant, pbx.name, source_format, records, rejects)

    async def ingest(self, pbx: Pbx, source_format: str, body: bytes, content_type: str) -> IngestResult:
        """Parse, pseudonymise and durably stage one request's records."""
        request = await asyncio.to_thread(self._prepare, pbx, source_format, body, content_type)
        outcome = await self._writer.stage(request)
        rejected: list[dict[str, object]] = [
            {"line": reject.line or None, "reason": reject.reason, "quarantine_id": quarantine_id}
            for reject, quarantine_id in zip(request.rejects, outcome.quarantined, strict=True)
        ]
        return IngestResult(outcome.accepted, outcome.duplicates, rejected)


class Flusher:
    """Moves staged records to the lake: by size, by age, on demand; reconciles after a crash."""

    def __init__(
        self,
        store: StagingStore,
        writer: StagingWriter,
        lake: IcebergLake,
        clock: Clock,
        *,
        flush_records: int,
        flush_interval: timedelta,
        dedupe_window: timedelta,
    ) -> None:
        self._store = store
        self._writer = writer
        self._lake = lake
        self._clock = clock
        self._flush_records = flush_records
        self._flush_interval = flush_interval
        self._dedupe_window = dedupe_window
        self._lock = asyncio.Lock()

    def reconcile(self) -> int:
        """Drop staged rows the lake already holds (a crash came between lake commit and delete)."""
        dropped = 0
        for kind in KINDS:
            marker = self._lake.last_committed_marker(kind)
            if marker is not None:
                dropped += self._store.delete_through(kind, marker)
        if dropped:
            log.info("reconciled %d staged records already in the lake", dropped)
            self._writer.flushed(dropped)
        return dropped

    def flush_kind(self, kind: Kind) -> int:
        """Append the oldest staged batch of ``kind`` to the lake; returns records moved."""
        last_seq, records = self._store.batch(kind, self._flush_records)
        if not records:
            return 0
        table = records_to_table(records, _SCHEMAS[kind])  # type: ignore[arg-type]  # one kind per batch
        self._lake.append(kind, table, marker=last_seq)
        dropped = self._store.delete_through(kind, last_seq)
        self._writer.flushed(dropped)
        return dropped

    def flush_all(self) -> int:
        """Flush until staging is empty; returns records moved."""
        moved = 0
        for kind in KINDS:
            while batch := self.flush_kind(kind):
                moved += batch
        return moved

    async def flush_now(self) -> int:
        """Flush everything staged (tests, shutdown, `telgate ingest flush`)."""
        async with self._lock:
            return await asyncio.to_thread(self.flush_all)

    def due(self, now: datetime) -> bool:
        """True when staging holds a full batch or its oldest record has waited long enough."""
        if self._writer.backlog >= self._flush_records:
            return True
        for kind in KINDS:
            oldest = self._store.oldest_staged_at(kind)
            if oldest is not None and now - oldest >= self._flush_interval:
                return True
        return False

    def expire_dedupe(self) -> int:
        """Forget dedupe keys older than the window."""
        return self._store.expire_dedupe(self._clock.now() - self._dedupe_window)

    async def run(self, poll_seconds: float = 1.0) -> None:
        """Background loop of ``serve``: flush when due; never raises (errors are logged and retried)."""
        last_expiry: datetime | None = None
        while True:
            try:
                now = self._clock.now()
                if await asyncio.to_thread(self.due, now):
                    await self.flush_now()
                if last_expiry is None or now - last_expiry >= timedelta(hours=1):
                    await asyncio.to_thread(self.expire_dedupe)
                    last_expiry = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("flush failed; staged records are kept and retried")
            await asyncio.sleep(poll_seconds)

"""PBX ingest: parse -> normalise -> pseudonymise -> durable staging -> (flusher) -> Iceberg lake.

``IngestService.ingest`` is what every ingest endpoint calls; it returns only once the accepted
records are committed to staging, which is what makes a 2xx mean "durable". ``Flusher`` moves staged
records to the lake in large appends (by size or age), never appending twice what a crash left; it also runs lake
maintenance (compaction, snapshot expiry) on a schedule.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pyarrow as pa

from gateway.audit import SYSTEM_ACTOR, AuditTrail, Clock
from gateway.db import Transaction
from gateway.principals import Pbx
from gateway.settings import LakeSettings
from gateway.staging import KINDS, Kind, Rejected, StageRequest, StagingStore, StagingWriter, records_table
from gateway.subjects import SqlSubjectTokens
from ingest.context import ParseResult, PbxContext
from ingest.formats import FORMAT_TABLES, PARSERS
from ingest.formats.asterisk_csv import COLUMNAR_MIN_BYTES, parse_asterisk_csv, parse_asterisk_csv_columns
from ingest.formats.asterisk_csv import FORMAT as CSV_FORMAT
from ingest.formats.queue_log import decode_form, parse_queue_log_store
from ingest.policy import Pseudonymiser, pseudonymise_all, pseudonymise_csv_columns
from ingest.ports import SubjectTokens
from ingest.records import (
    AcdEventRecord,
    CdrRecord,
    RawAcdEvent,
    RawCdr,
)

if TYPE_CHECKING:
    from ingest.lake import IcebergLake, MaintenanceReport

log = logging.getLogger("telgate.ingest")

QUEUE_LOG_STORE = "queue-log-store"
# Bodies up to this size are parsed on the event loop, and pseudonymised there too when every subject
# token they need is already in this node's cache: a FreeSWITCH CDR costs far less CPU than a hop to a
# worker thread and back (about 50 us). Larger bodies, and the pseudonymisation of small ones that need
# the database, go to a worker thread.
INLINE_BODY_BYTES = 32 * 1024
# Large Master.csv bodies are parsed column-wise in pieces of about this size (~15,000 lines), which
# bounds the Arrow buffers alive at once without costing throughput.
CSV_CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class IngestResult:
    """The 202 body: how many records were accepted, how many were duplicates, which were rejected."""

    accepted: int
    duplicates: int
    rejected: list[dict[str, object]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        """The JSON body of the answer."""
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


@functools.lru_cache(maxsize=1024)
def pbx_context(pbx: Pbx) -> PbxContext:
    """The parsing context of a PBX principal (cached: it is built and validated once per profile)."""
    return PbxContext(
        name=pbx.name,
        tenant=pbx.tenant,
        timezone=ZoneInfo(pbx.timezone),
        country=pbx.country,
        csv_columns=pbx.csv_columns,
    )


class _TokenNotCachedError(Exception):
    """A number's subject token is not in this node's cache: the request must go to a worker thread."""


class _CachedTokensOnly:
    """``SubjectTokens`` served from the node's cache only; a miss aborts the inline attempt."""

    def __init__(self, subjects: SqlSubjectTokens) -> None:
        self._subjects = subjects

    def token_for(self, tenant: str, e164: str) -> str:
        """The cached token, or abort."""
        return self.tokens_for(tenant, [e164])[e164]

    def tokens_for(self, tenant: str, numbers: Iterable[str]) -> dict[str, str]:
        """Every cached token, or abort when one is missing."""
        wanted = set(numbers)
        found = self._subjects.cached_tokens(tenant, wanted)
        if len(found) != len(wanted):
            raise _TokenNotCachedError
        return found


@dataclass(slots=True)
class _Wanted:
    """Numbers one request needs tokens for, and what it got."""

    tenant: str
    numbers: set[str]
    tokens: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False


class _TokenBatcher:
    """Group commit for new subject tokens: the numbers that concurrent requests miss share one transaction.

    The first worker thread that misses becomes the leader and creates every number queued so far in one
    ``tokens_for`` call per tenant; threads that miss meanwhile queue for the next round. Without this,
    each request seeing a new caller paid a transaction and an fsync of its own.
    """

    def __init__(self, subjects: SqlSubjectTokens) -> None:
        self._subjects = subjects
        self._cond = threading.Condition()
        self._queued: list[_Wanted] = []
        self._running = False

    def token_for(self, tenant: str, e164: str) -> str:
        """The token of one number."""
        return self.tokens_for(tenant, [e164])[e164]

    def tokens_for(self, tenant: str, numbers: Iterable[str]) -> dict[str, str]:
        """Tokens of ``numbers``: from the cache, else created together with other requests' numbers."""
        wanted = set(numbers)
        found = self._subjects.cached_tokens(tenant, wanted)
        if len(found) == len(wanted):
            return found
        mine = _Wanted(tenant, wanted - found.keys())
        with self._cond:
            self._queued.append(mine)
            while not mine.done and self._running:
                self._cond.wait()
            if not mine.done:
                self._running = True
                batch, self._queued = self._queued, []
        if not mine.done:
            self._run(batch)
        if mine.error is not None:
            raise mine.error
        return found | mine.tokens

    def _run(self, batch: list[_Wanted]) -> None:
        try:
            by_tenant: dict[str, set[str]] = {}
            for wanted in batch:
                by_tenant.setdefault(wanted.tenant, set()).update(wanted.numbers)
            created = {tenant: self._subjects.tokens_for(tenant, numbers) for tenant, numbers in by_tenant.items()}
            for wanted in batch:
                wanted.tokens = {number: created[wanted.tenant][number] for number in wanted.numbers}
        except BaseException as exc:
            for wanted in batch:
                wanted.error = exc
            raise
        finally:
            with self._cond:
                for wanted in batch:
                    wanted.done = True
                self._running = False
                self._cond.notify_all()


_Parsed = tuple[Kind, ParseResult[RawCdr] | ParseResult[RawAcdEvent]]


class IngestService:
    """Turns a PBX's request body into staged, pseudonymised records."""

    def __init__(self, subjects: SqlSubjectTokens, writer: StagingWriter, clock: Clock) -> None:
        self._subjects = subjects
        self._cached_only = _CachedTokensOnly(subjects)
        self._batcher = _TokenBatcher(subjects)
        self._large_bodies = asyncio.Semaphore(1)
        self._writer = writer
        self._clock = clock

    def _prepare(self, pbx: Pbx, source_format: str, body: bytes, content_type: str) -> StageRequest:
        """Parse and pseudonymise a large body (CPU-bound: in a worker thread)."""
        if source_format == CSV_FORMAT and len(body) >= COLUMNAR_MIN_BYTES:
            return self._prepare_csv(pbx, pbx_context(pbx), body, content_type, self._batcher)
        parsed = self._parse(pbx, source_format, body, content_type)
        return self._pseudonymise(pbx, source_format, parsed, self._batcher)

    @staticmethod
    def _parse(pbx: Pbx, source_format: str, body: bytes, content_type: str) -> _Parsed:
        """A body in one of the PBX formats, parsed into identifiable records and rejects."""
        ctx = pbx_context(pbx)
        if source_format == QUEUE_LOG_STORE:
            return "acd_event", parse_queue_log_store(decode_form(body), ctx)
        return FORMAT_TABLES[source_format], PARSERS[source_format](body, content_type, ctx)

    def _pseudonymise(self, pbx: Pbx, source_format: str, parsed: _Parsed, tokens: SubjectTokens) -> StageRequest:
        """Parsed records as pseudonymised lake rows, with their rejects: what staging takes."""
        kind, result = parsed
        records: list[CdrRecord] | list[AcdEventRecord] = pseudonymise_all(
            result.records, pbx_context(pbx), tokens, self._clock.now()
        )
        rejects = [Rejected(reject.line or 0, reject.reason, reject.raw) for reject in result.rejects]
        return StageRequest(kind, pbx.tenant, pbx.name, source_format, records, rejects)

    def _prepare_csv(
        self, pbx: Pbx, ctx: PbxContext, body: bytes, content_type: str, tokens: SubjectTokens
    ) -> StageRequest:
        """A large Master.csv body, column-wise, in pieces of whole lines (bounded memory, same result)."""
        now = self._clock.now()
        pseudonymiser = Pseudonymiser(ctx, tokens)  # shared by the pieces: each token looked up once per body
        tables: list[pa.Table] = []
        rejects: list[Rejected] = []
        start = line_offset = 0
        while start < len(body):
            end = (
                len(body) if len(body) - start < 2 * CSV_CHUNK_BYTES else body.find(b"\n", start + CSV_CHUNK_BYTES) + 1
            )
            end = end or len(body)  # no newline after the cut: the rest is one piece
            piece = body[start:end]
            columnar = parse_asterisk_csv_columns(piece, content_type, ctx)
            if columnar is not None:
                tables.append(pseudonymise_csv_columns(columnar, ctx, tokens, now, pseudonymiser))
                piece_rejects = columnar.rejects
            else:  # an unusual piece (CR line ends, several profiles...): line by line, same result
                result = parse_asterisk_csv(piece, content_type, ctx)
                tables.append(records_table(pseudonymise_all(result.records, ctx, tokens, now), "cdr"))
                piece_rejects = result.rejects
            rejects += [Rejected(line_offset + (r.line or 0), r.reason, r.raw) for r in piece_rejects]
            line_offset += piece.count(b"\n")
            start = end
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return StageRequest("cdr", pbx.tenant, pbx.name, CSV_FORMAT, (), rejects, table=table)

    @property
    def large_body_slot(self) -> asyncio.Semaphore:
        """Held while a large body is read and parsed: one at a time (see ``is_large``)."""
        return self._large_bodies

    @staticmethod
    def is_large(content_length: int | None) -> bool:
        """Whether a body of this length (None: unknown, chunked) takes the large-body slot.

        A 50,000-line Master.csv batch needs ~100 MB of Arrow buffers while it is parsed; reading and
        parsing such bodies one at a time bounds the gateway's memory, and costs no throughput: two
        parses would not run faster side by side (the GIL), and the previous body is committed to
        staging while the next one is read and parsed. Bodies waiting for the slot stay in the socket.
        """
        return content_length is None or content_length >= COLUMNAR_MIN_BYTES

    async def prepare(self, pbx: Pbx, source_format: str, body: bytes, content_type: str) -> StageRequest:
        """Parse and pseudonymise one request body (on the loop when small, else in a thread).

        A small body is parsed on the loop; it is pseudonymised there too when every token it needs is
        in this node's cache, else in a worker thread that creates or loads the missing ones (the body
        is not parsed again).
        """
        if len(body) > INLINE_BODY_BYTES:
            return await asyncio.to_thread(self._prepare, pbx, source_format, body, content_type)
        parsed = self._parse(pbx, source_format, body, content_type)
        try:
            return self._pseudonymise(pbx, source_format, parsed, self._cached_only)
        except _TokenNotCachedError:
            return await asyncio.to_thread(self._pseudonymise, pbx, source_format, parsed, self._batcher)

    async def stage(self, request: StageRequest) -> IngestResult:
        """Durably stage a prepared request (returns once committed)."""
        outcome = await self._writer.stage(request)
        # A replay's rejects are the quarantined record itself: they keep their quarantine row and id.
        kept: list[str | None] = [None] * len(request.rejects) if request.replayed else list(outcome.quarantined)
        rejected: list[dict[str, object]] = [
            {"line": reject.line or None, "reason": reject.reason, "quarantine_id": quarantine_id}
            for reject, quarantine_id in zip(request.rejects, kept, strict=True)
        ]
        return IngestResult(outcome.accepted, outcome.duplicates, rejected)

    async def ingest(
        self, pbx: Pbx, source_format: str, body: bytes, content_type: str, *, replay: bool = False
    ) -> IngestResult:
        """Parse, pseudonymise and durably stage one request's records (``replay``: from the quarantine,
        by an operator, so not counted as the PBX's activity)."""
        if self.is_large(len(body)):
            async with self._large_bodies:
                request = await self.prepare(pbx, source_format, body, content_type)
        else:
            request = await self.prepare(pbx, source_format, body, content_type)
        if replay:
            request = replace(request, replayed=True)
        return await self.stage(request)


# Largest lake commit: the lake's writer holds about three copies of a batch (cast, sorted by day,
# Parquet buffers), so 50,000 CDRs (~20 MB of Arrow) keep a flush within ~80 MB.
COMMIT_RECORDS = 50_000


MIN_SNAPSHOTS = 10  # snapshots kept by maintenance whatever their age
MAX_RETRY_SECONDS = 60.0  # longest wait between two flush attempts while they fail


class Flusher:
    """Moves staged records to the lake: by size, by age, on demand; never twice after a crash."""

    def __init__(
        self,
        store: StagingStore,
        writer: StagingWriter,
        lake: Callable[[], IcebergLake],
        clock: Clock,
        *,
        writer_lock: Callable[[], AbstractContextManager[None]],
        flush_records: int,
        flush_interval: timedelta,
        dedupe_window: timedelta,
        quarantine_retention: timedelta,
        audit: AuditTrail,
    ) -> None:
        """``lake`` opens the lake on first call; ``writer_lock()`` keeps other processes' and nodes' writers out.

        Appends, compaction and reconciliation read the staging marker and then commit: two writers at
        once (the supervisor's flusher and a worker answering ``POST /v1/admin/ingest/flush``, or two
        nodes) could append the same staged batch twice.
        """
        self._store = store
        self._writer = writer
        self._lake = lake
        self._writer_lock = writer_lock
        self._clock = clock
        self._flush_records = flush_records
        self._flush_interval = flush_interval
        self._dedupe_window = dedupe_window
        self._quarantine_retention = quarantine_retention
        self._audit = audit
        self._lock = asyncio.Lock()

    def _settle(self, kind: Kind) -> int:
        """Under the writer lock: drop staged rows of ``kind`` up to the lake's marker; how many."""
        marker = self._lake().last_committed_marker(kind)
        dropped = self._store.delete_through(kind, marker) if marker is not None else 0
        if dropped:
            log.info("reconciled %d staged %s records already in the lake", dropped, kind)
            self._writer.flushed(dropped)
        return dropped

    def flush_kind(self, kind: Kind) -> int:
        """Append the oldest staged batch of ``kind`` to the lake; returns records moved.

        First drops what the lake already holds: a flush killed between its lake commit and its delete
        (in this process before a restart, or in another: an HTTP worker answering ``ingest flush``)
        left its batch staged, and appending it again would store it twice.
        """
        with self._writer_lock():  # read the batch under the lock: another process may have moved it
            settled = self._settle(kind)
            last_seq, table = self._store.batch(kind, min(self._flush_records, COMMIT_RECORDS))
            if table is None:
                return settled
            self._lake().append(kind, table, marker=last_seq)
            dropped = self._store.delete_through(kind, last_seq)
        self._writer.flushed(dropped)
        return settled + dropped

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
        if self._store.backlog() >= self._flush_records:  # the store's count: HTTP workers stage, not this process
            return True
        for kind in KINDS:
            oldest = self._store.oldest_staged_at(kind)
            if oldest is not None and now - oldest >= self._flush_interval:
                return True
        return False

    def expire_dedupe(self) -> int:
        """Forget dedupe keys older than the window."""
        return self._store.expire_dedupe(self._clock.now() - self._dedupe_window)

    def expire_quarantine(self) -> int:
        """Delete quarantined records older than ``ingest.quarantine_retention`` (they hold personal data),
        audited as ``quarantine.expire`` with their count."""
        before = self._clock.now() - self._quarantine_retention

        def record(tx: Transaction, deleted: int) -> None:
            self._audit.append(
                actor=SYSTEM_ACTOR, role=SYSTEM_ACTOR, action="quarantine.expire", object="quarantine",
                reason="retention", details={"deleted": deleted, "received_before": before.isoformat()}, tx=tx,
            )  # fmt: skip

        deleted = self._store.expire_quarantine(before, record)
        if deleted:
            log.info("deleted %d quarantined records received before %s", deleted, before.isoformat())
        return deleted

    def _maintain(self, maintenance: LakeSettings) -> MaintenanceReport:
        with self._writer_lock():
            return self._lake().maintain(
                self._clock.now(), maintenance.snapshot_retention, MIN_SNAPSHOTS, maintenance.small_file_bytes
            )

    async def maintain_lake(self, maintenance: LakeSettings) -> MaintenanceReport:
        """Compact small files and expire old snapshots, under the flush lock.

        Never concurrently with an append: a compaction racing an append could carry an older staging
        marker forward, and every flush trusts the newest marker.
        """
        async with self._lock:
            report = await asyncio.to_thread(self._maintain, maintenance)
        log.info(
            "lake maintenance: %d snapshots expired, data files %d -> %d",
            report.snapshots_expired,
            report.data_files_before,
            report.data_files_after,
        )
        return report

    async def run(
        self,
        maintenance: LakeSettings | None = None,
        poll_seconds: float = 1.0,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Background loop of ``serve``: flush when due, forget old dedupe keys, maintain the lake.

        Never raises: errors are logged and retried; staged records stay staged until they are in the lake.
        While the lake (or the store) keeps failing, retries back off from 2 s to ``MAX_RETRY_SECONDS``,
        and only the first failure logs its traceback: an outage of hours must not fill the disk with
        logs (the disk staging is on). ``telgate ingest status`` shows how long records have waited.
        """
        last_expiry: datetime | None = None
        last_maintenance = self._clock.now()  # not at start-up: a restart loop must not compact every time
        failures = 0
        while True:
            try:
                now = self._clock.now()
                if last_expiry is None or now - last_expiry >= timedelta(hours=1):  # first: needs no lake
                    await asyncio.to_thread(self.expire_dedupe)
                    await asyncio.to_thread(self.expire_quarantine)
                    last_expiry = now
                if await asyncio.to_thread(self.due, now):
                    await self.flush_now()
                if maintenance is not None and now - last_maintenance >= maintenance.maintenance_interval:
                    last_maintenance = now
                    await self.maintain_lake(maintenance)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(MAX_RETRY_SECONDS, poll_seconds * 2**failures)
                if failures == 1:
                    log.exception("flush failed; staged records are kept and retried")
                else:
                    log.warning("flush failed again (%d in a row; next try in %.0f s): %s: %s",
                                failures, delay, type(exc).__name__, exc)  # fmt: skip
                await sleep(delay)
                continue
            if failures:
                log.info("flushing works again after %d failed attempts", failures)
                failures = 0
            await sleep(poll_seconds)

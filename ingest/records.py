"""Normalised, pseudonymised records: the one shape every PBX format is parsed into.

Data flow::

    PBX body --parser--> RawCdr / RawAcdEvent (identifiable, in memory only)
             --pseudonymise--> CdrRecord / AcdEventRecord (what staging and the lake hold)

A ``*Record`` never carries a raw phone number or caller name: party fields hold either an internal
extension exactly as the PBX wrote it, or a subject token (``sub_...``) from the metadata store.
``CDR_SCHEMA`` and ``ACD_EVENT_SCHEMA`` are the Arrow schemas of the Iceberg tables ``cdr`` and
``acd_event``; the field order of the dataclasses matches them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa


class Disposition(enum.StrEnum):
    """Call outcome, Asterisk's vocabulary (FreeSWITCH and CUCM causes map onto it)."""

    ANSWERED = "ANSWERED"
    NO_ANSWER = "NO_ANSWER"
    BUSY = "BUSY"
    FAILED = "FAILED"
    CONGESTION = "CONGESTION"
    CANCEL = "CANCEL"
    UNKNOWN = "UNKNOWN"


class Direction(enum.StrEnum):
    """Direction of a call leg as seen from the PBX."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"
    UNKNOWN = "unknown"


class PartyKind(enum.StrEnum):
    """What a party field holds: an internal extension, a subject token, or nothing usable."""

    EXTENSION = "extension"
    SUBJECT = "subject"
    WITHHELD = "withheld"
    NONE = "none"
    REDACTED = "redacted"  # number-like value that could not be normalised: dropped, never stored raw


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a call before pseudonymisation: an E.164 number, an extension, or nothing."""

    kind: PartyKind
    value: str | None  # E.164 for SUBJECT before pseudonymisation, extension text for EXTENSION


@dataclass(frozen=True, slots=True)
class RawCdr:
    """A parsed, normalised CDR that still holds identifiable numbers; never leaves memory."""

    source_format: str
    dedupe_key: str
    call_id: str
    linked_id: str | None
    sequence: int | None
    start_at: datetime
    answer_at: datetime | None
    end_at: datetime | None
    duration_s: int
    billsec_s: int
    disposition: Disposition
    hangup_cause: int | None
    direction: Direction
    caller: Party
    callee: Party
    account_code: str | None
    context: str | None
    src_channel: str | None  # free text that may embed numbers: scrubbed by ingest.policy
    dst_channel: str | None
    last_app: str | None
    last_data: str | None
    extra: dict[str, str] = field(default_factory=dict)  # other fields, free text, scrubbed by policy


@dataclass(frozen=True, slots=True)
class RawAcdEvent:
    """A parsed queue_log event that may still hold an identifiable caller number."""

    source_format: str
    dedupe_key: str
    event_at: datetime
    call_id: str
    queue: str
    agent: str | None
    event: str  # upper-case event name; unknown events are kept as they are
    caller: Party  # ENTERQUEUE's caller number, NONE otherwise
    position: int | None
    original_position: int | None
    wait_s: int | None
    hold_s: int | None
    talk_s: int | None
    ring_ms: int | None
    agent_call_id: str | None  # CONNECT: the agent channel's uniqueid (links the recording)
    data: tuple[str, ...]  # every data field as sent, scrubbed by policy before storage


@dataclass(frozen=True, slots=True)
class CdrRecord:
    """One row of the lake's ``cdr`` table: pseudonymised, no raw number or name."""

    tenant: str
    pbx: str
    source_format: str
    dedupe_key: str
    call_id: str
    linked_id: str | None
    sequence: int | None
    start_at: datetime
    answer_at: datetime | None
    end_at: datetime | None
    duration_s: int
    billsec_s: int
    disposition: str
    hangup_cause: int | None
    direction: str
    caller: str | None  # extension or subject token
    caller_kind: str
    callee: str | None
    callee_kind: str
    account_code: str | None
    context: str | None
    src_channel: str | None
    dst_channel: str | None
    last_app: str | None
    last_data: str | None
    extra_json: str | None
    ingested_at: datetime


@dataclass(frozen=True, slots=True)
class AcdEventRecord:
    """One row of the lake's ``acd_event`` table: pseudonymised."""

    tenant: str
    pbx: str
    source_format: str
    dedupe_key: str
    event_at: datetime
    call_id: str
    queue: str
    agent: str | None
    event: str
    caller: str | None
    caller_kind: str
    position: int | None
    original_position: int | None
    wait_s: int | None
    hold_s: int | None
    talk_s: int | None
    ring_ms: int | None
    agent_call_id: str | None
    data: list[str]
    ingested_at: datetime


_TS = pa.timestamp("us", tz="UTC")

CDR_SCHEMA = pa.schema(
    [
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("pbx", pa.string(), nullable=False),
        pa.field("source_format", pa.string(), nullable=False),
        pa.field("dedupe_key", pa.string(), nullable=False),
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("linked_id", pa.string()),
        pa.field("sequence", pa.int64()),
        pa.field("start_at", _TS, nullable=False),
        pa.field("answer_at", _TS),
        pa.field("end_at", _TS),
        pa.field("duration_s", pa.int64(), nullable=False),
        pa.field("billsec_s", pa.int64(), nullable=False),
        pa.field("disposition", pa.string(), nullable=False),
        pa.field("hangup_cause", pa.int32()),
        pa.field("direction", pa.string(), nullable=False),
        pa.field("caller", pa.string()),
        pa.field("caller_kind", pa.string(), nullable=False),
        pa.field("callee", pa.string()),
        pa.field("callee_kind", pa.string(), nullable=False),
        pa.field("account_code", pa.string()),
        pa.field("context", pa.string()),
        pa.field("src_channel", pa.string()),
        pa.field("dst_channel", pa.string()),
        pa.field("last_app", pa.string()),
        pa.field("last_data", pa.string()),
        pa.field("extra_json", pa.string()),
        pa.field("ingested_at", _TS, nullable=False),
    ]
)

ACD_EVENT_SCHEMA = pa.schema(
    [
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("pbx", pa.string(), nullable=False),
        pa.field("source_format", pa.string(), nullable=False),
        pa.field("dedupe_key", pa.string(), nullable=False),
        pa.field("event_at", _TS, nullable=False),
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("queue", pa.string(), nullable=False),
        pa.field("agent", pa.string()),
        pa.field("event", pa.string(), nullable=False),
        pa.field("caller", pa.string()),
        pa.field("caller_kind", pa.string(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("original_position", pa.int32()),
        pa.field("wait_s", pa.int32()),
        pa.field("hold_s", pa.int32()),
        pa.field("talk_s", pa.int32()),
        pa.field("ring_ms", pa.int64()),
        pa.field("agent_call_id", pa.string()),
        pa.field("data", pa.list_(pa.string()), nullable=False),
        pa.field("ingested_at", _TS, nullable=False),
    ]
)


def records_to_table(records: list[CdrRecord] | list[AcdEventRecord], schema: pa.Schema) -> pa.Table:
    """Turn a list of records into an Arrow table of ``schema`` (column order = dataclass order)."""
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for record in records:
        for f in dataclasses.fields(record):
            columns[f.name].append(getattr(record, f.name))
    return pa.Table.from_pydict(columns, schema=schema)

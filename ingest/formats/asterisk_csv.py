"""Asterisk ``cdr_csv`` Master.csv lines -> ``RawCdr``.

No header line; columns in Asterisk's fixed order, the optional tail depending on ``cdr.conf``.
Column profile: ``PbxContext.csv_columns`` when set (any known or custom names; unknown names land in
``extra``), otherwise chosen by the line's field count:

    16  base
    17  base + uniqueid                                   (loguniqueid)
    18  base + uniqueid, userfield                        (loguniqueid, loguserfield)
    19  base + peeraccount, linkedid, sequence            (newcdrcolumns)
    20  base + uniqueid, peeraccount, linkedid, sequence  (loguniqueid, newcdrcolumns) -- the more common
        of the two 20-field layouts; a PBX logging userfield without uniqueid must set csv_columns
    21  base + uniqueid, userfield, peeraccount, linkedid, sequence

Times are local to the PBX (``ctx.timezone``; set it to UTC for ``usegmtime=yes``); a bare epoch is
accepted too (cdr_custom). Each line is decoded and parsed on its own: a bad line is a ``Reject``
with its 1-based line number, blank lines are skipped, CRLF is fine. A quoted field with an embedded
newline (Asterisk does not escape it) splits the record and both halves are rejected.

Dedupe key: ``dedupe_key(pbx, uniqueid, sequence, start as written)`` when the line has a uniqueid and
a sequence (together they identify one CDR); otherwise ``dedupe_key(pbx, raw line bytes)``. A uniqueid
alone is not enough: forked CDRs of one channel share it (and often the start second), so keying on
it would silently drop real records. Either way, the same record also written to ``<accountcode>.csv``
and ingested twice gets the same key.
"""

from __future__ import annotations

import csv
from datetime import datetime

from ingest.context import ParseResult, PbxContext
from ingest.errors import RecordRejected, Reject
from ingest.normalise import (
    clid_number,
    decode_line,
    dedupe_key,
    disposition_from_text,
    infer_direction,
    parse_count,
    parse_party,
    parse_pbx_time,
    require_media_type,
    split_lines,
)
from ingest.records import Disposition, RawCdr

FORMAT = "asterisk-csv"

BASE_COLUMNS: tuple[str, ...] = (
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
)
_NEW_COLUMNS = ("peeraccount", "linkedid", "sequence")

PROFILES_BY_FIELD_COUNT: dict[int, tuple[str, ...]] = {
    16: BASE_COLUMNS,
    17: (*BASE_COLUMNS, "uniqueid"),
    18: (*BASE_COLUMNS, "uniqueid", "userfield"),
    19: (*BASE_COLUMNS, *_NEW_COLUMNS),
    20: (*BASE_COLUMNS, "uniqueid", *_NEW_COLUMNS),
    21: (*BASE_COLUMNS, "uniqueid", "userfield", *_NEW_COLUMNS),
}

# Columns that have a place of their own in RawCdr; every other non-empty column goes to ``extra``.
_MAPPED = frozenset(
    {
        "accountcode",
        "src",
        "dst",
        "dcontext",
        "clid",
        "channel",
        "dstchannel",
        "lastapp",
        "lastdata",
        "start",
        "answer",
        "end",
        "duration",
        "billsec",
        "disposition",
        "uniqueid",
        "linkedid",
        "sequence",
    }
)

ACCEPTED_MEDIA_TYPES = frozenset(
    {"", "text/csv", "text/plain", "application/csv", "text/x-csv", "application/octet-stream"}
)


def parse_asterisk_csv(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """Parse a Master.csv body (one CDR per line) into RawCdr records and per-line rejects."""
    require_media_type(content_type, ACCEPTED_MEDIA_TYPES, FORMAT)
    result: ParseResult[RawCdr] = ParseResult()
    for line_number, raw in split_lines(body):
        try:
            result.records.append(parse_line(raw, ctx))
        except RecordRejected as exc:
            result.rejects.append(Reject(line_number, exc.reason, raw))
    return result


def _columns_for(field_count: int, ctx: PbxContext) -> tuple[str, ...]:
    if ctx.csv_columns is not None:
        if field_count != len(ctx.csv_columns):
            raise RecordRejected(f"expected {len(ctx.csv_columns)} fields (PBX column profile), got {field_count}")
        return ctx.csv_columns
    columns = PROFILES_BY_FIELD_COUNT.get(field_count)
    if columns is None:
        raise RecordRejected(f"expected 16 to 21 fields, got {field_count}")
    return columns


def _seconds_between(first: datetime | None, last: datetime | None) -> int:
    """Whole seconds from ``first`` to ``last`` (0 when either is unknown or the order is reversed)."""
    if first is None or last is None or last < first:
        return 0
    return int((last - first).total_seconds())


def _split_fields(text: str) -> list[str]:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        raise RecordRejected("malformed CSV quoting") from None
    if len(rows) != 1:
        raise RecordRejected("malformed CSV line")
    return rows[0]


def parse_line(raw: bytes, ctx: PbxContext) -> RawCdr:
    """Parse one Master.csv line (without its line break) or raise RecordRejected."""
    text = decode_line(raw)
    values = _split_fields(text)
    columns = _columns_for(len(values), ctx)
    row = dict(zip(columns, values, strict=True))

    def text_of(name: str) -> str | None:
        value = row.get(name, "").strip()
        return value or None

    def time_of(name: str) -> datetime | None:
        try:
            return parse_pbx_time(row.get(name, ""), ctx.timezone)
        except ValueError:
            raise RecordRejected(f"{name}: not a valid time") from None

    start_at = time_of("start")
    if start_at is None:
        raise RecordRejected("start: missing")
    answer_at = time_of("answer")
    end_at = time_of("end")

    if "duration" in row:
        duration_s = parse_count(row["duration"], "duration")
    else:
        duration_s = _seconds_between(start_at, end_at)
    if "billsec" in row:
        billsec_s = parse_count(row["billsec"], "billsec")
    else:
        billsec_s = _seconds_between(answer_at, end_at)

    sequence_text = text_of("sequence")
    sequence = parse_count(sequence_text, "sequence") if sequence_text is not None else None
    uniqueid = text_of("uniqueid")

    if uniqueid is not None and sequence_text is not None:
        key = dedupe_key(ctx.name, uniqueid, sequence_text, row["start"].strip())
    else:
        key = dedupe_key(ctx.name, raw)

    if "disposition" in row:
        disposition = disposition_from_text(row["disposition"])
    else:
        disposition = Disposition.ANSWERED if answer_at is not None else Disposition.UNKNOWN

    caller = parse_party(text_of("src") or clid_number(text_of("clid")), ctx)
    callee = parse_party(text_of("dst"), ctx)
    extra = {name: value.strip() for name, value in row.items() if name not in _MAPPED and value.strip()}

    return RawCdr(
        source_format=FORMAT,
        dedupe_key=key,
        call_id=uniqueid or key,
        linked_id=text_of("linkedid"),
        sequence=sequence,
        start_at=start_at,
        answer_at=answer_at,
        end_at=end_at,
        duration_s=duration_s,
        billsec_s=billsec_s,
        disposition=disposition,
        hangup_cause=None,
        direction=infer_direction(caller, callee),
        caller=caller,
        callee=callee,
        account_code=text_of("accountcode"),
        context=text_of("dcontext"),
        src_channel=text_of("channel"),
        dst_channel=text_of("dstchannel"),
        last_app=text_of("lastapp"),
        last_data=text_of("lastdata"),
        extra=extra,
    )

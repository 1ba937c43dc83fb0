"""Cisco CUCM CDR flat files -> ``RawCdr``.

Line 1 holds the quoted field names, line 2 their types (``INTEGER``, ``VARCHAR(50)``,
``UNIQUEIDENTIFIER``...; skipped when present), then one record per line. Columns are looked up BY
NAME: their order changes between releases and there are 130+ of them; unknown columns are ignored.

Mapping: ``pkid`` -> ``call_id``; ``globalCallID_callManagerId:globalCallID_callId`` -> ``linked_id``
(groups the legs of one call); ``dateTimeOrigination`` / ``dateTimeConnect`` (0 = never connected) /
``dateTimeDisconnect`` are UTC epoch seconds; ``duration`` (connected seconds) -> ``billsec_s``,
disconnect - origination -> ``duration_s``; ``callingPartyNumber`` -> caller;
``finalCalledPartyNumber`` (else ``originalCalledPartyNumber``) -> callee; ``destCause_value`` /
``origCause_value`` (Q.850) -> ``hangup_cause`` and disposition; ``clientMatterCode`` ->
``account_code``; ``origDeviceName`` / ``destDeviceName`` -> channels.

CMR rows (``cdrRecordType`` 2) and start records (0) are rejected with that reason, so a CMR file
posted to the CDR endpoint yields rejects, not garbage.

Dedupe key: ``dedupe_key(pbx, pkid)``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from datetime import datetime

from ingest.context import ParseResult, PbxContext
from ingest.errors import RecordRejected, Reject, UnparseableBodyError
from ingest.normalise import (
    decode_line,
    dedupe_key,
    disposition_from_cause,
    epoch_to_utc,
    infer_direction,
    parse_count,
    parse_party,
    require_media_type,
    split_lines,
)
from ingest.records import RawCdr

FORMAT = "cucm"

ACCEPTED_MEDIA_TYPES = frozenset(
    {"", "text/csv", "text/plain", "application/csv", "text/x-csv", "application/octet-stream"}
)
REQUIRED_COLUMNS = ("pkid", "dateTimeOrigination")
_IDENTIFYING_COLUMNS = frozenset({"pkid", "cdrRecordType", "globalCallID_callId", "dateTimeOrigination"})
_TYPE_NAME = re.compile(r"[A-Z][A-Z_ ]*(?:\(\d+\))?")
_EXTRA_COLUMNS = (
    "originalCalledPartyNumber",
    "lastRedirectDn",
    "huntPilotDN",
    "origCause_value",
    "destCause_value",
    "origCallTerminationOnBehalfOf",
    "destCallTerminationOnBehalfOf",
    "origLegCallIdentifier",
    "destLegCallIdentifier",
)
_RECORD_TYPES = {"0": "start record (cdrRecordType 0)", "2": "CMR record (cdrRecordType 2)"}


def _fields(text: str) -> list[str]:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        raise RecordRejected("malformed CSV quoting") from None
    if len(rows) != 1:
        raise RecordRejected("malformed CSV line")
    return rows[0]


def parse_cucm(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """Parse a CUCM CDR flat file (names line, types line, records) by column name."""
    require_media_type(content_type, ACCEPTED_MEDIA_TYPES, FORMAT)
    lines = split_lines(body)
    header = next(lines, None)
    if header is None:
        raise UnparseableBodyError("empty CUCM file")
    try:
        names = [name.strip() for name in _fields(decode_line(header[1]))]
    except RecordRejected:
        raise UnparseableBodyError("CUCM header line is not a CSV line of field names") from None
    if not _IDENTIFYING_COLUMNS.intersection(names):
        raise UnparseableBodyError("first line is not a CUCM CDR header")

    result: ParseResult[RawCdr] = ParseResult()
    first_data = True
    for line_number, raw in lines:
        try:
            values = _fields(decode_line(raw))
            if first_data and all(_TYPE_NAME.fullmatch(v.strip()) for v in values):
                first_data = False
                continue  # the field-types line
            first_data = False
            if len(values) != len(names):
                raise RecordRejected(f"expected {len(names)} fields as in the header, got {len(values)}")
            row = dict(zip(names, values, strict=True))
            result.records.append(record_from_row(row, ctx))
        except RecordRejected as exc:
            result.rejects.append(Reject(line_number, exc.reason, raw))
    return result


def _cause(row: Mapping[str, str], name: str) -> int | None:
    value = row.get(name, "").strip()
    if not value:
        return None
    return parse_count(value, name) or None


def record_from_row(row: Mapping[str, str], ctx: PbxContext) -> RawCdr:
    """Build one RawCdr from a CUCM row keyed by field name, or raise RecordRejected."""
    record_type = row.get("cdrRecordType", "1").strip()
    if record_type in _RECORD_TYPES:
        raise RecordRejected(f"{_RECORD_TYPES[record_type]}, not an end-of-call CDR")
    for name in REQUIRED_COLUMNS:
        if name not in row:
            raise RecordRejected(f"{name}: column missing from the header")
    pkid = row["pkid"].strip()
    if not pkid:
        raise RecordRejected("pkid: missing")

    def when(name: str) -> datetime | None:
        try:
            return epoch_to_utc(row.get(name, "0").strip() or "0")
        except ValueError:
            raise RecordRejected(f"{name}: not epoch seconds") from None

    start_at = when("dateTimeOrigination")
    connect_at = when("dateTimeConnect")
    end_at = when("dateTimeDisconnect")
    if start_at is None:
        raise RecordRejected("dateTimeOrigination: missing")
    billsec_s = parse_count(row.get("duration", "0") or "0", "duration")
    duration_s = int((end_at - start_at).total_seconds()) if end_at is not None and end_at >= start_at else 0

    dest_cause = _cause(row, "destCause_value")
    orig_cause = _cause(row, "origCause_value")
    # The far end's cause says why the call did not complete (busy, no answer); the originating
    # cause is normal clearing when the caller simply hung up.
    cause = dest_cause if dest_cause not in (None, 16) else orig_cause or dest_cause
    answered = connect_at is not None

    caller = parse_party(row.get("callingPartyNumber"), ctx)
    callee = parse_party((row.get("finalCalledPartyNumber") or "").strip() or row.get("originalCalledPartyNumber"), ctx)
    manager = row.get("globalCallID_callManagerId", "").strip()
    call = row.get("globalCallID_callId", "").strip()
    linked_id = f"{manager}:{call}" if call else None

    def text(name: str) -> str | None:
        return row.get(name, "").strip() or None

    return RawCdr(
        source_format=FORMAT,
        dedupe_key=dedupe_key(ctx.name, pkid),
        call_id=pkid,
        linked_id=linked_id,
        sequence=None,
        start_at=start_at,
        answer_at=connect_at,
        end_at=end_at,
        duration_s=duration_s,
        billsec_s=billsec_s,
        disposition=disposition_from_cause(cause, answered=answered),
        hangup_cause=cause,
        direction=infer_direction(caller, callee),
        caller=caller,
        callee=callee,
        account_code=text("clientMatterCode"),
        context=None,
        src_channel=text("origDeviceName"),
        dst_channel=text("destDeviceName"),
        last_app=None,
        last_data=None,
        extra={name: value for name in _EXTRA_COLUMNS if (value := row.get(name, "").strip())},
    )

"""telgate's own JSON Lines CDR schema -> ``RawCdr`` (documented in docs/ingest-json-schema.md).

One JSON object per line; blank lines skipped; each bad line is a ``Reject`` with its line number.
Unknown fields are rejected (a typo must not silently drop data). Times are RFC 3339 with an offset;
numbers E.164 or national in the PBX's country, or an extension.

Dedupe key: ``dedupe_key(pbx, id)``; the sender's ``id`` must be unique per PBX and stable across
retries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ingest.context import ParseResult, PbxContext
from ingest.errors import RecordRejected, Reject
from ingest.normalise import (
    INT32_MAX,
    decode_line,
    dedupe_key,
    direction_from_text,
    disposition_from_cause,
    disposition_from_text,
    infer_direction,
    parse_party,
    require_media_type,
    split_lines,
    to_e164,
)
from ingest.records import Direction, Disposition, RawCdr

FORMAT = "json"

ACCEPTED_MEDIA_TYPES = frozenset(
    {
        "",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-lines",
        "application/json",
        "text/plain",
    }
)

_STRING_FIELDS = (
    "call_id",
    "linked_id",
    "caller",
    "callee",
    "account_code",
    "context",
    "src_channel",
    "dst_channel",
    "last_app",
    "last_data",
)
_TIME_FIELDS = ("start", "answer", "end")
_COUNT_FIELDS = ("sequence", "duration", "billsec", "hangup_cause")
KNOWN_FIELDS = frozenset({"id", "disposition", "direction", "extra", *_STRING_FIELDS, *_TIME_FIELDS, *_COUNT_FIELDS})
MAX_ID_LENGTH = 256
MAX_COUNT = 2**53
_SAFE_NAME = re.compile(r"[a-z_]{1,40}")
_DISPOSITIONS = frozenset(d.value for d in Disposition) | {"NO ANSWER"}
_DIRECTIONS = frozenset(d.value for d in Direction)


def parse_jsonl(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """Parse a JSON Lines body of telgate CDR objects into RawCdr records and per-line rejects."""
    require_media_type(content_type, ACCEPTED_MEDIA_TYPES, FORMAT)
    result: ParseResult[RawCdr] = ParseResult()
    for line_number, raw in split_lines(body):
        try:
            result.records.append(parse_line(raw, ctx))
        except RecordRejected as exc:
            result.rejects.append(Reject(line_number, exc.reason, raw))
    return result


def _rfc3339(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordRejected(f"{name}: must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RecordRejected(f"{name}: not an RFC 3339 time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise RecordRejected(f"{name}: needs a UTC offset (e.g. Z or +01:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise RecordRejected(f"{name}: out of range") from None


def _count(value: Any, name: str, maximum: int = MAX_COUNT) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise RecordRejected(f"{name}: must be an integer from 0 to {maximum}")
    return value


def _string(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordRejected(f"{name}: must be a string")
    return value.strip() or None


_NUMBER_LIKE = re.compile(r"\+?[\d\s\-.()]{7,}")


def _opaque_id(value: str | None, name: str, ctx: PbxContext) -> str | None:
    """Ids are stored as they are, so one that reads as a phone number is refused, not stored."""
    if value is not None and _NUMBER_LIKE.fullmatch(value):
        compact = re.sub(r"[\s\-.()]", "", value)
        if to_e164(compact, ctx) is not None:
            raise RecordRejected(f"{name}: looks like a phone number; send an opaque id")
    return value


def _extra(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordRejected("extra: must be an object")
    extra: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            extra[key] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            extra[key] = str(item)
        elif item is not None:
            raise RecordRejected("extra: values must be strings, numbers or booleans")
    return extra


def parse_line(raw: bytes, ctx: PbxContext) -> RawCdr:
    """Parse one JSON Lines record or raise RecordRejected."""
    try:
        obj = json.loads(decode_line(raw))
    except (ValueError, RecursionError):
        raise RecordRejected("line is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RecordRejected("line is not a JSON object")
    return record_from_object(obj, ctx)


def record_from_object(obj: Mapping[str, Any], ctx: PbxContext) -> RawCdr:
    """Validate one decoded JSON object against the schema and build its RawCdr."""
    unknown = sorted(set(obj) - KNOWN_FIELDS)
    if unknown:
        shown = unknown[0] if _SAFE_NAME.fullmatch(unknown[0]) else "(unprintable name)"
        raise RecordRejected(f"unknown field {shown}")
    record_id = obj.get("id")
    if not isinstance(record_id, str) or not record_id.strip() or len(record_id) > MAX_ID_LENGTH:
        raise RecordRejected(f"id: required, a non-empty string of at most {MAX_ID_LENGTH} characters")
    record_id = record_id.strip()
    start_at = _rfc3339(obj.get("start"), "start")
    if start_at is None:
        raise RecordRejected("start: required")
    answer_at = _rfc3339(obj.get("answer"), "answer")
    end_at = _rfc3339(obj.get("end"), "end")
    if end_at is not None and end_at < start_at:
        raise RecordRejected("end: before start")
    if answer_at is not None and (answer_at < start_at or (end_at is not None and answer_at > end_at)):
        raise RecordRejected("answer: outside start..end")

    strings = {name: _string(obj.get(name), name) for name in _STRING_FIELDS}
    duration = _count(obj.get("duration"), "duration")
    billsec = _count(obj.get("billsec"), "billsec")
    if duration is None:
        duration = int((end_at - start_at).total_seconds()) if end_at else 0
    if billsec is None:
        billsec = int((end_at - answer_at).total_seconds()) if end_at and answer_at else 0
    cause = _count(obj.get("hangup_cause"), "hangup_cause", INT32_MAX)

    disposition_text = _string(obj.get("disposition"), "disposition")
    if disposition_text is None:
        disposition = disposition_from_cause(cause, answered=answer_at is not None)
    elif disposition_text.upper() in _DISPOSITIONS:
        disposition = disposition_from_text(disposition_text)
    else:
        raise RecordRejected("disposition: not one of " + ", ".join(sorted(_DISPOSITIONS)))

    caller = parse_party(strings["caller"], ctx)
    callee = parse_party(strings["callee"], ctx)
    direction_text = _string(obj.get("direction"), "direction")
    if direction_text is None:
        direction = infer_direction(caller, callee)
    elif direction_text.lower() in _DIRECTIONS:
        direction = direction_from_text(direction_text) or Direction.UNKNOWN
    else:
        raise RecordRejected("direction: not one of " + ", ".join(sorted(_DIRECTIONS)))

    call_id = strings["call_id"] or record_id
    _opaque_id(call_id, "call_id" if strings["call_id"] else "id", ctx)
    return RawCdr(
        source_format=FORMAT,
        dedupe_key=dedupe_key(ctx.name, record_id),
        call_id=call_id,
        linked_id=_opaque_id(strings["linked_id"], "linked_id", ctx),
        sequence=_count(obj.get("sequence"), "sequence"),
        start_at=start_at,
        answer_at=answer_at,
        end_at=end_at,
        duration_s=duration,
        billsec_s=billsec,
        disposition=disposition,
        hangup_cause=cause,
        direction=direction,
        caller=caller,
        callee=callee,
        account_code=strings["account_code"],
        context=strings["context"],
        src_channel=strings["src_channel"],
        dst_channel=strings["dst_channel"],
        last_app=strings["last_app"],
        last_data=strings["last_data"],
        extra=_extra(obj.get("extra")),
    )

"""telgate's own JSON Lines schema, and its documentation."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.errors import UnsupportedMediaTypeError
from ingest.formats.jsonl import KNOWN_FIELDS, parse_jsonl
from ingest.normalise import dedupe_key
from ingest.records import Direction, Disposition, Party, PartyKind
from tests.ingest import make_ctx, vector

CTX = make_ctx()
DOC = Path(__file__).resolve().parents[2] / "docs" / "ingest-json-schema.md"
NDJSON = "application/x-ndjson"


def line(**fields: Any) -> bytes:
    base: dict[str, Any] = {"id": "r-1", "start": "2025-03-04T14:00:00Z"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_vector_file() -> None:
    result = parse_jsonl(vector("jsonl/cdrs.jsonl"), NDJSON, CTX)
    first, second, third = result.records

    assert first.source_format == "json"
    assert first.dedupe_key == dedupe_key(CTX.name, "c-1001")
    assert first.call_id == "crm-1001"
    assert first.start_at == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert (first.duration_s, first.billsec_s) == (151, 143)
    assert first.disposition is Disposition.ANSWERED
    assert first.hangup_cause == 16
    assert first.direction is Direction.INBOUND
    assert first.caller == Party(PartyKind.SUBJECT, "+442079460100")
    assert first.callee == Party(PartyKind.EXTENSION, "601")
    assert first.account_code == "acme"
    assert first.src_channel == "sip:+442079460100@trunk.example.net"
    assert first.extra == {"campaign": "spring", "note": "callback 07700900888", "caller_id_name": "Jane Roe"}

    assert second.call_id == "c-1002"  # defaults to id
    assert second.start_at == datetime(2025, 7, 1, 9, 0, tzinfo=UTC)  # +01:00 offset applied
    assert second.duration_s == 20
    assert second.billsec_s == 0
    assert second.disposition is Disposition.BUSY  # from cause 17
    assert second.direction is Direction.OUTBOUND
    assert second.callee == Party(PartyKind.SUBJECT, "+441632960123")

    assert third.caller == Party(PartyKind.WITHHELD, None)
    assert third.direction is Direction.INBOUND
    assert third.linked_id == "grp-9"

    assert [(r.line, r.reason) for r in result.rejects] == [
        (3, "start: needs a UTC offset (e.g. Z or +01:00)"),
        (5, "id: required, a non-empty string of at most 256 characters"),
        (6, "unknown field colour"),
        (7, "line is not valid JSON"),
        (9, "duration: must be an integer from 0 to 9007199254740992"),
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"start": ...}, "start: required"),
        ({"start": 1741097109}, "start: must be an RFC 3339 string"),
        ({"start": "yesterday"}, "start: not an RFC 3339 time"),
        ({"end": "2025-03-04T13:00:00Z"}, "end: before start"),
        ({"answer": "2025-03-04T15:00:00Z", "end": "2025-03-04T14:30:00Z"}, "answer: outside start..end"),
        ({"billsec": True}, "billsec: must be an integer from 0 to 9007199254740992"),
        ({"hangup_cause": 2**40}, "hangup_cause: must be an integer from 0 to 2147483647"),
        ({"disposition": "MAYBE"}, "disposition: not one of"),
        ({"direction": "sideways"}, "direction: not one of"),
        ({"caller": 447700900123}, "caller: must be a string"),
        ({"extra": ["x"]}, "extra: must be an object"),
        ({"extra": {"k": {"nested": 1}}}, "extra: values must be strings, numbers or booleans"),
        ({"id": "x" * 257}, "id: required"),
        ({"call_id": "07700 900123"}, "call_id: looks like a phone number; send an opaque id"),
        ({"id": "+442079460123"}, "id: looks like a phone number; send an opaque id"),
        ({"linked_id": "02079460123"}, "linked_id: looks like a phone number; send an opaque id"),
        ({"07700900123": "x"}, "unknown field (unprintable name)"),
    ],
)
def test_schema_violations_are_rejected(fields: dict[str, Any], reason: str) -> None:
    (reject,) = parse_jsonl(line(**fields), NDJSON, CTX).rejects
    assert reject.reason.startswith(reason)
    assert "07700" not in reject.reason
    assert "7946" not in reject.reason


def test_defaults_and_accepted_forms() -> None:
    body = line(
        answer="2025-03-04T15:00:05+01:00",
        end="2025-03-04T14:01:05Z",
        disposition="NO ANSWER",
        direction="INTERNAL",
        sequence=3,
        extra={"flag": True, "n": 2, "skip": None},
    )
    (record,) = parse_jsonl(body, "application/jsonl", CTX).records
    assert record.answer_at == datetime(2025, 3, 4, 14, 0, 5, tzinfo=UTC)
    assert record.billsec_s == 60
    assert record.disposition is Disposition.NO_ANSWER
    assert record.direction is Direction.INTERNAL
    assert record.sequence == 3
    assert record.extra == {"flag": "true", "n": "2"}
    (bare,) = parse_jsonl(line(), "", CTX).records
    assert bare.disposition is Disposition.UNKNOWN
    assert bare.duration_s == 0
    assert bare.caller == Party(PartyKind.NONE, None)


def test_media_types() -> None:
    for content_type in ("application/json", "text/plain", "application/x-ndjson; charset=utf-8"):
        assert len(parse_jsonl(line(), content_type, CTX).records) == 1
    with pytest.raises(UnsupportedMediaTypeError):
        parse_jsonl(line(), "text/csv", CTX)


def test_every_field_is_documented() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?", text, re.MULTILINE))
    names = {name for pair in documented for name in pair if name}
    assert names == set(KNOWN_FIELDS)


def test_documented_example_parses() -> None:
    text = DOC.read_text()
    example = text.split("## Example", 1)[1].split("```")[1]
    result = parse_jsonl(example.strip().encode(), NDJSON, CTX)
    assert result.rejects == []
    first, second = result.records
    assert first.disposition is Disposition.ANSWERED
    assert second.disposition is Disposition.BUSY
    assert second.direction is Direction.OUTBOUND
    assert second.duration_s == 20

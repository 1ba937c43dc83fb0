"""Asterisk Master.csv: every column profile, DST, rejects, dedupe keys."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.context import ParseResult
from ingest.errors import UnsupportedMediaTypeError
from ingest.formats.asterisk_csv import PROFILES_BY_FIELD_COUNT, parse_asterisk_csv
from ingest.normalise import dedupe_key, split_lines
from ingest.records import Direction, Disposition, Party, PartyKind, RawCdr
from tests.ingest import make_ctx, vector

CTX = make_ctx()


def parse(body: bytes, content_type: str = "text/csv", **ctx: object) -> ParseResult[RawCdr]:
    """Parse with the default London PBX, or one with ``ctx`` overrides."""
    return parse_asterisk_csv(body, content_type, make_ctx(**ctx) if ctx else CTX)


def test_16_columns_and_dst() -> None:
    body = vector("asterisk/master_16.csv")
    result = parse(body)
    assert result.rejects == []
    inbound, outbound, internal, gap, overlap = result.records
    lines = [raw for _, raw in split_lines(body)]

    assert inbound.source_format == "asterisk-csv"
    assert inbound.dedupe_key == dedupe_key(CTX.name, lines[0])  # no uniqueid: the raw line
    assert inbound.call_id == inbound.dedupe_key
    assert inbound.linked_id is None
    assert inbound.sequence is None
    assert inbound.start_at == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert inbound.answer_at == datetime(2025, 3, 4, 14, 5, 17, tzinfo=UTC)
    assert inbound.end_at == datetime(2025, 3, 4, 14, 7, 40, tzinfo=UTC)
    assert (inbound.duration_s, inbound.billsec_s) == (151, 143)
    assert inbound.disposition is Disposition.ANSWERED
    assert inbound.direction is Direction.INBOUND
    assert inbound.caller == Party(PartyKind.SUBJECT, "+442079460100")
    assert inbound.callee == Party(PartyKind.EXTENSION, "600")
    assert inbound.account_code == "acct01"
    assert inbound.context == "from-pstn"
    assert (inbound.src_channel, inbound.dst_channel) == ("PJSIP/trunk-0000001a", "PJSIP/600-0000001b")
    assert (inbound.last_app, inbound.last_data) == ("Dial", "PJSIP/600,30,tT")
    assert inbound.extra == {"amaflags": "DOCUMENTATION"}
    assert inbound.hangup_cause is None

    # summer time: 09:00 BST is 08:00 UTC; unanswered call has no answer time
    assert outbound.start_at == datetime(2025, 7, 1, 8, 0, tzinfo=UTC)
    assert outbound.answer_at is None
    assert outbound.disposition is Disposition.BUSY
    assert outbound.direction is Direction.OUTBOUND
    assert outbound.caller == Party(PartyKind.EXTENSION, "601")
    assert outbound.callee == Party(PartyKind.SUBJECT, "+447700900123")

    assert internal.direction is Direction.INTERNAL

    # src empty: the number comes from clid; 01:30 in the spring gap is shifted forward
    assert gap.caller == Party(PartyKind.SUBJECT, "+441632960111")
    assert gap.start_at == datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
    assert gap.end_at == datetime(2025, 3, 30, 2, 0, 10, tzinfo=UTC)
    assert gap.disposition is Disposition.NO_ANSWER
    assert gap.last_data is None

    # autumn overlap: the first 01:30 (BST); anonymous caller is withheld
    assert overlap.start_at == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)
    assert overlap.caller == Party(PartyKind.WITHHELD, None)
    assert overlap.direction is Direction.INBOUND


def test_17_columns_with_crlf() -> None:
    body = vector("asterisk/master_17.csv")
    assert b"\r\n" in body
    result = parse(body)
    assert result.rejects == []
    assert [r.call_id for r in result.records] == ["1741097109.18", "1751356800.30", "1751357400.32"]
    lines = [raw for _, raw in split_lines(body)]
    # a uniqueid without a sequence does not identify one CDR (forks share it): raw-line key
    assert [r.dedupe_key for r in result.records] == [dedupe_key(CTX.name, raw) for raw in lines]
    assert not lines[0].endswith(b"\r")
    assert result.records[1].callee == Party(PartyKind.SUBJECT, "+447700900123")


def test_18_columns_keep_userfield_as_extra() -> None:
    result = parse(vector("asterisk/master_18.csv"))
    assert result.rejects == []
    first, second, third = result.records
    assert first.call_id == "1741097109.18"
    assert first.extra == {"amaflags": "DOCUMENTATION", "userfield": "callback 07700900456"}
    assert second.extra == {"amaflags": "DOCUMENTATION"}  # empty userfield is not kept
    assert third.extra["userfield"] == "vip"


def test_21_columns_with_rejects() -> None:
    body = vector("asterisk/master_21.csv")
    result = parse(body)
    first, second, third = result.records
    assert first.call_id == first.linked_id == "1741097109.18"
    assert first.sequence == 2
    assert first.dedupe_key == dedupe_key(CTX.name, "1741097109.18", "2", "2025-03-04 14:05:09")
    assert second.sequence == 5
    assert second.answer_at is None
    assert second.disposition is Disposition.NO_ANSWER
    assert second.caller == Party(PartyKind.SUBJECT, "+447700900101")
    assert second.callee == Party(PartyKind.EXTENSION, "700")
    assert third.callee == Party(PartyKind.SUBJECT, "+442079460999")
    assert third.direction is Direction.OUTBOUND
    assert third.extra == {"amaflags": "BILLING", "userfield": "cost-centre-7"}

    assert [(r.line, r.reason) for r in result.rejects] == [
        (4, "start: not a valid time"),
        (5, "expected 16 to 21 fields, got 4"),
        (6, "duration: not a non-negative integer"),
        (7, "line is not valid UTF-8"),
    ]
    lines = dict(split_lines(body))
    for reject in result.rejects:
        assert reject.raw == lines[reject.line or 0]
        assert reject.code == "ingest.record_rejected"


def test_same_record_twice_gets_the_same_key() -> None:
    body = vector("asterisk/master_21.csv")
    once = [r.dedupe_key for r in parse(body).records]
    # the same record also lands in <accountcode>.csv; a second PBX name gives other keys
    assert [r.dedupe_key for r in parse(body).records] == once
    assert [r.dedupe_key for r in parse(body, name="pbx-other").records] != once


@pytest.mark.parametrize("field_count", [19, 20])
def test_19_and_20_column_profiles(field_count: int) -> None:
    columns = PROFILES_BY_FIELD_COUNT[field_count]
    values = {
        "src": "601",
        "dst": "602",
        "start": "2025-03-04 10:00:00",
        "end": "2025-03-04 10:00:30",
        "duration": "30",
        "billsec": "0",
        "disposition": "NO ANSWER",
        "uniqueid": "1741082400.5",
        "peeraccount": "peer1",
        "linkedid": "1741082400.4",
        "sequence": "11",
    }
    line = ",".join(values.get(name, "") for name in columns).encode()
    (record,) = parse(line).records
    assert record.linked_id == "1741082400.4"
    assert record.sequence == 11
    assert record.extra == {"peeraccount": "peer1"}
    if field_count == 20:
        assert record.call_id == "1741082400.5"
        assert record.dedupe_key == dedupe_key(CTX.name, "1741082400.5", "11", "2025-03-04 10:00:00")
    else:
        assert record.dedupe_key == dedupe_key(CTX.name, line)


def test_custom_column_profile() -> None:
    columns = ("start", "src", "dst", "uniqueid", "disposition", "did", "answer", "end")
    line = b'1741082400,"07700900123","601","1741082400.7","ANSWERED","02079460000",1741082405,1741082465'
    (record,) = parse(line, csv_columns=columns).records
    assert record.start_at == datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
    assert record.duration_s == 65  # no duration column: end - start
    assert record.billsec_s == 60
    assert record.extra == {"did": "02079460000"}
    assert record.direction is Direction.INBOUND
    (reject,) = parse(b'1741082400,"601"', csv_columns=columns).rejects
    assert reject.reason == "expected 8 fields (PBX column profile), got 2"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'"a","b"', "expected 16 to 21 fields, got 2"),
        (b'"unterminated', "malformed CSV quoting"),
        (b',"601","602",,,,,,,"",,,0,0,"ANSWERED",""', "start: missing"),
        (b',"601","602",,,,,,,"2025-03-04 10:00:00",,"later",0,0,"ANSWERED",""', "end: not a valid time"),
        (b',"601","602",,,,,,,"2025-03-04 10:00:00",,,-1,0,"ANSWERED",""', "duration: not a non-negative integer"),
    ],
)
def test_bad_lines_are_rejected_without_values(line: bytes, reason: str) -> None:
    (reject,) = parse(line).rejects
    assert reject.reason == reason
    assert reject.line == 1


def test_unknown_disposition_is_kept_as_unknown() -> None:
    line = b',"601","602",,,,,,,"2025-03-04 10:00:00",,,0,0,"WEIRD",""'
    (record,) = parse(line).records
    assert record.disposition is Disposition.UNKNOWN


def test_empty_body_and_media_types() -> None:
    assert parse(b"").records == []
    assert parse(b"\n\r\n").rejects == []
    line = vector("asterisk/master_16.csv").splitlines()[0]
    for content_type in ("", "text/csv; charset=utf-8", "text/plain", "application/octet-stream"):
        assert len(parse(line, content_type).records) == 1
    with pytest.raises(UnsupportedMediaTypeError):
        parse(line, "application/json")

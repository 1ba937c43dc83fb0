"""Cisco CUCM CDR flat files: parsed by column name, whatever the release's column order."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime

import pytest

from ingest.errors import UnparseableBodyError, UnsupportedMediaTypeError
from ingest.formats.cucm import parse_cucm
from ingest.normalise import dedupe_key
from ingest.records import Direction, Disposition, Party, PartyKind
from tests.ingest import make_ctx, vector

CTX = make_ctx(dial_prefixes=("9",))
FILE_A = "cucm/cdr_StandAloneCluster_02_202503041405_1001"
FILE_B = "cucm/cdr_StandAloneCluster_01_202507010800_2001"
CMR = "cucm/cmr_StandAloneCluster_02_202503041405_1002"


def test_release_a_file() -> None:
    result = parse_cucm(vector(FILE_A), "text/csv", CTX)
    internal, busy = result.records

    assert internal.source_format == "cucm"
    assert internal.call_id == "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a01"
    assert internal.dedupe_key == dedupe_key(CTX.name, "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a01")
    assert internal.linked_id == "2:104871"
    assert internal.start_at == datetime(2025, 3, 4, 14, 5, tzinfo=UTC)
    assert internal.answer_at == datetime(2025, 3, 4, 14, 5, 4, tzinfo=UTC)
    assert internal.end_at == datetime(2025, 3, 4, 14, 6, 39, tzinfo=UTC)
    assert internal.duration_s == 99  # disconnect - origination
    assert internal.billsec_s == 95  # CUCM's duration: connected time
    assert internal.disposition is Disposition.ANSWERED
    assert internal.hangup_cause == 16
    assert internal.direction is Direction.INTERNAL
    assert internal.caller == Party(PartyKind.EXTENSION, "1001")
    assert internal.callee == Party(PartyKind.EXTENSION, "1002")
    assert (internal.src_channel, internal.dst_channel) == ("SEP00AB11CD22EF", "SEP00AB11CD3301")
    assert internal.account_code is None
    assert internal.extra["origLegCallIdentifier"] == "31455001"
    assert "callingPartyUnicodeLoginUserID" not in internal.extra  # user ids are not kept

    assert busy.answer_at is None  # dateTimeConnect 0: never connected
    assert busy.billsec_s == 0
    assert busy.disposition is Disposition.BUSY
    assert busy.hangup_cause == 17  # destCause_value
    assert busy.callee == Party(PartyKind.SUBJECT, "+447700900456")  # "9" outside-line prefix
    assert busy.direction is Direction.OUTBOUND
    assert busy.account_code == "4711"  # clientMatterCode
    assert busy.extra["originalCalledPartyNumber"] == "907700900456"

    (reject,) = result.rejects
    assert reject.line == 5
    assert reject.reason == "dateTimeOrigination: not epoch seconds"


def test_release_b_file_with_another_column_order() -> None:
    result = parse_cucm(vector(FILE_B), "", CTX)
    assert result.rejects == []
    hunted, missed = result.records
    assert hunted.call_id == "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c01"
    assert hunted.linked_id == "1:200001"
    assert hunted.caller == Party(PartyKind.SUBJECT, "+442079460777")
    assert hunted.callee == Party(PartyKind.EXTENSION, "1003")  # final, after the hunt pilot
    assert hunted.direction is Direction.INBOUND
    assert hunted.disposition is Disposition.ANSWERED
    assert (hunted.duration_s, hunted.billsec_s) == (129, 120)
    assert hunted.extra["huntPilotDN"] == "2000"

    assert missed.caller == Party(PartyKind.SUBJECT, "+441632960222")
    assert missed.answer_at is None
    assert missed.disposition is Disposition.NO_ANSWER  # caller hung up while ringing (origCause 16)
    assert missed.hangup_cause == 16


def test_column_order_does_not_matter() -> None:
    rows = list(csv.reader(io.StringIO(vector(FILE_A).decode())))
    order = list(range(len(rows[0])))
    random.Random(7).shuffle(order)
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for row in rows:
        writer.writerow([row[i] for i in order])
    shuffled = parse_cucm(out.getvalue().encode(), "text/csv", CTX)
    original = parse_cucm(vector(FILE_A), "text/csv", CTX)
    assert shuffled.records == original.records
    assert [r.reason for r in shuffled.rejects] == [r.reason for r in original.rejects]


def test_cmr_file_rows_are_rejected_with_the_reason() -> None:
    result = parse_cucm(vector(CMR), "text/csv", CTX)
    assert result.records == []
    (reject,) = result.rejects
    assert reject.reason == "CMR record (cdrRecordType 2), not an end-of-call CDR"


def test_file_without_types_line_and_odd_rows() -> None:
    body = (
        b'"pkid","dateTimeOrigination","callingPartyNumber","finalCalledPartyNumber","dateTimeConnect"\n'
        b'"p-1",1741097100,"1001","1002",0\n'
        b'"p-2",1741097100,"1001"\n'
        b'"",1741097100,"1001","1002",0\n'
        b'"p-4",0,"1001","1002",0\n'
    )
    result = parse_cucm(body, "text/csv", CTX)
    (record,) = result.records
    assert record.call_id == "p-1"
    assert record.linked_id is None
    assert record.disposition is Disposition.UNKNOWN  # unanswered, no cause at all
    assert [(r.line, r.reason) for r in result.rejects] == [
        (3, "expected 5 fields as in the header, got 3"),
        (4, "pkid: missing"),
        (5, "dateTimeOrigination: missing"),
    ]


def test_required_column_missing_from_header() -> None:
    body = b'"pkid","callingPartyNumber"\n"p-1","1001"\n'
    (reject,) = parse_cucm(body, "text/csv", CTX).rejects
    assert reject.reason == "dateTimeOrigination: column missing from the header"


@pytest.mark.parametrize(
    "body",
    [b"", b"\n\n", b'"name","address"\n"x","y"\n', b'"unterminated\n1,2\n', b"\xff\xfe\x00\x01\n"],
)
def test_not_a_cucm_file(body: bytes) -> None:
    with pytest.raises(UnparseableBodyError):
        parse_cucm(body, "text/csv", CTX)


def test_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        parse_cucm(vector(FILE_A), "application/json", CTX)

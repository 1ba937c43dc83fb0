"""Numbers, times, outcomes, directions, dedupe keys and body helpers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from ingest.context import PbxContext
from ingest.errors import (
    IngestError,
    RecordRejected,
    Reject,
    UnparseableBodyError,
    UnsupportedMediaTypeError,
)
from ingest.normalise import (
    cause_from_name,
    clid_number,
    decode_line,
    dedupe_key,
    direction_from_text,
    disposition_from_cause,
    disposition_from_text,
    epoch_to_utc,
    infer_direction,
    media_type,
    parse_local_time,
    parse_party,
    parse_pbx_time,
    require_media_type,
    split_lines,
    to_e164,
)
from ingest.records import Direction, Disposition, Party, PartyKind
from tests.ingest import LONDON, make_ctx

CTX = make_ctx()


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        (None, PartyKind.NONE, None),
        ("", PartyKind.NONE, None),
        ("   ", PartyKind.NONE, None),
        ("anonymous", PartyKind.WITHHELD, None),
        ("Restricted", PartyKind.WITHHELD, None),
        ("UNKNOWN", PartyKind.WITHHELD, None),
        ("withheld", PartyKind.WITHHELD, None),
        ("Private", PartyKind.WITHHELD, None),
        ("sip:anonymous@anonymous.invalid", PartyKind.WITHHELD, None),
        ("601", PartyKind.EXTENSION, "601"),
        ("100200", PartyKind.EXTENSION, "100200"),
        ("s", PartyKind.EXTENSION, "s"),
        ("*97", PartyKind.EXTENSION, "*97"),
        ("601#", PartyKind.EXTENSION, "601#"),
        ("sip:601@pbx.example.net", PartyKind.EXTENSION, "601"),
        ("07700900123", PartyKind.SUBJECT, "+447700900123"),
        ("+447700900123", PartyKind.SUBJECT, "+447700900123"),
        ("00447700900123", PartyKind.SUBJECT, "+447700900123"),
        ("447700900123", PartyKind.SUBJECT, "+447700900123"),
        ("020 7946 0123", PartyKind.SUBJECT, "+442079460123"),
        ("(020) 7946-0123", PartyKind.SUBJECT, "+442079460123"),
        ("+44 (0)20 7946 0123", PartyKind.SUBJECT, "+442079460123"),
        ("01632 960123", PartyKind.SUBJECT, "+441632960123"),
        ("\\+442079460123", PartyKind.SUBJECT, "+442079460123"),
        ("sip:+442079460123@trunk.example.net", PartyKind.SUBJECT, "+442079460123"),
        ("<sip:07700900123@trunk.example.net;user=phone>", PartyKind.SUBJECT, "+447700900123"),
        ("tel:+442079460123", PartyKind.SUBJECT, "+442079460123"),
        ("907700900123", PartyKind.REDACTED, None),  # outside-line prefix, but none configured
        ("1234567890123456", PartyKind.REDACTED, None),
        ("sip:jane.roe@example.com", PartyKind.REDACTED, None),
        ("Jane Roe", PartyKind.REDACTED, None),
    ],
)
def test_parse_party(text: str | None, kind: PartyKind, value: str | None) -> None:
    assert parse_party(text, CTX) == Party(kind, value)


def test_parse_party_strips_configured_dial_prefix() -> None:
    ctx = make_ctx(dial_prefixes=("9",))
    assert parse_party("907700900123", ctx) == Party(PartyKind.SUBJECT, "+447700900123")
    assert parse_party("07700900123", ctx) == Party(PartyKind.SUBJECT, "+447700900123")


def test_parse_party_extension_length_is_per_pbx() -> None:
    ctx = make_ctx(extension_max_digits=4)
    assert parse_party("6001", ctx).kind is PartyKind.EXTENSION
    # five digits: not an extension here, and too short for a number: dropped, not stored raw
    assert parse_party("60012", ctx).kind is PartyKind.REDACTED


def test_parse_party_uses_the_pbx_country() -> None:
    us = make_ctx(country="US", timezone=ZoneInfo("America/New_York"))
    assert parse_party("020 7946 0123", us).kind is PartyKind.REDACTED
    assert parse_party("+442079460123", us) == Party(PartyKind.SUBJECT, "+442079460123")


def test_to_e164_valid_versus_possible() -> None:
    assert to_e164("02079460123", CTX, require_valid=True) == "+442079460123"
    # 07700 900xxx is Ofcom's drama range: a possible UK mobile number but not an allocated one
    assert to_e164("07700900123", CTX) == "+447700900123"
    assert to_e164("07700900123", CTX, require_valid=True) is None
    assert to_e164("123", CTX) is None


@pytest.mark.parametrize(
    ("clid", "number"),
    [
        ('"Jane Roe" <02079460100>', "02079460100"),
        ("Jane Roe <+442079460100>", "+442079460100"),
        ('"Jane Roe" <>', None),
        ("Jane Roe", None),
        ("02079460100", "02079460100"),
        ("", None),
        (None, None),
    ],
)
def test_clid_number_drops_the_name(clid: str | None, number: str | None) -> None:
    assert clid_number(clid) == number


# ----------------------------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        ("2025-03-04 14:05:09", datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)),  # GMT
        ("2025-07-01 09:00:00", datetime(2025, 7, 1, 8, 0, 0, tzinfo=UTC)),  # BST
        ("2025-07-01T09:00:00.250", datetime(2025, 7, 1, 8, 0, 0, 250000, tzinfo=UTC)),
        ("2025-03-30 00:59:59", datetime(2025, 3, 30, 0, 59, 59, tzinfo=UTC)),  # just before the gap
        # spring gap 01:00-02:00 never happened: shifted forward by the gap (01:30 -> 02:30 BST)
        ("2025-03-30 01:00:00", datetime(2025, 3, 30, 1, 0, 0, tzinfo=UTC)),
        ("2025-03-30 01:30:00", datetime(2025, 3, 30, 1, 30, 0, tzinfo=UTC)),
        ("2025-03-30 02:00:00", datetime(2025, 3, 30, 1, 0, 0, tzinfo=UTC)),  # first valid BST time
        # autumn overlap 01:00-02:00 happened twice: the first occurrence (BST) is taken
        ("2025-10-26 01:30:00", datetime(2025, 10, 26, 0, 30, 0, tzinfo=UTC)),
        ("2025-10-26 02:00:00", datetime(2025, 10, 26, 2, 0, 0, tzinfo=UTC)),
    ],
)
def test_parse_local_time_in_london(local: str, utc: datetime) -> None:
    parsed = parse_local_time(local, LONDON)
    assert parsed == utc
    assert parsed.tzinfo is UTC


def test_parse_local_time_gap_in_new_york() -> None:
    new_york = ZoneInfo("America/New_York")
    # 02:30 on 2025-03-09 does not exist in New York: read with EST (-5), i.e. 03:30 EDT
    assert parse_local_time("2025-03-09 02:30:00", new_york) == datetime(2025, 3, 9, 7, 30, tzinfo=UTC)
    # 01:30 on 2025-11-02 happened twice: the first (EDT, -4)
    assert parse_local_time("2025-11-02 01:30:00", new_york) == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    ["", "2025-02-30 10:00:00", "2025-03-04", "14:05:09", "2025-03-04 24:00:00", "04/03/2025 14:05"],
)
def test_parse_local_time_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="local time"):
        parse_local_time(text, LONDON)


def test_epoch_to_utc() -> None:
    assert epoch_to_utc("1741097109") == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert epoch_to_utc(1741097109) == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert epoch_to_utc("1741097109.5") == datetime(2025, 3, 4, 14, 5, 9, 500000, tzinfo=UTC)
    assert epoch_to_utc("0") is None
    assert epoch_to_utc(" 0 ") is None
    for bad in ("abc", "-5", "", "1e9", "999999999999"):
        with pytest.raises(ValueError, match="epoch"):
            epoch_to_utc(bad)


def test_parse_pbx_time_accepts_empty_epoch_and_local() -> None:
    assert parse_pbx_time("", LONDON) is None
    assert parse_pbx_time("1741097109", LONDON) == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert parse_pbx_time("2025-07-01 09:00:00", LONDON) == datetime(2025, 7, 1, 8, tzinfo=UTC)


# -------------------------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("text", "disposition"),
    [
        ("ANSWERED", Disposition.ANSWERED),
        ("NO ANSWER", Disposition.NO_ANSWER),
        ("no_answer", Disposition.NO_ANSWER),
        ("BUSY", Disposition.BUSY),
        ("FAILED", Disposition.FAILED),
        ("CONGESTION", Disposition.CONGESTION),
        ("CANCEL", Disposition.CANCEL),
        ("UNKNOWN", Disposition.UNKNOWN),
        ("SOMETHING ELSE", Disposition.UNKNOWN),
        ("", Disposition.UNKNOWN),
        (None, Disposition.UNKNOWN),
    ],
)
def test_disposition_from_text(text: str | None, disposition: Disposition) -> None:
    assert disposition_from_text(text) is disposition


@pytest.mark.parametrize(
    ("cause", "answered", "disposition"),
    [
        (16, True, Disposition.ANSWERED),
        (17, True, Disposition.ANSWERED),  # answered, then hung up for whatever reason
        (16, False, Disposition.NO_ANSWER),
        (19, False, Disposition.NO_ANSWER),
        (18, False, Disposition.NO_ANSWER),
        (17, False, Disposition.BUSY),
        (21, False, Disposition.BUSY),
        (34, False, Disposition.CONGESTION),
        (42, False, Disposition.CONGESTION),
        (487, False, Disposition.CANCEL),
        (502, False, Disposition.CANCEL),
        (1, False, Disposition.FAILED),
        (38, False, Disposition.FAILED),
        (0, False, Disposition.UNKNOWN),
        (None, False, Disposition.UNKNOWN),
    ],
)
def test_disposition_from_cause(cause: int | None, answered: bool, disposition: Disposition) -> None:
    assert disposition_from_cause(cause, answered=answered) is disposition


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("NORMAL_CLEARING", 16),
        ("USER_BUSY", 17),
        ("NO_ANSWER", 19),
        ("CALL_REJECTED", 21),
        ("ORIGINATOR_CANCEL", 487),
        ("normal_circuit_congestion", 34),
        ("LOSE_RACE", 502),
        ("16", 16),
        ("BOGUS_CAUSE", None),
        ("", None),
        (None, None),
    ],
)
def test_cause_from_name(name: str | None, code: int | None) -> None:
    assert cause_from_name(name) == code


EXT = Party(PartyKind.EXTENSION, "601")
SUBJECT = Party(PartyKind.SUBJECT, "+442079460123")
WITHHELD = Party(PartyKind.WITHHELD, None)
NOBODY = Party(PartyKind.NONE, None)


@pytest.mark.parametrize(
    ("caller", "callee", "direction"),
    [
        (EXT, EXT, Direction.INTERNAL),
        (EXT, SUBJECT, Direction.OUTBOUND),
        (SUBJECT, EXT, Direction.INBOUND),
        (WITHHELD, EXT, Direction.INBOUND),
        (SUBJECT, SUBJECT, Direction.UNKNOWN),
        (NOBODY, EXT, Direction.UNKNOWN),
        (EXT, NOBODY, Direction.UNKNOWN),
    ],
)
def test_infer_direction(caller: Party, callee: Party, direction: Direction) -> None:
    assert infer_direction(caller, callee) is direction


def test_direction_from_text() -> None:
    assert direction_from_text("inbound") is Direction.INBOUND
    assert direction_from_text("Outbound") is Direction.OUTBOUND
    assert direction_from_text("local") is Direction.INTERNAL
    assert direction_from_text("sideways") is None
    assert direction_from_text(None) is None


# ---------------------------------------------------------------------------------- keys, bodies, ctx


def test_dedupe_key_is_stable_and_unambiguous() -> None:
    assert dedupe_key("pbx", "a") == dedupe_key("pbx", b"a")
    assert dedupe_key("ab", "c") != dedupe_key("a", "bc")
    assert dedupe_key("a", "") != dedupe_key("a")
    assert len(dedupe_key("x")) == 64


def test_dedupe_key_fixed_vector() -> None:
    # the construction is part of the lake's contract (keys already stored must keep matching)
    expected = hashlib.sha256((3).to_bytes(8, "big") + b"pbx" + (1).to_bytes(8, "big") + b"1").hexdigest()
    assert dedupe_key("pbx", "1") == expected


def test_media_type() -> None:
    assert media_type("Text/CSV; charset=utf-8") == "text/csv"
    assert media_type("") == ""
    assert media_type(None) == ""
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        require_media_type("text/html", frozenset({"text/csv"}), "asterisk-csv")
    assert caught.value.code == "ingest.unsupported_media_type"


def test_split_lines_handles_bom_crlf_and_blank_lines() -> None:
    body = b"\xef\xbb\xbffirst\r\n\r\n  \nsecond\nthird"
    assert list(split_lines(body)) == [(1, b"first"), (4, b"second"), (5, b"third")]


def test_decode_line_rejects_bad_utf8() -> None:
    with pytest.raises(RecordRejected, match="UTF-8"):
        decode_line(b"caf\xe9")


def test_error_codes_are_stable() -> None:
    assert IngestError.code == "ingest.error"
    assert UnparseableBodyError.code == "ingest.unparseable"
    assert UnsupportedMediaTypeError.code == "ingest.unsupported_media_type"
    assert RecordRejected.code == "ingest.record_rejected"
    assert issubclass(UnparseableBodyError, IngestError)
    assert issubclass(RecordRejected, IngestError)


def test_reject_repr_hides_the_raw_record() -> None:
    reject = Reject(3, "start: not a valid time", b'"07700900123"')
    assert "07700900123" not in repr(reject)
    assert reject.raw == b'"07700900123"'


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": ""},
        {"tenant": ""},
        {"country": "XX"},
        {"country": "gb"},
        {"csv_columns": ("src", "src", "start")},
        {"csv_columns": ("src", "dst")},
        {"csv_columns": ("Start",)},
        {"dial_prefixes": ("9a",)},
        {"extension_max_digits": 7},
    ],
)
def test_pbx_context_refuses_bad_settings(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="PbxContext"):
        make_ctx(**overrides)


def test_pbx_context_needs_a_zoneinfo() -> None:
    with pytest.raises(TypeError, match="ZoneInfo"):
        PbxContext("pbx", "acme", UTC, "GB")  # type: ignore[arg-type]

"""Large Master.csv bodies parsed column-wise give exactly what the line-by-line parser gives.

The column-wise path (``parse_asterisk_csv_columns`` + ``pseudonymise_csv_columns``) exists for speed
only; every body here goes through both paths and the pseudonymised tables must be equal, row for row,
including rejects, duplicates within the body, odd quoting, non-ASCII text, epochs, clock changes, ids
that read as phone numbers, and numbers in free text.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from ingest.context import PbxContext
from ingest.formats.asterisk_csv import COLUMNAR_MIN_BYTES, parse_asterisk_csv, parse_asterisk_csv_columns
from ingest.normalise import to_e164
from ingest.policy import Pseudonymiser, _may_scrub, impossible_numbers, pseudonymise_all, pseudonymise_csv_columns
from ingest.records import CDR_SCHEMA, records_to_table
from tests.ingest import make_ctx, vector

INGESTED_AT = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
NUMBERS = [f"07700900{n:03d}" for n in range(200)] + [f"0207946{n:04d}" for n in range(200)]
TRICKY = [
    # quoting Python's csv module (strict) rejects but Arrow would read
    b'"acct","07700900001","600","from-pstn","x","PJSIP/trunk-0000001a","","Dial","a"b,"2025-03-04 10:00:00",'
    b',"2025-03-04 10:00:05",5,0,"NO ANSWER","DOCUMENTATION","1741082400.1","","","1741082400.1",1',
    b'"","07700900002","600","from-pstn",""x","PJSIP/trunk-0000001b","","Dial","","2025-03-04 10:00:00",,'
    b'"2025-03-04 10:00:05",5,0,"NO ANSWER","DOCUMENTATION","1741082400.2","","","1741082400.2",2',
    # non-ASCII name, an unquoted field with a quote inside, an epoch start, a bad time, a bad count
    '"","07700900003","600","from-pstn","""Bjørn"" <07700900003>","PJSIP/t-0000001c","","Dial","","2025-03-04 '
    '10:00:00",,"2025-03-04 10:00:05",5,0,"BUSY","DOCUMENTATION","1741082400.3","","","1741082400.3",3'.encode(),
    b'"",07700900004,600,"from-pstn",ab"c,"PJSIP/t-0000001d","","Dial","","2025-03-04 10:00:00",,'
    b'"2025-03-04 10:00:05",5,0,"BUSY","DOCUMENTATION","1741082400.4","","","1741082400.4",4',
    b'"","07700900005","600","from-pstn","","","","Dial","","1741082400",,"1741082405",5,0,"BUSY",'
    b'"DOCUMENTATION","1741082400.5","","","1741082400.5",5',
    b'"","07700900006","600","from-pstn","","","","Dial","","2025-02-30 10:00:00",,"2025-03-04 10:00:05",5,0,'
    b'"BUSY","DOCUMENTATION","1741082400.6","","","1741082400.6",6',
    b'"","07700900007","600","from-pstn","","","","Dial","","2025-3-4 10:00:00",,"2025-03-04 10:00:05",5,0,'
    b'"BUSY","DOCUMENTATION","1741082400.7","","","1741082400.7",7',
    b'"","07700900008","600","from-pstn","","","","Dial","","2025-03-04 10:00:59",,"2025-03-04 10:00:60",5,0,'
    b'"BUSY","DOCUMENTATION","1741082400.8","","","1741082400.8",8',
    b'"","07700900009","600","from-pstn","","","","Dial","","2025-03-04 10:00:00",,"2025-03-04 10:00:05",five,0,'
    b'"BUSY","DOCUMENTATION","1741082400.9","","","1741082400.9",9',
    b'"","07700900010","600","from-pstn","","","","Dial","","",,"2025-03-04 10:00:05",5,0,"BUSY",'
    b'"DOCUMENTATION","1741082400.10","","","1741082400.10",10',
    # clock changes in London: the spring gap and the autumn overlap
    b'"","07700900011","600","from-pstn","","","","Dial","","2025-03-30 01:30:00","2025-03-30 01:30:10",'
    b'"2025-03-30 03:00:00",5,0,"ANSWERED","DOCUMENTATION","1743298200.11","","","1743298200.11",11',
    b'"","07700900012","600","from-pstn","","","","Dial","","2025-10-26 01:30:00","2025-10-26 01:59:59",'
    b'"2025-10-26 02:10:00",5,0,"ANSWERED","DOCUMENTATION","1761438600.12","","","1761438600.12",12',
    # no src: the caller comes from clid; withheld; a redacted long number; a URI; an extension name
    b'"","","600","from-pstn","""Jane"" <020 7946 0123>","PJSIP/t-0000002a","","Dial","","2025-03-04 10:00:00",,'
    b'"2025-03-04 10:00:05",5,0,"NO ANSWER","DOCUMENTATION","1741082400.13","","","1741082400.13",13',
    b'"","anonymous","600","from-pstn","","","","Dial","","2025-03-04 10:00:00",,"2025-03-04 10:00:05",5,0,'
    b'"CANCEL","DOCUMENTATION","1741082400.14","","","1741082400.14",14',
    b'"","99999999999999","600","from-pstn","","","","Dial","","2025-03-04 10:00:00",,"2025-03-04 10:00:05",'
    b'5,0,"FAILED","DOCUMENTATION","1741082400.15","","","1741082400.15",15',
    b'"","sip:+447700900016@trunk","alice","from-pstn","","","","Dial","","2025-03-04 10:00:00",,'
    b'"2025-03-04 10:00:05",5,0,"CONGESTION","BILLING","1741082400.16","","","1741082400.16",16',
    # numbers in free text and extras, a uniqueid that is a whole number, no uniqueid/sequence, blanks
    b'"07700900017","601","07700 900 017","ctx 02079460017","","SIP/07700900017-00000012",'
    b'"Local/020-7946-0017@out;1","Dial","SIP/07700900017@trunk, 1741082400.17 2025-03-04 10:00:00 192.0.2.1",'
    b'"2025-03-04 10:00:00","2025-03-04 10:00:01","2025-03-04 10:00:05",5,4,"ANSWERED","BILLING",'
    b'"174108240017","call me on 07700900017","07700900017","174108240017",17',
    b'"","07700900018","600","from-pstn","","","","Dial","","2025-03-04 10:00:00",,"2025-03-04 10:00:05",5,0,'
    b'"BUSY","DOCUMENTATION","","","","",""',
    b"",
    b"   \t",
    b"\x0b\x0c \t",  # blank too (what bytes.strip removes)
    b" \x1c",  # not blank: bytes.strip keeps \x1c
    b'"","07700900019","600","from-pstn","","","","Dial","","2025-03-04 10:00:00",,"2025-03-04 10:00:05",5,0,'
    b'"NO ANSWER","DOCUMENTATION","1741082400.19","","","1741082400.19",19 ',
    b'"","07700900020","600","from-pstn","","","","Dial","","2025-03-04 10:00:00",,"2025-03-04 10:00:05",5,0,'
    b'"NO ANSWER","DOCUMENTATION","1741082400.20","","","1741082400.20",0020',
    b'\xff"broken utf-8',
    # free text with two numbers and a redacted one, and with a NUL (the column-wise scrub's separator)
    b'"","601","07700900021","from-internal","","PJSIP/601-0000003a","","Dial",'
    b'"SIP/02079460021&SIP/0113 496 0021,99999999999,07700900021","2025-03-04 10:00:00",,"2025-03-04 10:00:05",'
    b'5,0,"NO ANSWER","DOCUMENTATION","1741082400.21","","","1741082400.21",21',
    b'"","601","07700900022","from-internal","","PJSIP/601-0000003b","","Dial","SIP/07700900022\x00@trunk",'
    b'"2025-03-04 10:00:00",,"2025-03-04 10:00:05",5,0,"NO ANSWER","DOCUMENTATION","1741082400.22","","",'
    b'"1741082400.22",22',
]


class HashTokens:
    """Tokens derived from the number, so that both paths give equal tables whatever the lookup order."""

    def token_for(self, tenant: str, e164: str) -> str:
        """A stable token."""
        return "sub_" + hashlib.sha256(f"{tenant}|{e164}".encode()).hexdigest()[:12]

    def tokens_for(self, tenant: str, numbers: Iterable[str]) -> dict[str, str]:
        """Stable tokens, many at once."""
        return {number: self.token_for(tenant, number) for number in numbers}


def plain_lines(count: int, seed: int = 1) -> list[bytes]:
    """Realistic 21-column Master.csv lines (two hours of calls per 1,000 lines), a few duplicated."""
    rng = random.Random(seed)
    zone = ZoneInfo("Europe/London")
    start = datetime(2025, 3, 30, 0, 0, tzinfo=UTC)  # across the spring clock change
    lines = []
    for n in range(count):
        local = (start + timedelta(seconds=7 * n)).astimezone(zone)
        number = rng.choice(NUMBERS)
        extension = str(600 + rng.randrange(50))
        answered = rng.random() < 0.7
        talk = rng.randrange(1, 300) if answered else 0
        inbound = rng.random() < 0.6
        src, dst = (number, extension) if inbound else (extension, number)
        data = f"PJSIP/{extension},30,tT" if inbound else f"PJSIP/{number}@trunk,60"
        end = local + timedelta(seconds=5 + talk)
        fields = [
            '"acct01"' if rng.random() < 0.3 else '""', f'"{src}"', f'"{dst}"', '"from-pstn"',
            f'"""Caller {n % 7}"" <{src}>"', f'"PJSIP/{"trunk" if inbound else extension}-{rng.randrange(16**8):08x}"',
            f'"PJSIP/{extension}-{rng.randrange(16**8):08x}"' if inbound and answered else '""', '"Dial"',
            f'"{data}"', f'"{local:%Y-%m-%d %H:%M:%S}"',
            f'"{local + timedelta(seconds=5):%Y-%m-%d %H:%M:%S}"' if answered else "",
            f'"{end:%Y-%m-%d %H:%M:%S}"', str(5 + talk), str(talk), '"ANSWERED"' if answered else '"NO ANSWER"',
            '"DOCUMENTATION"', f'"1743292800.{n}"', '"vip"' if n % 97 == 0 else '""', '""', f'"1743292800.{n}"',
            str(n % 100),
        ]  # fmt: skip
        lines.append(",".join(fields).encode())
    return lines + lines[:5]  # the same CDRs again: duplicates within the body


def both_paths(body: bytes, ctx: PbxContext) -> tuple[pa.Table, pa.Table, list[tuple[int | None, str]]]:
    """(line by line, column-wise, rejects) for one body; the rejects of both paths must be equal."""
    tokens = HashTokens()
    reference = parse_asterisk_csv(body, "text/csv", ctx)
    expected = records_to_table(pseudonymise_all(reference.records, ctx, tokens, INGESTED_AT), CDR_SCHEMA)
    columnar = parse_asterisk_csv_columns(body, "text/csv", ctx)
    assert columnar is not None
    assert [(r.line, r.reason, r.raw) for r in columnar.rejects] == [
        (r.line, r.reason, r.raw) for r in reference.rejects
    ]
    got = pseudonymise_csv_columns(columnar, ctx, tokens, INGESTED_AT)
    return expected, got, [(r.line, r.reason) for r in reference.rejects]


def assert_same(expected: pa.Table, got: pa.Table) -> None:
    assert got.schema == expected.schema
    assert got.num_rows == expected.num_rows
    for name in CDR_SCHEMA.names:
        left, right = expected.column(name).to_pylist(), got.column(name).to_pylist()
        differ = [(i, a, b) for i, (a, b) in enumerate(zip(left, right, strict=True)) if a != b]
        assert not differ, (name, differ[:3])


def body_of(lines: list[bytes]) -> bytes:
    body = b"\n".join(lines) + b"\n"
    assert len(body) >= COLUMNAR_MIN_BYTES
    return body


def test_plain_lines_match_line_by_line() -> None:
    expected, got, rejects = both_paths(body_of(plain_lines(2000)), make_ctx())
    assert rejects == []
    assert_same(expected, got)


@pytest.mark.parametrize("ctx", [make_ctx(), make_ctx(dial_prefixes=("9",)), make_ctx(country="DE")])
def test_tricky_lines_match_line_by_line(ctx: PbxContext) -> None:
    lines = plain_lines(2000)
    for index, tricky in enumerate(TRICKY):
        lines.insert(37 * index + 11, tricky)
    expected, got, rejects = both_paths(body_of(lines), ctx)
    assert len(rejects) >= 6
    assert_same(expected, got)


@pytest.mark.parametrize("country", ["DE", "IT", "IN", "AU"])
def test_uniqueids_stay_ids_where_their_digits_make_a_valid_number(country: str) -> None:
    """``1743292800.17`` without its dot is a possible number in these plans; both paths keep it."""
    expected, got, _ = both_paths(body_of(plain_lines(2000)), make_ctx(country=country))
    assert_same(expected, got)
    for name in ("call_id", "linked_id"):
        assert all(re.fullmatch(r"1743292800\.\d+", value) for value in got.column(name).to_pylist())


def test_lines_of_another_field_count_go_line_by_line() -> None:
    lines = plain_lines(2000)
    lines[700:700] = [b'"","601","600","from-internal"', vector("asterisk/master_16.csv").split(b"\n")[0]]
    expected, got, rejects = both_paths(body_of(lines), make_ctx())
    assert rejects == [(701, "expected 16 to 21 fields, got 4")]
    assert_same(expected, got)


def test_sample_vectors_inside_a_large_body_match_line_by_line() -> None:
    sample = vector("asterisk/master_21.csv").rstrip(b"\n").split(b"\n")
    lines = plain_lines(2000)
    lines[500:500] = sample
    expected, got, _ = both_paths(body_of(lines), make_ctx())
    assert_same(expected, got)


@pytest.mark.parametrize(
    "change",
    [
        lambda body: body.replace(b"\n", b"\r\n"),  # CRLF
        lambda body: b"\xef\xbb\xbf" + body,  # a BOM
        lambda body: body[:1000],  # small
    ],
)
def test_bodies_left_to_the_line_parser(change: object) -> None:
    body = change(body_of(plain_lines(2000)))  # type: ignore[operator]
    assert parse_asterisk_csv_columns(body, "text/csv", make_ctx()) is None


@pytest.mark.parametrize("country", ["GB", "DE", "AT", "US", "FR", "AU", "IN", "IT", "BR"])
def test_impossible_numbers_agree_with_phonenumbers(country: str) -> None:
    rng = random.Random(country)
    values = ["", "12", "+447700900123", "1741097109", "174109710918", "00447700900123", "0044"]
    values += ["".join(rng.choice("0123456789") for _ in range(rng.randint(5, 18))) for _ in range(400)]
    ctx = make_ctx(country=country)
    impossible = impossible_numbers(pa.array(values, pa.string()), ctx).to_pylist()
    for value, certain in zip(values, impossible, strict=True):
        if certain:
            assert to_e164(value, ctx) is None, value
            assert to_e164(value, ctx, require_valid=True) is None, value


def test_values_the_column_wise_policy_skips_are_left_unchanged_by_scrub() -> None:
    # Channel names with random hex suffixes are skipped by a vectorised check (their suffix is
    # protected); whatever the check skips, SCRUB must return as it is.
    rng = random.Random(5)
    pieces = ["PJSIP/", "SIP/", "Local/", "IAX2/", "trunk", "6", "68", "682", "0770090", "020", "-", "@", ";", ";1"]
    pieces += [",", " ", "/", "|", ")", "(", ".", "x", "_", "+44", "0207946", "1741097109.18"]
    values = []
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.8:
            alphabet = "0123456789abcdef" if rng.random() < 0.5 else "0123456789"
            text += "-" + "".join(rng.choice(alphabet) for _ in range(8))
        values.append(text)
    values += ["PJSIP/682-81234567", "PJSIP/6821234-abcdef01", "SIP/07700900017-00000012", "PJSIP/trunk-12345678"]
    ctx = make_ctx()
    scrub = Pseudonymiser(ctx, HashTokens()).scrub
    may_change = _may_scrub(pa.array(values, pa.string())).to_pylist()
    skipped = [value for value, flag in zip(values, may_change, strict=True) if not flag]
    assert len(skipped) > 1000
    assert "PJSIP/682-81234567" in skipped
    assert "SIP/07700900017-00000012" not in skipped
    assert [value for value in skipped if scrub(value) != value] == []


def test_pieces_of_one_body_may_share_a_pseudonymiser() -> None:
    ctx = make_ctx()
    tokens = HashTokens()
    shared = Pseudonymiser(ctx, tokens)
    lines = plain_lines(4000)
    for piece in (lines[:2000], lines[2000:]):
        body = body_of(piece)
        expected, _, _ = both_paths(body, ctx)
        columnar = parse_asterisk_csv_columns(body, "text/csv", ctx)
        assert columnar is not None
        assert_same(expected, pseudonymise_csv_columns(columnar, ctx, tokens, INGESTED_AT, shared))

"""Pseudonymisation: no raw number or name survives, tokens are stable, free text is scrubbed."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingest.formats import FORMAT_TABLES, PARSERS
from ingest.policy import (
    ACD_POLICY,
    CDR_POLICY,
    REDACTED,
    Action,
    pseudonymise_acd,
    pseudonymise_all,
    pseudonymise_cdr,
    scrub_text,
)
from ingest.records import (
    ACD_EVENT_SCHEMA,
    CDR_SCHEMA,
    AcdEventRecord,
    CdrRecord,
    Direction,
    Disposition,
    Party,
    PartyKind,
    RawAcdEvent,
    RawCdr,
    records_to_table,
)
from tests.ingest import VECTORS, MemorySubjectTokens, make_ctx

CTX = make_ctx(dial_prefixes=("9",))
INGESTED_AT = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)

# (format, vector, content type) for every sample file
SAMPLES = [
    ("asterisk-csv", "asterisk/master_16.csv", "text/csv"),
    ("asterisk-csv", "asterisk/master_17.csv", "text/csv"),
    ("asterisk-csv", "asterisk/master_18.csv", "text/csv"),
    ("asterisk-csv", "asterisk/master_21.csv", "text/csv"),
    ("freeswitch-json", "freeswitch/a_leg.json", "application/json"),
    ("freeswitch-json", "freeswitch/a_leg_json_urlencoded.form", "application/x-www-form-urlencoded"),
    ("freeswitch-json", "freeswitch/a_leg_json_base64.form", "application/x-www-form-base64-encoded"),
    ("freeswitch-json", "freeswitch/b_leg_busy.json", "application/json"),
    ("freeswitch-xml", "freeswitch/cancel_leg.xml", "text/xml"),
    ("freeswitch-xml", "freeswitch/cancel_leg_xml_plain.form", "application/x-www-form-plaintext"),
    ("freeswitch-xml", "freeswitch/cancel_leg_xml_urlencoded.form", "application/x-www-form-urlencoded"),
    ("freeswitch-xml", "freeswitch/cancel_leg_xml_base64.form", "application/x-www-form-base64-encoded"),
    ("cucm", "cucm/cdr_StandAloneCluster_02_202503041405_1001", "text/csv"),
    ("cucm", "cucm/cdr_StandAloneCluster_01_202507010800_2001", "text/csv"),
    ("cucm", "cucm/cmr_StandAloneCluster_02_202503041405_1002", "text/csv"),
    ("queue-log", "queue_log/queue_log", "text/plain"),
    ("queue-log", "queue_log/store_data.form", "application/x-www-form-urlencoded"),
    ("queue-log", "queue_log/store_data_numbered.form", "application/x-www-form-urlencoded"),
    ("json", "jsonl/cdrs.jsonl", "application/x-ndjson"),
]

# Ofcom drama numbers in any written form: national, +44, 0044, with or without spaces
_DRAMA = re.compile(r"(?<!\d)(?:\+44|0044|44|0)?\s?(7700\s?900\s?\d{3}|20\s?7946\s?0\d{3}|1632\s?960\s?\d{3})(?!\d)")
NAMES = ("Jane", "Roe", "Alice", "Bob", "Björn", "Smith Jones")
_SEPARATORS = re.compile(r"[\s\-.()]")


def input_numbers() -> set[str]:
    """National significant numbers of every drama number written anywhere in the sample files."""
    found: set[str] = set()
    for path in VECTORS.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("latin-1")
            found.update(re.sub(r"\s", "", m.group(1)) for m in _DRAMA.finditer(text))
    return found


def forbidden_forms(nsn: str) -> list[str]:
    """A number as national, E.164 and digits-only text."""
    return [f"0{nsn}", f"+44{nsn}", f"44{nsn}", nsn]


def all_output_text(record: CdrRecord | AcdEventRecord) -> list[str]:
    texts = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        texts.extend(value if isinstance(value, list) else [str(value)])
    return texts


def pseudonymised_samples(tokens: MemorySubjectTokens) -> list[CdrRecord | AcdEventRecord]:
    out: list[CdrRecord | AcdEventRecord] = []
    for fmt, path, content_type in SAMPLES:
        result = PARSERS[fmt]((VECTORS / path).read_bytes(), content_type, CTX)
        out.extend(pseudonymise_all(result.records, CTX, tokens, INGESTED_AT))
    return out


def test_no_input_number_or_name_survives_in_any_output_field() -> None:
    numbers = input_numbers()
    assert len(numbers) >= 15  # the samples really do carry numbers
    records = pseudonymised_samples(MemorySubjectTokens())
    assert len(records) >= 40
    for record in records:
        for text in all_output_text(record):
            compact = _SEPARATORS.sub("", text)
            for nsn in numbers:
                for form in forbidden_forms(nsn):
                    assert form not in text, (record.source_format, text)
                    assert form not in compact, (record.source_format, text)
            for name in NAMES:
                assert name not in text, (record.source_format, text)


def test_subjects_become_stable_tokens_and_extensions_stay() -> None:
    tokens = MemorySubjectTokens()
    records = pseudonymised_samples(tokens)
    cdrs = [r for r in records if isinstance(r, CdrRecord)]
    for record in cdrs:
        for value, kind in ((record.caller, record.caller_kind), (record.callee, record.callee_kind)):
            if kind == PartyKind.SUBJECT:
                assert value is not None
                assert value.startswith("sub_")
            elif kind == PartyKind.EXTENSION:
                assert value is not None
                assert not value.startswith("sub_")
            else:
                assert value is None
    # the same number gets the same token in every format it appears in
    token = tokens.tokens[("acme", "+442079460100")]
    asterisk_inbound = [r for r in cdrs if r.source_format == "asterisk-csv" and r.caller == token]
    json_inbound = [r for r in cdrs if r.source_format == "json" and r.caller == token]
    assert asterisk_inbound
    assert json_inbound


def _raw_cdr(**fields: object) -> RawCdr:
    base: dict[str, object] = {
        "source_format": "asterisk-csv",
        "dedupe_key": "k" * 64,
        "call_id": "1741097109.18",
        "linked_id": "1741097109.18",
        "sequence": 2,
        "start_at": datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC),
        "answer_at": None,
        "end_at": None,
        "duration_s": 10,
        "billsec_s": 0,
        "disposition": Disposition.NO_ANSWER,
        "hangup_cause": None,
        "direction": Direction.INBOUND,
        "caller": Party(PartyKind.SUBJECT, "+442079460123"),
        "callee": Party(PartyKind.EXTENSION, "600"),
        "account_code": None,
        "context": None,
        "src_channel": None,
        "dst_channel": None,
        "last_app": None,
        "last_data": None,
        "extra": {},
    }
    base.update(fields)
    return RawCdr(**base)  # type: ignore[arg-type]


def test_pseudonymise_cdr_fields() -> None:
    tokens = MemorySubjectTokens()
    raw = _raw_cdr(
        src_channel="PJSIP/trunk-0000001a",
        dst_channel="SIP/07700900123-00000012",
        last_data="PJSIP/02079460123@trunk,30",
        account_code="02079460123",
        extra={"userfield": "ring 020 7946 0123", "caller_id_name": "Jane Roe", "amaflags": "BILLING"},
    )
    record = pseudonymise_cdr(raw, CTX, tokens, INGESTED_AT)
    token = tokens.tokens[("acme", "+442079460123")]
    assert record.tenant == "acme"
    assert record.pbx == CTX.name
    assert record.caller == token
    assert record.caller_kind == "subject"
    assert record.callee == "600"
    assert record.callee_kind == "extension"
    assert record.src_channel == "PJSIP/trunk-0000001a"
    assert record.dst_channel == f"SIP/{REDACTED}-00000012"  # drama mobiles are not valid numbers
    assert record.last_data == f"PJSIP/{token}@trunk,30"
    assert record.account_code == token
    assert record.extra_json is not None
    assert json.loads(record.extra_json) == {"amaflags": "BILLING", "userfield": f"ring {token}"}
    assert record.disposition == "NO_ANSWER"
    assert record.direction == "inbound"
    assert record.ingested_at == INGESTED_AT
    assert tokens.calls == 1  # one lookup per number per record


def test_withheld_none_and_redacted_parties_store_nothing() -> None:
    for party in (Party(PartyKind.WITHHELD, None), Party(PartyKind.NONE, None), Party(PartyKind.REDACTED, None)):
        record = pseudonymise_cdr(_raw_cdr(caller=party), CTX, MemorySubjectTokens(), INGESTED_AT)
        assert record.caller is None
        assert record.caller_kind == party.kind.value
    record = pseudonymise_cdr(_raw_cdr(extra={}), CTX, MemorySubjectTokens(), INGESTED_AT)
    assert record.extra_json is None
    only_names = _raw_cdr(extra={"caller_id_name": "Jane Roe"})
    assert pseudonymise_cdr(only_names, CTX, MemorySubjectTokens(), INGESTED_AT).extra_json is None


def test_queue_log_data_roles() -> None:
    tokens = MemorySubjectTokens()
    raw = RawAcdEvent(
        source_format="queue-log",
        dedupe_key="k" * 64,
        event_at=datetime(2025, 3, 4, 14, 13, 20, tzinfo=UTC),
        call_id="1741097600.30",
        queue="support",
        agent="Local/02079460124@from-queue/n",
        event="ENTERQUEUE",
        caller=Party(PartyKind.SUBJECT, "+447700900321"),
        position=2,
        original_position=2,
        wait_s=None,
        hold_s=None,
        talk_s=None,
        ring_ms=None,
        agent_call_id=None,
        data=("", "07700900321", "2", "Jane Roe"),
    )
    record = pseudonymise_acd(raw, CTX, tokens, INGESTED_AT)
    caller_token = tokens.tokens[("acme", "+447700900321")]
    agent_token = tokens.tokens[("acme", "+442079460124")]
    assert record.caller == caller_token
    assert record.caller_kind == "subject"
    # the caller number piece is tokenised like the party (even though 07700 900xxx is not "valid")
    assert record.data == ["", caller_token, "2", REDACTED]
    assert record.agent == f"Local/{agent_token}@from-queue/n"
    assert record.queue == "support"
    assert record.event == "ENTERQUEUE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PJSIP/trunk-0000001a", "PJSIP/trunk-0000001a"),
        ("SIP/601-00000012", "SIP/601-00000012"),
        ("Local/601@from-internal-00000012;1", "Local/601@from-internal-00000012;1"),
        ("PJSIP/601,30,tT", "PJSIP/601,30,tT"),
        ("1741097109.18", "1741097109.18"),
        ("pbx01-1741097109.18", "pbx01-1741097109.18"),
        ("3c5b1d9e-7a2f-4e61-9b0d-5f8e2a7c1d01", "3c5b1d9e-7a2f-4e61-9b0d-5f8e2a7c1d01"),
        ("sofia/internal/601@192.0.2.10:5060", "sofia/internal/601@192.0.2.10:5060"),
        ("2025-03-04 14:05:09", "2025-03-04 14:05:09"),
        ("queue support, timeout 300", "queue support, timeout 300"),
        ("PJSIP/07700900123@trunk", f"PJSIP/{REDACTED}@trunk"),
        ("SIP/07700900123-00000012", f"SIP/{REDACTED}-00000012"),
        ("sip:+442079460123@trunk.example.net", "sip:TOKEN@trunk.example.net"),
        ("call 020 7946 0123 back", "call TOKEN back"),
        ("call (020) 7946-0123 back", "call (TOKEN back"),
        ("ext02079460123", "extTOKEN"),
        ("0044 20 7946 0123", "TOKEN"),
        ("9-digit 123456789 id", f"9-digit {REDACTED} id"),
        ("01632.960.123", REDACTED),
        ("ring \uff10\uff12\uff10\uff17\uff19\uff14\uff16\uff10\uff11\uff12\uff13", "ring TOKEN"),  # fullwidth
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    tokens = MemorySubjectTokens()
    scrubbed = scrub_text(text, CTX, tokens)
    token = tokens.tokens.get(("acme", "+442079460123"), "TOKEN")
    assert scrubbed == expected.replace("TOKEN", token)


def test_policy_tables_cover_every_raw_field() -> None:
    assert set(CDR_POLICY) == {f.name for f in dataclasses.fields(RawCdr)}
    assert set(ACD_POLICY) == {f.name for f in dataclasses.fields(RawAcdEvent)}
    assert CDR_POLICY["caller"] is Action.TOKENISE
    assert CDR_POLICY["last_data"] is Action.SCRUB
    assert ACD_POLICY["data"] is Action.SCRUB


def test_lake_rows_fit_the_arrow_schemas() -> None:
    records = pseudonymised_samples(MemorySubjectTokens())
    cdrs = [r for r in records if isinstance(r, CdrRecord)]
    events = [r for r in records if isinstance(r, AcdEventRecord)]
    assert records_to_table(cdrs, CDR_SCHEMA).num_rows == len(cdrs)
    assert records_to_table(events, ACD_EVENT_SCHEMA).num_rows == len(events)
    assert {FORMAT_TABLES[fmt] for fmt, _, _ in SAMPLES} == {"cdr", "acd_event"}


def test_ingested_at_must_be_aware_and_is_stored_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pseudonymise_cdr(_raw_cdr(), CTX, MemorySubjectTokens(), datetime(2025, 1, 1))  # noqa: DTZ001
    plus_one = datetime(2025, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    record = pseudonymise_cdr(_raw_cdr(), CTX, MemorySubjectTokens(), plus_one)
    assert record.ingested_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert record.ingested_at.tzinfo is UTC


def test_batch_looks_each_number_up_once() -> None:
    tokens = MemorySubjectTokens()
    raws = [_raw_cdr(dedupe_key=str(i) * 64, last_data="PJSIP/02079460123@trunk") for i in range(5)]
    records = pseudonymise_all(raws, CTX, tokens, INGESTED_AT)
    assert len(records) == 5
    assert tokens.calls == 1
    assert pseudonymise_all([], CTX, tokens, INGESTED_AT) == []


@pytest.mark.parametrize(
    ("identifier", "stored"),
    [
        ("1741097109.18", "1741097109.18"),
        ("pbx01-1741097109.18", "pbx01-1741097109.18"),
        ("3c5b1d9e-7a2f-4e61-9b0d-5f8e2a7c1d01", "3c5b1d9e-7a2f-4e61-9b0d-5f8e2a7c1d01"),
        ("2:104871", "2:104871"),
        ("20250304140509123", "20250304140509123"),  # a long counter is not a possible number
        ("07700900123", REDACTED),  # malformed input: a number where an id belongs
        ("+44 20 7946 0123", REDACTED),
    ],
)
def test_ids_are_kept_unless_they_are_a_phone_number(identifier: str, stored: str) -> None:
    raw = _raw_cdr(call_id=identifier, linked_id=identifier)
    record = pseudonymise_cdr(raw, CTX, MemorySubjectTokens(), INGESTED_AT)
    assert record.call_id == stored
    assert record.linked_id == stored


@pytest.mark.parametrize("country", ["GB", "DE", "AT", "IT", "IN", "AU", "US", "NL", "FR", "ES"])
def test_asterisk_uniqueids_are_kept_in_every_numbering_plan(country: str) -> None:
    """Without its dot a uniqueid is a valid number in some plans (DE, AT, IT, IN, AU): it stays an id."""
    ctx = make_ctx(country=country)
    for uniqueid in ("1741097109.18", "1712345678.42", "1741097109.1", "1741097109.123", " 1741097109.18 "):
        record = pseudonymise_cdr(
            _raw_cdr(call_id=uniqueid, linked_id=uniqueid), ctx, MemorySubjectTokens(), INGESTED_AT
        )
        assert (record.call_id, record.linked_id) == (uniqueid, uniqueid)
    # a whole number where an id belongs is still redacted, in any plan and written with dots too
    for number in ("+44 20 7946 0123", "+44.20.7946.0123", "+447700900123"):
        record = pseudonymise_cdr(_raw_cdr(call_id=number), ctx, MemorySubjectTokens(), INGESTED_AT)
        assert record.call_id == REDACTED

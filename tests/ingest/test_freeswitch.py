"""FreeSWITCH mod_json_cdr / mod_xml_cdr: every body encoding, fields, refusals."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from ingest.errors import UnparseableBodyError, UnsupportedMediaTypeError
from ingest.formats.freeswitch import parse_freeswitch_json, parse_freeswitch_xml, parse_xml_safely
from ingest.normalise import dedupe_key
from ingest.records import Direction, Disposition, Party, PartyKind, RawCdr
from tests.ingest import make_ctx, vector

CTX = make_ctx()
CORE_UUID = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"
A_UUID = "3c5b1d9e-7a2f-4e61-9b0d-5f8e2a7c1d01"
B_UUID = "8e2f4a6c-1b3d-4f5e-a7c9-0d1e2f3a4b02"
C_UUID = "c7d8e9f0-1a2b-4c3d-8e4f-5a6b7c8d9e03"


def one_json(body: bytes, content_type: str) -> RawCdr:
    result = parse_freeswitch_json(body, content_type, CTX)
    assert result.rejects == []
    (record,) = result.records
    return record


def one_xml(body: bytes, content_type: str) -> RawCdr:
    result = parse_freeswitch_xml(body, content_type, CTX)
    assert result.rejects == []
    (record,) = result.records
    return record


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("freeswitch/a_leg.json", "application/json"),  # encode unset
        ("freeswitch/a_leg_json_urlencoded.form", "application/x-www-form-urlencoded"),  # encode=true
        ("freeswitch/a_leg_json_base64.form", "application/x-www-form-base64-encoded"),  # encode=base64
        ("freeswitch/a_leg.json", "application/x-www-form-plaintext"),  # older modules' raw post
    ],
)
def test_json_a_leg_in_every_encoding(path: str, content_type: str) -> None:
    record = one_json(vector(path), content_type)
    assert record.source_format == "freeswitch-json"
    assert record.dedupe_key == dedupe_key(CTX.name, CORE_UUID, A_UUID)
    assert record.call_id == A_UUID
    assert record.linked_id == A_UUID  # an A leg links its call by its own uuid
    assert record.sequence is None
    assert record.start_at == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert record.answer_at == datetime(2025, 3, 4, 14, 5, 17, tzinfo=UTC)
    assert record.end_at == datetime(2025, 3, 4, 14, 7, 40, tzinfo=UTC)
    assert (record.duration_s, record.billsec_s) == (151, 143)
    assert record.disposition is Disposition.ANSWERED
    assert record.hangup_cause == 16
    assert record.direction is Direction.INBOUND
    assert record.caller == Party(PartyKind.SUBJECT, "+442079460123")  # "%2B44..." decoded
    assert record.callee == Party(PartyKind.EXTENSION, "601")
    assert record.account_code == "acme"
    assert record.context == "public"
    assert record.src_channel == "sofia/external/+442079460123@trunk.example.net"
    assert record.dst_channel == "sofia/internal/601@192.0.2.10:5060"
    assert (record.last_app, record.last_data) == ("bridge", "user/601@pbx.example.net")
    assert record.extra == {
        "hangup_cause": "NORMAL_CLEARING",
        "sip_hangup_disposition": "recv_bye",
        "channel_direction": "inbound",
        "read_codec": "PCMA",
        "write_codec": "PCMA",
    }


def test_json_b_leg_busy() -> None:
    record = one_json(vector("freeswitch/b_leg_busy.json"), "application/json; charset=utf-8")
    assert record.call_id == B_UUID
    assert record.linked_id == C_UUID  # originating_leg_uuid
    assert record.answer_at is None  # answer_epoch 0
    assert record.billsec_s == 0
    assert record.disposition is Disposition.BUSY
    assert record.hangup_cause == 17
    assert record.caller == Party(PartyKind.EXTENSION, "602")
    assert record.callee == Party(PartyKind.SUBJECT, "+447700900123")
    # no call_direction: inferred from the parties, not from the leg's "outbound" channel direction
    assert record.direction is Direction.OUTBOUND
    assert record.extra["channel_direction"] == "outbound"
    assert record.extra["proto_specific_hangup_cause"] == "sip:486"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("freeswitch/cancel_leg_xml_plain.form", "application/x-www-form-plaintext"),  # encode unset
        ("freeswitch/cancel_leg_xml_urlencoded.form", "application/x-www-form-urlencoded"),
        ("freeswitch/cancel_leg_xml_base64.form", "application/x-www-form-base64-encoded"),
        ("freeswitch/cancel_leg.xml", "text/xml"),  # encode=textxml
    ],
)
def test_xml_cancelled_leg_in_every_encoding(path: str, content_type: str) -> None:
    record = one_xml(vector(path), content_type)
    assert record.source_format == "freeswitch-xml"
    assert record.dedupe_key == dedupe_key(CTX.name, CORE_UUID, C_UUID)
    assert record.call_id == C_UUID
    assert record.start_at == datetime(2025, 10, 26, 1, 30, tzinfo=UTC)
    assert record.answer_at is None
    assert record.end_at == datetime(2025, 10, 26, 1, 30, 12, tzinfo=UTC)
    assert (record.duration_s, record.billsec_s) == (12, 0)
    assert record.disposition is Disposition.CANCEL
    assert record.hangup_cause == 487
    assert record.caller == Party(PartyKind.WITHHELD, None)
    assert record.callee == Party(PartyKind.EXTENSION, "600")
    assert record.direction is Direction.INBOUND
    assert record.last_data == "{sip_h_X-Note=a&b}user/600@pbx.example.net"  # %-decoded once, exactly
    assert record.extra["cc_queue"] == "support@default"


def test_json_and_xml_of_the_same_leg_share_a_dedupe_key() -> None:
    doc = json.loads(vector("freeswitch/a_leg.json"))
    variables = "".join(f"<{k}>{v}</{k}>" for k, v in doc["variables"].items())
    xml = f'<cdr core-uuid="{doc["core-uuid"]}"><variables>{variables}</variables></cdr>'.encode()
    from_xml = one_xml(xml, "text/xml")
    from_json = one_json(vector("freeswitch/a_leg.json"), "application/json")
    assert from_xml.dedupe_key == from_json.dedupe_key
    assert from_xml.caller == from_json.caller


def _doc(**variables: str) -> bytes:
    base = {"uuid": A_UUID, "start_epoch": "1741097109", "end_epoch": "1741097119"}
    base.update(variables)
    return json.dumps({"core-uuid": CORE_UUID, "variables": base}).encode()


def test_missing_fields_fall_back_to_callflow() -> None:
    doc = {
        "core-uuid": CORE_UUID,
        "variables": {"uuid": A_UUID, "hangup_cause_q850": "19"},
        "callflow": {  # a single object before FreeSWITCH 1.6
            "caller_profile": {"caller_id_number": "07700900555", "destination_number": "700", "context": "public"},
            "times": {"created_time": "1741097109000000", "answered_time": "0", "hangup_time": "1741097139000000"},
        },
    }
    record = one_json(json.dumps(doc).encode(), "application/json")
    assert record.caller == Party(PartyKind.SUBJECT, "+447700900555")
    assert record.callee == Party(PartyKind.EXTENSION, "700")
    assert record.start_at == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
    assert record.answer_at is None
    assert record.duration_s == 30  # no duration variable: end - start
    assert record.disposition is Disposition.NO_ANSWER
    assert record.hangup_cause == 19


def test_caller_is_the_originating_profile_and_callee_the_latest() -> None:
    doc = {
        "variables": {"uuid": A_UUID, "start_epoch": "1741097109"},
        "callflow": [
            {"caller_profile": {"caller_id_number": "02079460123", "destination_number": "601"}},  # after transfer
            {"caller_profile": {"caller_id_number": "02079460123", "destination_number": "02079460000"}},
        ],
    }
    record = one_json(json.dumps(doc).encode(), "application/json")
    assert record.callee == Party(PartyKind.EXTENSION, "601")
    assert record.direction is Direction.INBOUND


def test_call_direction_variable_wins_over_parties() -> None:
    record = one_json(_doc(caller_id_number="601", destination_number="602", call_direction="outbound"), "")
    assert record.direction is Direction.OUTBOUND


def test_recv_cancel_on_an_unanswered_leg_is_cancel() -> None:
    record = one_json(_doc(hangup_cause="NORMAL_CLEARING", sip_hangup_disposition="recv_cancel"), "")
    assert record.disposition is Disposition.CANCEL
    assert record.hangup_cause == 16


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"uuid": ""}, "variables.uuid: missing"),
        ({"start_epoch": "0"}, "start_epoch: missing"),
        ({"start_epoch": "yesterday"}, "start_epoch: not a valid epoch"),
        ({"duration": "-3"}, "duration: not a non-negative integer"),
    ],
)
def test_cdr_missing_required_fields_is_a_reject(variables: dict[str, str], reason: str) -> None:
    body = _doc(**variables)
    result = parse_freeswitch_json(body, "application/json", CTX)
    assert result.records == []
    (reject,) = result.rejects
    assert reject.line is None
    assert reject.reason == reason
    assert reject.raw == body


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not json",
        b"[1, 2, 3]",
        b'{"hello": "world"}',
        b'{"variables": "nope"}',
        b"cdr=",
        b"cdr=%%%%",
        b"cdr=@@@not-base64@@@",
        b"uuid=1&other=2",
        b"[" * 100_000,
        b"cdr=" + quote("[" * 50_000).encode(),
    ],
)
def test_json_body_that_is_not_a_cdr_is_unparseable(body: bytes) -> None:
    with pytest.raises(UnparseableBodyError):
        parse_freeswitch_json(body, "application/json", CTX)


def test_form_with_cdr_among_other_fields() -> None:
    body = b"uuid=" + A_UUID.encode() + b"&cdr=" + quote(_doc().decode(), safe="").encode()
    record = one_json(body, "application/x-www-form-urlencoded")
    assert record.call_id == A_UUID


def test_base64_without_form_prefix_escaping() -> None:
    # base64 '+' and '/' arrive unescaped after cdr=; a stray '%3D' padding is tolerated too
    encoded = base64.b64encode(_doc(caller_id_name="Jane Roe ~~~???")).decode()
    assert "+" in encoded or "/" in encoded
    record = one_json(b"cdr=" + encoded.replace("=", "%3D").encode(), "application/x-www-form-base64-encoded")
    assert record.call_id == A_UUID


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<cdr><variables><uuid>&lol3;</uuid></variables></cdr>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE cdr [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<cdr><variables><uuid>&xxe;</uuid></variables></cdr>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        b"cdr=" + BILLION_LAUGHS,
        b"cdr=" + base64.b64encode(EXTERNAL_ENTITY),
    ],
)
def test_xml_with_dtd_or_entities_is_refused(body: bytes) -> None:
    with pytest.raises(UnparseableBodyError, match="DTD"):
        parse_freeswitch_xml(body, "text/xml", CTX)


def test_dtd_hidden_from_the_byte_check_is_refused_by_expat() -> None:
    # UTF-16 hides "<!DOCTYPE" from the byte search; the expat handlers still refuse it
    document = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE cdr [<!ENTITY a "b">]><cdr/>'.encode("utf-16")
    assert b"<!DOCTYPE" not in document
    with pytest.raises(UnparseableBodyError, match="DTD"):
        parse_xml_safely(document)
    assert parse_xml_safely('<?xml version="1.0" encoding="UTF-16"?><cdr/>'.encode("utf-16")).tag == "cdr"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<cdr>",
        b"<notcdr><variables/></notcdr>",
        b"<cdr><channel_data/></cdr>",
        b"cdr=%3Ccdr",
        b"<" + b"a>" * 10,
    ],
)
def test_xml_body_that_is_not_a_cdr_is_unparseable(body: bytes) -> None:
    with pytest.raises(UnparseableBodyError):
        parse_freeswitch_xml(body, "text/xml", CTX)


def test_unsupported_media_types() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        parse_freeswitch_json(vector("freeswitch/a_leg.json"), "text/xml", CTX)
    with pytest.raises(UnsupportedMediaTypeError):
        parse_freeswitch_xml(vector("freeswitch/cancel_leg.xml"), "application/json", CTX)


def test_ambiguous_url_encoded_json_is_refused_with_advice() -> None:
    # encode=true without double encoding: the value's own %22 looks like the document's quotes
    document = '{"variables":{"uuid":"u-1","sip_full_from":"%22Jane%22"}}'
    body = b"cdr=" + quote(document, safe="%").encode()
    with pytest.raises(UnparseableBodyError, match="base64"):
        parse_freeswitch_json(body, "application/x-www-form-urlencoded", CTX)

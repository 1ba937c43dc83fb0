"""Property tests: whatever a PBX (or an attacker) sends, parsers return a result or raise IngestError.

Every generated body that parses is also pseudonymised, so the policy code sees the same garbage.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape, quoteattr

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.context import ParseResult
from ingest.errors import IngestError
from ingest.formats import PARSERS
from ingest.formats.asterisk_csv import ACCEPTED_MEDIA_TYPES as CSV_TYPES
from ingest.formats.asterisk_csv import PROFILES_BY_FIELD_COUNT
from ingest.formats.cucm import ACCEPTED_MEDIA_TYPES as CUCM_TYPES
from ingest.formats.freeswitch import JSON_MEDIA_TYPES, XML_MEDIA_TYPES
from ingest.formats.jsonl import ACCEPTED_MEDIA_TYPES as JSONL_TYPES
from ingest.formats.jsonl import KNOWN_FIELDS
from ingest.formats.queue_log import ACCEPTED_MEDIA_TYPES as QUEUE_TYPES
from ingest.formats.queue_log import parse_queue_log_store
from ingest.normalise import parse_local_time
from ingest.policy import pseudonymise_all, scrub_text
from ingest.records import RawAcdEvent, RawCdr
from tests.ingest import LONDON, MemorySubjectTokens, make_ctx

CTX = make_ctx(dial_prefixes=("9",))
INGESTED_AT = datetime(2025, 11, 1, tzinfo=UTC)
FAST = settings(
    max_examples=int(os.environ.get("INGEST_FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MEDIA_TYPES = {
    "asterisk-csv": CSV_TYPES,
    "freeswitch-json": JSON_MEDIA_TYPES,
    "freeswitch-xml": XML_MEDIA_TYPES,
    "cucm": CUCM_TYPES,
    "json": JSONL_TYPES,
    "queue-log": QUEUE_TYPES,
}


def run_parser(fmt: str, body: bytes, content_type: str) -> None:
    """Parse and pseudonymise; only IngestError may escape."""
    try:
        result = PARSERS[fmt](body, content_type, CTX)
    except IngestError:
        return
    check_result(result)


def check_result(result: ParseResult[RawCdr] | ParseResult[RawAcdEvent]) -> None:
    for reject in result.rejects:
        assert reject.reason
        assert isinstance(reject.raw, bytes)
    for record in result.records:
        assert record.dedupe_key
        at = record.start_at if isinstance(record, RawCdr) else record.event_at
        assert at.tzinfo is UTC
    pseudonymise_all(result.records, CTX, MemorySubjectTokens(), INGESTED_AT)


formats = st.sampled_from(sorted(PARSERS))


@st.composite
def content_types(draw: st.DrawFn, fmt: str) -> str:
    accepted = sorted(MEDIA_TYPES[fmt])
    return draw(st.one_of(st.sampled_from(accepted), st.text(max_size=30)))


@FAST
@given(data=st.data(), body=st.binary(max_size=2048))
def test_arbitrary_bytes(data: st.DataObject, body: bytes) -> None:
    fmt = data.draw(formats)
    run_parser(fmt, body, data.draw(content_types(fmt)))


@FAST
@given(data=st.data(), text=st.text(max_size=1024))
def test_arbitrary_text(data: st.DataObject, text: str) -> None:
    fmt = data.draw(formats)
    for prefix in ("", "cdr="):
        run_parser(fmt, (prefix + text).encode("utf-8", "surrogatepass"), data.draw(content_types(fmt)))


# ------------------------------------------------------------------------- structurally plausible input

# naive wall-clock times, as PBXs write them (hypothesis bounds must be naive)
WALL_CLOCK_MIN = datetime(1900, 1, 1, tzinfo=UTC).replace(tzinfo=None)
NUMBERISH = st.sampled_from(
    ["", "601", "s", "anonymous", "07700900123", "+442079460123", "01632 960123", "907700900456", "9" * 30]
)
TIMEISH = st.one_of(
    st.sampled_from(["", "2025-03-30 01:30:00", "2025-10-26 01:30:00", "0", "1741097109", "2025-02-30 00:00:00"]),
    st.datetimes(min_value=WALL_CLOCK_MIN, max_value=WALL_CLOCK_MIN.replace(year=9999)).map(
        lambda d: d.strftime("%Y-%m-%d %H:%M:%S")
    ),
)
INTISH = st.one_of(st.integers(min_value=-5, max_value=2**70).map(str), st.sampled_from(["", "x", "1.5"]))
FIELD = st.one_of(NUMBERISH, TIMEISH, INTISH, st.text(max_size=20))


@FAST
@given(data=st.data())
def test_plausible_asterisk_lines(data: st.DataObject) -> None:
    rows = []
    for _ in range(data.draw(st.integers(1, 4))):
        count = data.draw(st.sampled_from([*PROFILES_BY_FIELD_COUNT, 15, 22]))
        rows.append([data.draw(FIELD) for _ in range(count)])
    out = io.StringIO()
    quoting = data.draw(st.sampled_from([csv.QUOTE_ALL, csv.QUOTE_MINIMAL, csv.QUOTE_NONNUMERIC]))
    writer = csv.writer(out, quoting=quoting, lineterminator=data.draw(st.sampled_from(["\n", "\r\n"])))
    for row in rows:
        writer.writerow(row)
    run_parser("asterisk-csv", out.getvalue().encode("utf-8", "surrogatepass"), "text/csv")


QUEUE_EVENTS = st.sampled_from(
    [
        "ENTERQUEUE",
        "RINGNOANSWER",
        "RINGCANCELED",
        "CONNECT",
        "COMPLETECALLER",
        "COMPLETEAGENT",
        "ABANDON",
        "EXITWITHKEY",
        "EXITWITHTIMEOUT",
        "EXITEMPTY",
        "BLINDTRANSFER",
        "ATTENDEDTRANSFER",
        "TRANSFER",
        "PAUSE",
        "AGENTLOGIN",
        "MY_EVENT",
        "",
    ]
)


@FAST
@given(data=st.data())
def test_plausible_queue_log_lines(data: st.DataObject) -> None:
    lines = []
    for _ in range(data.draw(st.integers(1, 5))):
        head = [data.draw(st.one_of(INTISH, TIMEISH)), data.draw(FIELD), data.draw(FIELD), data.draw(FIELD)]
        pieces = [data.draw(st.one_of(FIELD, st.just("LINK"), st.just("1741097425.22"))) for _ in range(6)]
        lines.append("|".join([*head, data.draw(QUEUE_EVENTS), *pieces[: data.draw(st.integers(0, 6))]]))
    run_parser("queue-log", "\n".join(lines).encode("utf-8", "surrogatepass"), "text/plain")
    form = {k: data.draw(FIELD) for k in ("time", "callid", "queuename", "agent", "event", "data", "data2")}
    form["event"] = data.draw(QUEUE_EVENTS)
    try:
        check_result(parse_queue_log_store(form, CTX))
    except IngestError:
        pass
    body = urlencode(form, encoding="utf-8", errors="surrogatepass").encode()
    run_parser("queue-log", body, "application/x-www-form-urlencoded")


FS_VARIABLES = [
    "uuid",
    "caller_id_number",
    "destination_number",
    "start_epoch",
    "answer_epoch",
    "end_epoch",
    "start_uepoch",
    "duration",
    "billsec",
    "hangup_cause",
    "hangup_cause_q850",
    "sip_hangup_disposition",
    "accountcode",
    "direction",
    "call_direction",
    "originating_leg_uuid",
    "channel_name",
    "last_arg",
]
FS_VALUE = st.one_of(FIELD, st.sampled_from(["NORMAL_CLEARING", "USER_BUSY", "recv_cancel", "%2B442079460123"]))


def encodings(document: str) -> list[tuple[bytes, str]]:
    raw = document.encode("utf-8", "surrogatepass")
    return [
        (raw, ""),
        (b"cdr=" + raw, "application/x-www-form-plaintext"),
        (b"cdr=" + quote(raw, safe="").encode(), "application/x-www-form-urlencoded"),
        (b"cdr=" + base64.b64encode(raw), "application/x-www-form-base64-encoded"),
    ]


@FAST
@given(data=st.data())
def test_plausible_freeswitch_json(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(FS_VARIABLES), unique=True))
    variables: dict[str, Any] = {name: data.draw(FS_VALUE) for name in names}
    doc: dict[str, Any] = {"core-uuid": data.draw(FIELD), "variables": variables}
    if data.draw(st.booleans()):
        profile = {"caller_id_number": data.draw(NUMBERISH), "destination_number": data.draw(NUMBERISH)}
        times = {"created_time": data.draw(INTISH), "hangup_time": data.draw(INTISH)}
        flow = {"caller_profile": profile, "times": times}
        doc["callflow"] = data.draw(st.sampled_from([flow, [flow, flow], [1, "x"], "nope"]))
    for body, content_type in encodings(json.dumps(doc)):
        run_parser("freeswitch-json", body, content_type)


@FAST
@given(data=st.data())
def test_plausible_freeswitch_xml(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(FS_VARIABLES), unique=True))
    xml_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)
    variables = "".join(f"<{n}>{escape(data.draw(st.one_of(FS_VALUE, xml_text)))}</{n}>" for n in names)
    profile = f"<caller_profile><caller_id_number>{escape(data.draw(NUMBERISH))}</caller_id_number></caller_profile>"
    document = (
        f'<?xml version="1.0"?><cdr core-uuid={quoteattr(data.draw(xml_text))}>'
        f"<variables>{variables}</variables><callflow>{profile}</callflow></cdr>"
    )
    for body, content_type in encodings(document):
        run_parser("freeswitch-xml", body, content_type)


CUCM_COLUMNS = [
    "cdrRecordType",
    "pkid",
    "dateTimeOrigination",
    "dateTimeConnect",
    "dateTimeDisconnect",
    "duration",
    "callingPartyNumber",
    "originalCalledPartyNumber",
    "finalCalledPartyNumber",
    "origCause_value",
    "destCause_value",
    "globalCallID_callId",
    "globalCallID_callManagerId",
    "comment",
]


@FAST
@given(data=st.data())
def test_plausible_cucm_files(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(CUCM_COLUMNS), min_size=1, unique=True))
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    writer.writerow(names)
    if data.draw(st.booleans()):
        out.write(",".join("INTEGER" for _ in names) + "\r\n")
    for _ in range(data.draw(st.integers(0, 4))):
        width = data.draw(st.sampled_from([len(names), len(names) + 1]))
        values = [data.draw(st.one_of(FIELD, st.sampled_from(["1", "2", "0", "17", "16"]))) for _ in range(width)]
        writer.writerow(values)
    run_parser("cucm", out.getvalue().encode("utf-8", "surrogatepass"), "text/csv")


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False), FIELD),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@FAST
@given(data=st.data())
def test_plausible_json_lines(data: st.DataObject) -> None:
    lines = []
    for _ in range(data.draw(st.integers(1, 4))):
        names = data.draw(st.lists(st.sampled_from(sorted(KNOWN_FIELDS)), unique=True))
        obj = {
            name: data.draw(st.one_of(JSON_VALUE, TIMEISH.map(lambda t: t.replace(" ", "T") + "Z"))) for name in names
        }
        if data.draw(st.booleans()):
            obj["id"] = data.draw(st.text(min_size=1, max_size=10))
            obj["start"] = "2025-03-04T14:05:09+01:00"
        lines.append(json.dumps(obj))
    run_parser("json", "\n".join(lines).encode("utf-8", "surrogatepass"), "application/x-ndjson")


# ------------------------------------------------------------------------------ scrubbing and times

DRAMA = st.one_of(
    st.integers(0, 999).map(lambda n: ("7700900", f"{n:03d}")),
    st.integers(0, 999).map(lambda n: ("207946", f"0{n:03d}")),
    st.integers(0, 999).map(lambda n: ("1632960", f"{n:03d}")),
)
WRITTEN = st.sampled_from(
    [
        "0{a}{b}",
        "+44{a}{b}",
        "0044{a}{b}",
        "44{a}{b}",
        "0{a} {b}",
        "+44 {a} {b}",
        "(0{a}) {b}",
        "0{a}-{b}",
        "sip:+44{a}{b}@host",
        "PJSIP/0{a}{b}@trunk",
        "ext0{a}{b}",
    ]
)
AROUND = st.text(alphabet="abcxyz /@:,;=#*", max_size=12)


@settings(max_examples=150, deadline=None)
@given(number=DRAMA, written=WRITTEN, before=AROUND, after=AROUND)
def test_scrub_never_leaves_a_drama_number(number: tuple[str, str], written: str, before: str, after: str) -> None:
    head, tail = number
    nsn = head + tail
    text = before + written.format(a=head, b=tail) + after
    scrubbed = scrub_text(text, CTX, MemorySubjectTokens())
    compact = re.sub(r"[\s\-.()]", "", scrubbed)
    for form in (f"0{nsn}", f"+44{nsn}", f"44{nsn}", nsn):
        assert form not in scrubbed
        assert form not in compact


@settings(max_examples=150, deadline=None)
@given(when=st.datetimes(min_value=WALL_CLOCK_MIN.replace(year=1971), max_value=WALL_CLOCK_MIN.replace(year=2100)))
def test_local_times_resolve_to_utc_deterministically(when: datetime) -> None:
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    parsed = parse_local_time(text, LONDON)
    assert parsed.tzinfo is UTC
    assert parsed == parse_local_time(text, LONDON)
    # never more than the one-hour DST shift away from reading the wall clock as UTC minus the offset
    back = parsed.astimezone(LONDON).replace(tzinfo=None)
    assert abs(back - when.replace(microsecond=0)) <= timedelta(hours=1)


def test_registry_lists_every_endpoint_format() -> None:
    assert set(PARSERS) == {"asterisk-csv", "freeswitch-json", "freeswitch-xml", "cucm", "json", "queue-log"}
    assert set(MEDIA_TYPES) == set(PARSERS)

"""The orjson read of mod_json_cdr posts gives exactly what json.loads gave, whatever the document holds.

``reference_parse`` is the parser as it was before orjson: json.loads, then every variable of the
document decoded and filtered. The fast path must agree with it on every body: the same RawCdr, the
same reject, or the same error message.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.context import ParseResult, PbxContext
from ingest.errors import IngestError
from ingest.formats import freeswitch
from ingest.formats.freeswitch import (
    JSON_FORMAT,
    JSON_MEDIA_TYPES,
    USED_VARIABLES,
    _one_cdr,
    _strip,
    parse_freeswitch_json,
    unwrap_body,
)
from ingest.normalise import require_media_type
from ingest.records import RawCdr
from tests.ingest import make_ctx, vector

CTX = make_ctx()
EXAMPLES = settings(
    max_examples=int(os.environ.get("INGEST_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def _profiles(doc: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    callflow = doc.get("callflow")
    flows = [callflow] if isinstance(callflow, dict) else callflow if isinstance(callflow, list) else []
    profiles: list[dict[str, str]] = []
    times: list[dict[str, str]] = []
    keys = (("caller_profile", profiles, freeswitch._PROFILE_KEYS), ("times", times, freeswitch._TIME_KEYS))
    for flow in flows:
        if not isinstance(flow, dict):
            continue
        for key, target, used in keys:
            section = flow.get(key)
            if isinstance(section, dict):
                target.append({k: t for k in used if (t := _text(section.get(k))) is not None})
    return profiles, times


def reference_parse(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """The JSON parser before the orjson fast path (json.loads, every variable decoded, then filtered)."""
    require_media_type(content_type, JSON_MEDIA_TYPES, JSON_FORMAT)
    document = unwrap_body(body)
    try:
        doc = json.loads(document)
    except (ValueError, RecursionError):
        if _strip(body).startswith(b"cdr=%"):
            raise IngestError("url-encoded") from None  # message compared loosely below
        raise IngestError("body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("variables"), dict):
        raise IngestError("JSON is not a FreeSWITCH CDR (no variables object)")
    variables = {
        k: freeswitch.unquote(t)
        for k, v in doc["variables"].items()
        if k in USED_VARIABLES and (t := _text(v)) is not None
    }
    profiles, times = _profiles(doc)
    core_uuid = _text(doc.get("core-uuid")) or ""
    return _one_cdr(JSON_FORMAT, core_uuid, variables, profiles, times, document, ctx)


def outcome(parse: Any, body: bytes) -> tuple[str, object]:
    try:
        result = parse(body, "application/json", CTX)
    except IngestError as exc:
        message = str(exc)
        return ("error", "url-encoded" if message.startswith("URL-encoded") else message)
    return ("parsed", (result.records, [(r.line, r.reason, r.raw) for r in result.rejects]))


def assert_same(body: bytes) -> None:
    assert outcome(parse_freeswitch_json, body) == outcome(reference_parse, body)


BASE: dict[str, Any] = json.loads(vector("freeswitch/a_leg.json"))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits orjson answers floats
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["0", "1741097109", "1741097109000000", "NORMAL_CLEARING", "%2B447700900123", "601", " "]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
variable_names = st.sampled_from([*sorted(USED_VARIABLES), "sip_from_user", "uuid", "x"])


@EXAMPLES
@given(
    changes=st.dictionaries(variable_names, json_values, max_size=8),
    profile=st.dictionaries(st.sampled_from([*freeswitch._PROFILE_KEYS, "ani"]), json_values, max_size=4),
    times=st.dictionaries(st.sampled_from([*freeswitch._TIME_KEYS, "bridged_time"]), json_values, max_size=3),
    core_uuid=json_values,
)
def test_fast_path_equals_json_loads_path(
    changes: dict[str, Any], profile: dict[str, Any], times: dict[str, Any], core_uuid: Any
) -> None:
    doc = json.loads(json.dumps(BASE))
    doc["variables"].update(changes)
    doc["core-uuid"] = core_uuid
    doc["callflow"] = [{"caller_profile": profile, "times": times}, *doc.get("callflow", [])]
    assert_same(json.dumps(doc).encode())
    assert_same(json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@EXAMPLES
@given(st.binary(max_size=64))
def test_fast_path_equals_json_loads_path_on_garbage(noise: bytes) -> None:
    assert_same(noise)
    assert_same(vector("freeswitch/a_leg.json")[:-1] + noise)


@pytest.mark.parametrize(
    "literal",
    [
        b"NaN",
        b"-Infinity",
        b"1e400",  # orjson refuses, json.loads reads inf
        b"123456789012345678901234567890",  # orjson reads a float, json.loads an int
        b"-9223372036854775809",
        b"1.10",
        b"-0.0",
        b'"\\ud800"',  # a lone surrogate: only json.loads takes it
        b'"a\\u0000b"',
        b'"\xed\xa0\x80"',  # an encoded surrogate (json.loads decodes with surrogatepass)
    ],
)
@pytest.mark.parametrize("field", ["duration", "uuid", "caller_id_number", "core-uuid", "created_time"])
def test_numbers_and_strings_orjson_reads_differently(literal: bytes, field: str) -> None:
    doc = json.dumps(BASE).encode()
    if field == "core-uuid":
        body = doc.replace(b'"core-uuid": ', b'"core-uuid": ' + literal + b', "was": ', 1)
    elif field == "created_time":
        body = doc.replace(b'"created_time": ', b'"created_time": ' + literal + b', "was": ', 1)
    else:
        body = doc.replace(b'"variables": {', b'"variables": {"%s": %s, ' % (field.encode(), literal), 1)
    assert body != doc
    assert_same(body)


@pytest.mark.parametrize("depth", [10, 399, 400, 980, 1030, 5000])
def test_deep_documents_are_judged_by_json_loads(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    body = json.dumps(BASE).encode().replace(b'"variables": {', b'"deep": %s, "variables": {' % nested, 1)
    assert_same(body)


def test_duplicate_keys_keep_the_last_value() -> None:
    body = json.dumps(BASE).encode().replace(b'"variables": {', b'"variables": {"duration": "7", ', 1)
    assert_same(body)
    (record,) = parse_freeswitch_json(body, "application/json", CTX).records
    assert record.duration_s == 151  # the document's own, later "duration" wins, as with json.loads


@EXAMPLES
@given(st.text(alphabet="%2bB4Fe0 +é\u00ff/:@x", max_size=20))
def test_unquote_is_urllib_unquote_cached_or_not(text: str) -> None:
    assert freeswitch._unquote(text) == freeswitch.unquote(text)
    assert freeswitch._unquote(text) == freeswitch.unquote(text)  # from the cache


def test_unquote_cache_is_bounded() -> None:
    for n in range(freeswitch._UNQUOTED_MAX + 10):
        assert freeswitch._unquote(f"%41{n}") == f"A{n}"
    assert len(freeswitch._UNQUOTED) <= freeswitch._UNQUOTED_MAX
    assert freeswitch._unquote("x" * 200 + "%41") == "x" * 200 + "A"
    assert "x" * 200 + "%41" not in freeswitch._UNQUOTED

"""FreeSWITCH ``mod_json_cdr`` / ``mod_xml_cdr`` posts -> ``RawCdr`` (one call leg per body).

Body encodings (module setting ``encode``), recognised by the body's shape, not only its Content-Type:

    ==================  =============================================  ==================================
    encode              JSON body                                      XML body
    ==================  =============================================  ==================================
    unset / false       raw JSON (application/json)                    ``cdr=<raw XML>`` (x-www-form-plaintext)
    true                ``cdr=<url-encoded JSON>`` (form-urlencoded)   ``cdr=<url-encoded XML>``
    base64              ``cdr=<base64>`` (x-www-form-base64-encoded)   ``cdr=<base64>``
    textxml             --                                             raw XML (text/xml)
    ==================  =============================================  ==================================

The raw ``cdr=<XML>`` variant is *not* a valid form (the XML holds ``&`` and ``=``), so everything after
``cdr=`` is taken as is. Variable values are URL-encoded by default (``encode-values``) and are decoded
with ``urllib.parse.unquote`` (FreeSWITCH escapes ``+`` and space, so a literal ``+`` is never a space).
Known limitation of FreeSWITCH itself: mod_json_cdr's ``encode=true`` leaves ``%XX`` sequences that
``encode-values`` already produced as they are, so a value containing a quote (``%22``, e.g.
``sip_full_from``) cannot be told from the document's own quotes; such posts are refused with a message
saying to use raw JSON or base64. mod_xml_cdr double-encodes and has no such problem.

Fields: ``variables.uuid``; caller from ``variables.caller_id_number`` else the first (originating)
caller profile; callee from ``variables.destination_number`` else the latest caller profile (after
transfers); ``start_epoch`` / ``answer_epoch`` / ``end_epoch`` (UTC; 0 or missing = unset; falls back
to ``*_uepoch`` and the callflow times); ``duration``, ``billsec``; ``hangup_cause`` (name) ->
cause code and disposition, an unanswered leg with ``sip_hangup_disposition`` ``send_cancel`` /
``recv_cancel`` is CANCEL; ``originating_leg_uuid`` (B legs) else the leg's own uuid -> ``linked_id``.

Direction: FreeSWITCH's ``direction`` variable is the leg's direction relative to the switch (every A
leg is "inbound", even an extension calling out), so it is kept in ``extra`` as ``channel_direction``
and not used. ``call_direction`` (FusionPBX and many dialplans) is used when present, else the parties.

Dedupe key: ``dedupe_key(pbx, core-uuid, uuid)``: the same leg posted again (FreeSWITCH retries and
fails over, delivery is at least once), or posted by both modules, gets the same key.

XML is parsed with expat directly into an ElementTree, with DTD, entity and external-entity handlers
that refuse the document: no entity expansion (billion laughs), no external fetches.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, unquote_to_bytes
from xml.parsers import expat

import orjson

from ingest.context import ParseResult, PbxContext
from ingest.errors import RecordRejected, Reject, UnparseableBodyError
from ingest.normalise import (
    cause_from_name,
    dedupe_key,
    direction_from_text,
    disposition_from_cause,
    epoch_to_utc,
    epoch_us_to_utc,
    infer_direction,
    parse_count,
    parse_party,
    require_media_type,
)
from ingest.records import Disposition, RawCdr

JSON_FORMAT = "freeswitch-json"
XML_FORMAT = "freeswitch-xml"

_FORM_TYPES = frozenset(
    {
        "application/x-www-form-urlencoded",
        "application/x-www-form-plaintext",
        "application/x-www-form-base64-encoded",
        "text/plain",
        "",
    }
)
JSON_MEDIA_TYPES = _FORM_TYPES | {"application/json", "text/json"}
XML_MEDIA_TYPES = _FORM_TYPES | {"text/xml", "application/xml"}

# Variables kept (scrubbed by policy) in ``extra``: outcome details and links between legs.
_EXTRA_VARIABLES: dict[str, str] = {
    "hangup_cause": "hangup_cause",
    "sip_hangup_disposition": "sip_hangup_disposition",
    "proto_specific_hangup_cause": "proto_specific_hangup_cause",
    "sip_term_status": "sip_term_status",
    "endpoint_disposition": "endpoint_disposition",
    "direction": "channel_direction",
    "bridge_uuid": "bridge_uuid",
    "last_bridge_to": "last_bridge_to",
    "read_codec": "read_codec",
    "write_codec": "write_codec",
    "cc_queue": "cc_queue",
    "cc_side": "cc_side",
}
# What build_cdr reads; JSON documents are decoded for these names only (a CDR has ~150 variables).
USED_VARIABLES = frozenset(
    {
        *(f"{name}_{unit}" for name in ("start", "answer", "end") for unit in ("epoch", "uepoch")),
        *("uuid", "duration", "billsec", "hangup_cause", "hangup_cause_q850", "sip_hangup_disposition"),
        *("caller_id_number", "destination_number", "call_direction", "originating_leg_uuid", "accountcode"),
        *("context", "channel_name", "bridge_channel", "last_bridge_channel", "last_app", "current_application"),
        *("last_arg", "current_application_data"),
        *_EXTRA_VARIABLES,
    }
)
_USED_VARIABLE_NAMES = tuple(sorted(USED_VARIABLES))
_PROFILE_KEYS = ("uuid", "caller_id_number", "destination_number", "context")
_TIME_KEYS = ("created_time", "answered_time", "hangup_time")
_DOCTYPE_OR_ENTITY = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_CANCEL_DISPOSITIONS = frozenset({"send_cancel", "recv_cancel"})


def _unparseable(message: str) -> NoReturn:
    raise UnparseableBodyError(message)


def _strip(data: bytes) -> bytes:
    data = data.strip()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:].lstrip()
    return data


def _decode_cdr_value(value: bytes, *, url_decoded: bool) -> bytes:
    value = _strip(value)
    if value[:1] in (b"{", b"<", b"["):
        return value  # the plaintext variant: the document itself follows ``cdr=``
    if not url_decoded and value[:1] == b"%":
        return _strip(unquote_to_bytes(value.replace(b"+", b" ")))
    for candidate in (value, unquote_to_bytes(value)):
        compact = re.sub(rb"\s+", b"", candidate)
        try:
            return _strip(base64.b64decode(compact, validate=True))
        except (binascii.Error, ValueError):
            continue
    _unparseable("the cdr field is neither a document, URL-encoded nor base64")


def unwrap_body(body: bytes) -> bytes:
    """The CDR document inside a FreeSWITCH post, whichever ``encode`` setting produced it."""
    data = _strip(body)
    if not data:
        _unparseable("empty body")
    if data[:1] in (b"{", b"<", b"["):
        return data
    if data.startswith(b"cdr="):
        return _decode_cdr_value(data[4:], url_decoded=False)
    try:
        form = parse_qs(data.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        _unparseable("body is not a FreeSWITCH CDR post")
    values = form.get("cdr")
    if not values:
        _unparseable("body has no cdr field")
    try:
        return _decode_cdr_value(values[0].encode("utf-8"), url_decoded=True)
    except UnicodeEncodeError:
        _unparseable("the cdr field is not text")


# ------------------------------------------------------------------------------------------------ JSON


def _json_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


class _InexactNumberError(Exception):
    """orjson read a number that a field uses as a float: json.loads must read the document instead."""


def _json_field(value: Any, exact: bool) -> str | None:
    """``_json_text`` of a value read by orjson (``exact=False``) or json.loads (``exact=True``).

    orjson turns integers beyond 64 bits into floats and its floats may print differently, so a float
    from orjson is never used: the document is read again with json.loads.
    """
    if not exact and isinstance(value, float):
        raise _InexactNumberError
    return _json_text(value)


def _json_section(section: dict[str, Any], keys: tuple[str, ...], exact: bool) -> dict[str, str]:
    picked: dict[str, str] = {}
    for key in keys:
        value = section.get(key)
        if value.__class__ is str:
            picked[key] = value
        elif (text := _json_field(value, exact)) is not None:
            picked[key] = text
    return picked


def _json_profiles(doc: Mapping[str, Any], exact: bool = True) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    callflow = doc.get("callflow")
    flows = [callflow] if isinstance(callflow, dict) else callflow if isinstance(callflow, list) else []
    profiles: list[dict[str, str]] = []
    times: list[dict[str, str]] = []
    for flow in flows:
        if not isinstance(flow, dict):
            continue
        if isinstance(section := flow.get("caller_profile"), dict):
            profiles.append(_json_section(section, _PROFILE_KEYS, exact))
        if isinstance(section := flow.get("times"), dict):
            times.append(_json_section(section, _TIME_KEYS, exact))
    return profiles, times


# Decoded variable values (pure function of the text): channel names, dial strings and caller numbers
# repeat across a PBX's CDRs. Bounded: emptied when full; at most this many values of at most 128 chars.
_UNQUOTED: dict[str, str] = {}
_UNQUOTED_MAX = 16_384
_UNQUOTE_CACHE_MAX_TEXT = 128


def _unquote(text: str) -> str:
    """``urllib.parse.unquote``, without its per-run work for the usual ASCII values (same result)."""
    if "%" not in text:
        return text
    decoded = _UNQUOTED.get(text)
    if decoded is not None:
        return decoded
    if text.isascii():  # one ASCII run: what unquote does to it, in one call
        decoded = unquote_to_bytes(text).decode("utf-8", "replace")
    else:
        decoded = unquote(text)
    if len(text) <= _UNQUOTE_CACHE_MAX_TEXT:
        if len(_UNQUOTED) >= _UNQUOTED_MAX:
            _UNQUOTED.clear()
        _UNQUOTED[text] = decoded
    return decoded


def _json_variables(source: dict[str, Any], exact: bool) -> dict[str, str]:
    """The used variables, decoded (``encode-values``); JSON null, booleans, arrays and objects are left out."""
    variables: dict[str, str] = {}
    for name in _USED_VARIABLE_NAMES:  # ~40 lookups: a real CDR has ~150 variables
        value = source.get(name)
        if value.__class__ is str:
            variables[name] = value if "%" not in value else _unquote(value)
        elif value is not None and (text := _json_field(value, exact)) is not None:
            variables[name] = _unquote(text)
    return variables


# With fewer brackets than this a document nests too shallowly for json.loads to hit the recursion limit
# (orjson stops at 1024 levels): then orjson and json.loads accept and refuse exactly the same documents.
_ORJSON_MAX_BRACKETS = 400
_NOT_DECODED = object()


def _orjson_document(document: bytes) -> Any:
    """The document read by orjson, or ``_NOT_DECODED`` when json.loads must judge it.

    orjson refuses some documents json.loads accepts (NaN, numbers out of float range, lone surrogates,
    UTF-16/32); json.loads then reads them as before.
    """
    if document.count(b"{") + document.count(b"[") >= _ORJSON_MAX_BRACKETS:
        return _NOT_DECODED
    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError:
        return _NOT_DECODED


def _json_document(body: bytes, document: bytes) -> Any:
    try:
        return json.loads(document)
    except (ValueError, RecursionError):
        if _strip(body).startswith(b"cdr=%"):
            _unparseable(
                "URL-encoded JSON does not parse: with encode=true FreeSWITCH does not re-escape values "
                "already URL-encoded by encode-values, so a quote inside a value breaks the document; "
                "set encode to false (raw JSON) or base64"
            )
        _unparseable("body is not JSON")


def _json_cdr(doc: Any, document: bytes, ctx: PbxContext, *, exact: bool) -> ParseResult[RawCdr]:
    if not isinstance(doc, dict) or not isinstance(variables := doc.get("variables"), dict):
        _unparseable("JSON is not a FreeSWITCH CDR (no variables object)")
    decoded = _json_variables(variables, exact)
    profiles, times = _json_profiles(doc, exact)
    core_uuid = _json_field(doc.get("core-uuid"), exact) or ""
    return _one_cdr(JSON_FORMAT, core_uuid, decoded, profiles, times, document, ctx)


def parse_freeswitch_json(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """Parse one mod_json_cdr post (raw, url-encoded or base64) into a RawCdr or a reject.

    The document is read with orjson; whatever orjson could read differently from json.loads (numbers
    as floats, documents it refuses) is read with json.loads, so the result is always json.loads's.
    """
    require_media_type(content_type, JSON_MEDIA_TYPES, JSON_FORMAT)
    document = unwrap_body(body)
    doc = _orjson_document(document)
    if doc is not _NOT_DECODED:
        try:
            return _json_cdr(doc, document, ctx, exact=False)
        except _InexactNumberError:
            pass
    return _json_cdr(_json_document(body, document), document, ctx, exact=True)


# ------------------------------------------------------------------------------------------------- XML


class _RefusedXmlError(Exception):
    """Raised from expat handlers when the document declares a DTD or entities."""


def _refuse(*_args: object) -> NoReturn:
    raise _RefusedXmlError


def parse_xml_safely(document: bytes) -> ET.Element:
    """Parse XML with expat, refusing DTDs and entity declarations; raise UnparseableBodyError if bad."""
    if _DOCTYPE_OR_ENTITY.search(document):
        _unparseable("XML with a DTD or entity declarations is refused")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(document, True)
        return builder.close()
    except _RefusedXmlError:
        _unparseable("XML with a DTD or entity declarations is refused")
    except (expat.ExpatError, ValueError, AssertionError, RecursionError):
        _unparseable("body is not well-formed XML")


def _children_text(element: ET.Element | None) -> dict[str, str]:
    if element is None:
        return {}
    return {child.tag: child.text or "" for child in element}


def parse_freeswitch_xml(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """Parse one mod_xml_cdr post (cdr=raw, url-encoded, base64 or text/xml) into a RawCdr or a reject."""
    require_media_type(content_type, XML_MEDIA_TYPES, XML_FORMAT)
    document = unwrap_body(body)
    root = parse_xml_safely(document)
    if root.tag != "cdr" or root.find("variables") is None:
        _unparseable("XML is not a FreeSWITCH CDR (no <cdr><variables>)")
    variables = {tag: unquote(text) for tag, text in _children_text(root.find("variables")).items()}
    profiles: list[dict[str, str]] = []
    times: list[dict[str, str]] = []
    for flow in root.findall("callflow"):
        if (profile := flow.find("caller_profile")) is not None:
            profiles.append(_children_text(profile))
        if (flow_times := flow.find("times")) is not None:
            times.append(_children_text(flow_times))
    core_uuid = root.get("core-uuid") or ""
    return _one_cdr(XML_FORMAT, core_uuid, variables, profiles, times, document, ctx)


# --------------------------------------------------------------------------------------- shared fields


def _one_cdr(
    fmt: str,
    core_uuid: str,
    variables: Mapping[str, str],
    profiles: list[dict[str, str]],
    times: list[dict[str, str]],
    document: bytes,
    ctx: PbxContext,
) -> ParseResult[RawCdr]:
    result: ParseResult[RawCdr] = ParseResult()
    try:
        result.records.append(build_cdr(fmt, core_uuid, variables, profiles, times, ctx))
    except RecordRejected as exc:
        result.rejects.append(Reject(None, exc.reason, document))
    return result


_TIME_VARIABLES = {name: (f"{name}_epoch", f"{name}_uepoch") for name in ("start", "answer", "end")}


def _time(variables: Mapping[str, str], times: list[dict[str, str]], name: str, flow_key: str) -> datetime | None:
    seconds_name, micros_name = _TIME_VARIABLES[name]
    try:
        if (value := variables.get(seconds_name, "").strip()) and value != "0":
            return epoch_to_utc(value)
        if (value := variables.get(micros_name, "").strip()) and value != "0":
            return epoch_us_to_utc(value)
        # fall back to the callflow times of the originating (last) caller profile, in microseconds
        if times and (value := times[-1].get(flow_key, "").strip()) and value != "0":
            return epoch_us_to_utc(value)
    except ValueError:
        raise RecordRejected(f"{name}_epoch: not a valid epoch") from None
    return None


def _seconds(value: str | None, name: str, first: datetime | None, last: datetime | None) -> int:
    if value is not None and value.strip():
        return parse_count(value, name)
    if first is None or last is None or last < first:
        return 0
    return int((last - first).total_seconds())


def build_cdr(
    fmt: str,
    core_uuid: str,
    variables: Mapping[str, str],
    profiles: list[dict[str, str]],
    times: list[dict[str, str]],
    ctx: PbxContext,
) -> RawCdr:
    """Build the RawCdr of one FreeSWITCH leg from its decoded variables and caller profiles."""
    first_profile = profiles[-1] if profiles else {}
    latest_profile = profiles[0] if profiles else {}
    uuid = (variables.get("uuid") or first_profile.get("uuid") or "").strip()
    if not uuid:
        raise RecordRejected("variables.uuid: missing")
    start_at = _time(variables, times, "start", "created_time")
    if start_at is None:
        raise RecordRejected("start_epoch: missing")
    answer_at = _time(variables, times, "answer", "answered_time")
    end_at = _time(variables, times, "end", "hangup_time")
    duration_s = _seconds(variables.get("duration"), "duration", start_at, end_at)
    billsec_s = _seconds(variables.get("billsec"), "billsec", answer_at, end_at)

    cause_name = variables.get("hangup_cause")
    cause = cause_from_name(cause_name)
    if cause is None:
        cause = cause_from_name(variables.get("hangup_cause_q850"))
    answered = answer_at is not None
    if not answered and variables.get("sip_hangup_disposition", "").strip() in _CANCEL_DISPOSITIONS:
        disposition = Disposition.CANCEL
    else:
        disposition = disposition_from_cause(cause, answered=answered)

    caller = parse_party(variables.get("caller_id_number") or first_profile.get("caller_id_number"), ctx)
    callee = parse_party(variables.get("destination_number") or latest_profile.get("destination_number"), ctx)
    direction = direction_from_text(variables.get("call_direction")) or infer_direction(caller, callee)

    def text(*names: str) -> str | None:
        for name in names:
            if value := variables.get(name, "").strip():
                return value
        return None

    extra = {
        target: value for source, target in _EXTRA_VARIABLES.items() if (value := variables.get(source, "").strip())
    }
    return RawCdr(
        source_format=fmt,
        dedupe_key=dedupe_key(ctx.name, core_uuid, uuid),
        call_id=uuid,
        linked_id=text("originating_leg_uuid") or uuid,
        sequence=None,
        start_at=start_at,
        answer_at=answer_at,
        end_at=end_at,
        duration_s=duration_s,
        billsec_s=billsec_s,
        disposition=disposition,
        hangup_cause=cause,
        direction=direction,
        caller=caller,
        callee=callee,
        account_code=text("accountcode"),
        context=(latest_profile.get("context") or "").strip() or text("context"),
        src_channel=text("channel_name"),
        dst_channel=text("bridge_channel", "last_bridge_channel"),
        last_app=text("last_app", "current_application"),
        last_data=text("last_arg", "current_application_data"),
        extra=extra,
    )

"""Asterisk ``queue_log`` (ACD events) -> ``RawAcdEvent``.

File lines: ``epoch|callid|queuename|agent|event|data1|data2|...``. The first five fields are parsed
strictly (epoch = UTC seconds, event non-empty); everything after is the data list, kept piece by
piece exactly as sent (free text may itself contain ``|``). Event names are upper-cased; unknown and
custom events are KEPT, never rejected. Typed fields are read from the data per event (missing or
non-numeric values leave the typed field None; the data list still has them):

    ENTERQUEUE                          url, caller number -> caller, position -> position and
                                        original_position (the caller's name, if any, stays in data
                                        only and is redacted by policy)
    RINGNOANSWER / RINGCANCELED         ring time (ms) -> ring_ms
    CONNECT                             hold -> hold_s, agent channel uniqueid -> agent_call_id,
                                        ring seconds -> ring_ms (x 1000)
    COMPLETECALLER / COMPLETEAGENT      hold, talk, original position
    ABANDON / EXITWITHTIMEOUT / EXITEMPTY   position, original position, wait
    EXITWITHKEY                         key, position, original position, wait
    BLINDTRANSFER / TRANSFER            extension, context, hold, talk, original position
    ATTENDEDTRANSFER                    BRIDGE|APP <1 field> or LINK <2 fields>, hold, talk, orig. position

Agent ``NONE`` or empty -> None. Dedupe key: ``dedupe_key(pbx, raw line bytes)``.

``res_config_curl`` realtime store posts (``parse_queue_log_store``): form fields ``time``
(``YYYY-MM-DD HH:MM:SS[.ffffff]`` in the PBX's zone, or epoch seconds), ``callid``, ``queuename``,
``agent``, ``event``, and ``data`` (pipe-joined) or ``data1``..``data5`` (trailing empty ones
dropped). Dedupe key: ``dedupe_key(pbx, "store", time, callid, queuename, agent, event, data)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from urllib.parse import parse_qsl

from ingest.context import ParseResult, PbxContext
from ingest.errors import RecordRejected, Reject, UnparseableBodyError
from ingest.normalise import (
    NONE_PARTY,
    decode_line,
    dedupe_key,
    epoch_to_utc,
    optional_count,
    parse_local_time,
    parse_party,
    require_media_type,
    split_lines,
)
from ingest.records import RawAcdEvent

FORMAT = "queue-log"

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
ACCEPTED_MEDIA_TYPES = frozenset({"", "text/plain", "application/octet-stream", FORM_MEDIA_TYPE})
_STORE_FIELDS = ("time", "callid", "queuename", "agent", "event")


def parse_queue_log(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawAcdEvent]:
    """Parse queue_log lines, or a res_config_curl store form when sent form-urlencoded."""
    kind = require_media_type(content_type, ACCEPTED_MEDIA_TYPES, FORMAT)
    if kind == FORM_MEDIA_TYPE:
        return parse_queue_log_store(decode_form(body), ctx)
    result: ParseResult[RawAcdEvent] = ParseResult()
    for line_number, raw in split_lines(body):
        try:
            result.records.append(parse_line(raw, ctx))
        except RecordRejected as exc:
            result.rejects.append(Reject(line_number, exc.reason, raw))
    return result


def decode_form(body: bytes) -> dict[str, str]:
    """Decode an ``application/x-www-form-urlencoded`` body (UTF-8); the last value of a name wins."""
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise UnparseableBodyError("body is not a URL-encoded UTF-8 form") from None
    return dict(pairs)


def parse_line(raw: bytes, ctx: PbxContext) -> RawAcdEvent:
    """Parse one queue_log line (without its line break) or raise RecordRejected."""
    text = decode_line(raw)
    pieces = text.split("|")
    if len(pieces) < 5:
        raise RecordRejected(f"expected at least 5 '|'-separated fields, got {len(pieces)}")
    epoch, callid, queue, agent, event = pieces[:5]
    try:
        event_at = epoch_to_utc(epoch)
    except ValueError:
        raise RecordRejected("epoch: not epoch seconds") from None
    if event_at is None:
        raise RecordRejected("epoch: zero")
    return build_event(event_at, callid, queue, agent, event, pieces[5:], dedupe_key(ctx.name, raw), ctx)


def parse_queue_log_store(form: Mapping[str, str], ctx: PbxContext) -> ParseResult[RawAcdEvent]:
    """Parse one res_config_curl ``/store`` form of a realtime queue_log row into a RawAcdEvent."""
    if not any(name in form for name in ("time", "event", "queuename", "callid")):
        raise UnparseableBodyError("form is not a queue_log store (no time/event/queuename/callid)")
    result: ParseResult[RawAcdEvent] = ParseResult()
    fields = {name: form.get(name, "") for name in _STORE_FIELDS}
    if "data" in form:
        data = form["data"].split("|")
    else:
        numbered = [form.get(f"data{i}", "") for i in range(1, 6)]
        while numbered and not numbered[-1]:
            numbered.pop()
        data = "|".join(numbered).split("|") if numbered else []
    raw = "&".join(f"{k}={v}" for k, v in [*fields.items(), ("data", "|".join(data))]).encode()
    try:
        event_at = _store_time(fields["time"], ctx)
        key = dedupe_key(ctx.name, "store", *fields.values(), "|".join(data))
        result.records.append(
            build_event(
                event_at, fields["callid"], fields["queuename"], fields["agent"], fields["event"], data, key, ctx
            )
        )
    except RecordRejected as exc:
        result.rejects.append(Reject(None, exc.reason, raw))
    return result


def _store_time(text: str, ctx: PbxContext) -> datetime:
    value = text.strip()
    if not value:
        raise RecordRejected("time: missing")
    try:
        at = epoch_to_utc(value) if value.replace(".", "", 1).isdigit() else parse_local_time(value, ctx.timezone)
    except ValueError:
        raise RecordRejected("time: not a valid time") from None
    if at is None:
        raise RecordRejected("time: zero")
    return at


def _at(data: Sequence[str], index: int) -> str | None:
    return data[index] if 0 <= index < len(data) else None


def _count(data: Sequence[str], index: int) -> int | None:
    return optional_count(_at(data, index))


def build_event(
    event_at: datetime,
    callid: str,
    queue: str,
    agent: str,
    event: str,
    data: Sequence[str],
    key: str,
    ctx: PbxContext,
) -> RawAcdEvent:
    """Build a RawAcdEvent with the typed fields of its event read from ``data``."""
    name = event.strip().upper()
    if not name:
        raise RecordRejected("event: missing")
    agent_name = agent.strip()
    caller = NONE_PARTY
    position = original_position = wait_s = hold_s = talk_s = ring_ms = None
    agent_call_id: str | None = None

    if name == "ENTERQUEUE":
        caller = parse_party(_at(data, 1), ctx)
        position = original_position = _count(data, 2)
    elif name in ("RINGNOANSWER", "RINGCANCELED"):
        ring_ms = optional_count(_at(data, 0), maximum=2**53)
    elif name == "CONNECT":
        hold_s = _count(data, 0)
        agent_call_id = (_at(data, 1) or "").strip() or None
        ring_s = _count(data, 2)
        ring_ms = ring_s * 1000 if ring_s is not None else None
    elif name in ("COMPLETECALLER", "COMPLETEAGENT"):
        hold_s, talk_s, original_position = _count(data, 0), _count(data, 1), _count(data, 2)
    elif name in ("ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY"):
        position, original_position, wait_s = _count(data, 0), _count(data, 1), _count(data, 2)
    elif name == "EXITWITHKEY":
        position, original_position, wait_s = _count(data, 1), _count(data, 2), _count(data, 3)
    elif name in ("BLINDTRANSFER", "TRANSFER"):
        hold_s, talk_s, original_position = _count(data, 2), _count(data, 3), _count(data, 4)
    elif name == "ATTENDEDTRANSFER":
        skip = 3 if (_at(data, 0) or "").strip().upper() == "LINK" else 2
        hold_s, talk_s, original_position = _count(data, skip), _count(data, skip + 1), _count(data, skip + 2)

    return RawAcdEvent(
        source_format=FORMAT,
        dedupe_key=key,
        event_at=event_at,
        call_id=callid.strip(),
        queue=queue.strip(),
        agent=None if agent_name.upper() in ("", "NONE") else agent_name,
        event=name,
        caller=caller,
        position=position,
        original_position=original_position,
        wait_s=wait_s,
        hold_s=hold_s,
        talk_s=talk_s,
        ring_ms=ring_ms,
        agent_call_id=agent_call_id,
        data=tuple(data),
    )

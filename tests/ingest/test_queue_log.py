"""Asterisk queue_log lines and res_config_curl realtime store posts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.errors import UnparseableBodyError, UnsupportedMediaTypeError
from ingest.formats.queue_log import parse_queue_log, parse_queue_log_store
from ingest.normalise import dedupe_key, split_lines
from ingest.records import Party, PartyKind, RawAcdEvent
from tests.ingest import make_ctx, vector

CTX = make_ctx()
FORM = "application/x-www-form-urlencoded"


def events() -> dict[str, list[RawAcdEvent]]:
    by_event: dict[str, list[RawAcdEvent]] = {}
    for record in parse_queue_log(vector("queue_log/queue_log"), "text/plain", CTX).records:
        by_event.setdefault(record.event, []).append(record)
    return by_event


def test_vector_file_records_and_rejects() -> None:
    body = vector("queue_log/queue_log")
    result = parse_queue_log(body, "text/plain", CTX)
    assert len(result.records) == 15
    assert [(r.line, r.reason) for r in result.rejects] == [
        (16, "expected at least 5 '|'-separated fields, got 1"),
        (18, "epoch: not epoch seconds"),
        (19, "event: missing"),
    ]
    lines = dict(split_lines(body))
    first = result.records[0]
    assert first.source_format == "queue-log"
    assert first.dedupe_key == dedupe_key(CTX.name, lines[1])
    assert first.event == "QUEUESTART"
    assert first.data == ("",)  # an event without data still ends in '|'
    assert first.agent is None
    assert first.call_id == "NONE"


def test_enterqueue() -> None:
    plain, with_name = events()["ENTERQUEUE"]
    assert plain.event_at == datetime(2025, 3, 4, 14, 10, 10, tzinfo=UTC)
    assert plain.call_id == "1741097410.21"
    assert plain.queue == "support"
    assert plain.agent is None
    assert plain.caller == Party(PartyKind.SUBJECT, "+447700900321")
    assert (plain.position, plain.original_position) == (1, 1)
    assert with_name.caller == Party(PartyKind.SUBJECT, "+442079460555")
    assert with_name.data == ("", "02079460555", "2", "Jane Roe")  # the name is redacted by policy


def test_ring_connect_complete_abandon() -> None:
    by_event = events()
    (ring,) = by_event["RINGNOANSWER"]
    assert ring.ring_ms == 15000
    assert ring.agent == "PJSIP/602"
    (connect,) = by_event["CONNECT"]
    assert connect.hold_s == 21
    assert connect.agent_call_id == "1741097425.22"
    assert connect.ring_ms == 6000  # ring seconds, kept in ms
    (complete,) = by_event["COMPLETECALLER"]
    assert (complete.hold_s, complete.talk_s, complete.original_position) == (21, 120, 1)
    (abandon,) = by_event["ABANDON"]
    assert (abandon.position, abandon.original_position, abandon.wait_s) == (1, 2, 45)
    (timeout,) = by_event["EXITWITHTIMEOUT"]
    assert (timeout.position, timeout.original_position, timeout.wait_s) == (2, 2, 300)
    assert timeout.agent == "Local/07700900888@from-queue/n"  # scrubbed by policy
    (key,) = by_event["EXITWITHKEY"]
    assert (key.position, key.original_position, key.wait_s) == (3, 3, 12)


def test_transfers() -> None:
    by_event = events()
    (blind,) = by_event["BLINDTRANSFER"]
    assert (blind.hold_s, blind.talk_s, blind.original_position) == (5, 60, 1)
    link, bridge = by_event["ATTENDEDTRANSFER"]
    assert (link.hold_s, link.talk_s, link.original_position) == (4, 33, 2)
    assert (bridge.hold_s, bridge.talk_s, bridge.original_position) == (3, 40, 1)


def test_free_text_with_pipes_and_unknown_events_are_kept() -> None:
    by_event = events()
    (pause,) = by_event["PAUSE"]
    assert pause.data == ("Lunch", "back at 2", "pm")
    assert pause.agent == "PJSIP/603"
    (custom,) = by_event["MYCUSTOM_SURVEY"]
    assert custom.data == ("score=5", "call me on 07700 900654")
    assert custom.agent == "Agent Smith"
    assert custom.caller == Party(PartyKind.NONE, None)


def test_known_event_with_odd_data_is_kept_with_empty_typed_fields() -> None:
    body = b"1741097431|1.2|q|PJSIP/601|CONNECT|soon\n1741097431|1.2|q|PJSIP/601|connect|99999999999|x|"
    first, second = parse_queue_log(body, "", CTX).records
    assert first.hold_s is None
    assert first.agent_call_id is None
    assert second.event == "CONNECT"
    assert second.hold_s is None  # over int32: not a hold time
    assert second.agent_call_id == "x"


def test_store_form_with_pipe_joined_data() -> None:
    (record,) = parse_queue_log(vector("queue_log/store_data.form"), FORM, CTX).records
    # 14:10:10.123456 London time in March is GMT
    assert record.event_at == datetime(2025, 3, 4, 14, 10, 10, 123456, tzinfo=UTC)
    assert record.event == "ENTERQUEUE"
    assert record.caller == Party(PartyKind.SUBJECT, "+447700900321")
    assert record.position == 1
    assert record.data == ("", "07700900321", "1")


def test_store_form_with_numbered_data() -> None:
    (record,) = parse_queue_log(vector("queue_log/store_data_numbered.form"), FORM, CTX).records
    assert record.event_at == datetime(2025, 7, 1, 8, 0, 5, tzinfo=UTC)  # 09:00:05 BST
    assert record.agent == "PJSIP/601"
    assert record.hold_s == 4
    assert record.agent_call_id == "1751356801.78"
    assert record.ring_ms == 3000
    assert record.data == ("4", "1751356801.78", "3")  # trailing empty data4/data5 dropped


def test_store_mapping_api_and_its_rejects() -> None:
    form = {"time": "2025-03-04 14:10:10", "callid": "1.2", "queuename": "q", "agent": "NONE", "event": "ABANDON"}
    (record,) = parse_queue_log_store({**form, "data": "3|3|60"}, CTX).records
    assert (record.position, record.wait_s) == (3, 60)
    again = parse_queue_log_store({**form, "data": "3|3|60"}, CTX).records[0]
    assert again.dedupe_key == record.dedupe_key
    (reject,) = parse_queue_log_store({**form, "time": "soon"}, CTX).rejects
    assert reject.reason == "time: not a valid time"
    assert reject.line is None
    (reject,) = parse_queue_log_store({**form, "event": ""}, CTX).rejects
    assert reject.reason == "event: missing"
    (epoch,) = parse_queue_log_store({**form, "time": "1741097410"}, CTX).records
    assert epoch.event_at == datetime(2025, 3, 4, 14, 10, 10, tzinfo=UTC)


@pytest.mark.parametrize("body", [b"name=value", b"%zz=%ff", b"\xff=1"])
def test_form_that_is_not_a_store_post(body: bytes) -> None:
    with pytest.raises(UnparseableBodyError):
        parse_queue_log(body, FORM, CTX)


def test_media_types() -> None:
    line = b"1741097400|NONE|NONE|NONE|QUEUESTART|"
    for content_type in ("", "text/plain; charset=utf-8", "application/octet-stream"):
        assert len(parse_queue_log(line, content_type, CTX).records) == 1
    with pytest.raises(UnsupportedMediaTypeError):
        parse_queue_log(line, "application/json", CTX)

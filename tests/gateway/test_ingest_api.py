"""End to end through a real node: every PBX format over HTTP -> staging -> Iceberg lake.

The parsers' own tests pin every field of every sample; here we prove that what the HTTP endpoint
acknowledges is exactly what lands in the lake, once, pseudonymised, and that no raw number is left
anywhere on disk.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.server import RunningServer
from ingest.context import PbxContext
from ingest.formats import PARSERS
from tests.conftest import auth

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ingest"
FORM = "application/x-www-form-urlencoded"

# (endpoint format, sample file, content type)
SAMPLES = [
    ("asterisk-csv", "asterisk/master_16.csv", "text/csv"),
    ("asterisk-csv", "asterisk/master_17.csv", "text/csv"),
    ("asterisk-csv", "asterisk/master_18.csv", "text/csv"),
    ("asterisk-csv", "asterisk/master_21.csv", "text/csv"),
    ("freeswitch-json", "freeswitch/a_leg.json", "application/json"),
    ("freeswitch-json", "freeswitch/b_leg_busy.json", "application/json"),
    ("freeswitch-json", "freeswitch/a_leg_json_urlencoded.form", FORM),
    ("freeswitch-json", "freeswitch/a_leg_json_base64.form", FORM),
    ("freeswitch-xml", "freeswitch/cancel_leg.xml", "text/xml"),
    ("freeswitch-xml", "freeswitch/cancel_leg_xml_plain.form", "application/x-www-form-plaintext"),
    ("freeswitch-xml", "freeswitch/cancel_leg_xml_urlencoded.form", FORM),
    ("freeswitch-xml", "freeswitch/cancel_leg_xml_base64.form", FORM),
    ("cucm", "cucm/cdr_StandAloneCluster_01_202507010800_2001", "text/plain"),
    ("cucm", "cucm/cdr_StandAloneCluster_02_202503041405_1001", "text/plain"),
    ("json", "jsonl/cdrs.jsonl", "application/x-ndjson"),
    ("queue-log", "queue_log/queue_log", "text/plain"),
]

NUMBERS_NATIONAL = ["07700900101", "02079460100"]


async def pbx_token(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, name: str = "pbx1") -> str:
    """Create customer ``acme`` (once) and a PBX; the PBX's bearer token."""
    async with http.post(
        f"{node.url}/v1/admin/customers", json={"tenant": "acme", "name": "Acme"}, headers=auth(dpo_token)
    ) as response:
        assert response.status in (201, 409)
    async with http.post(
        f"{node.url}/v1/admin/pbxs",
        json={"name": name, "tenant": "acme", "timezone": "Europe/London", "country": "GB"},
        headers=auth(dpo_token),
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])


def expected_counts(fmt: str, body: bytes, content_type: str) -> tuple[int, int]:
    """What the parser alone makes of a sample: (records, rejects)."""
    ctx = PbxContext(name="pbx1", tenant="acme", timezone=ZoneInfo("Europe/London"), country="GB")
    result = PARSERS[fmt](body, content_type, ctx)
    return len(result.records), len(result.rejects)


async def post(http: aiohttp.ClientSession, url: str, token: str, body: bytes, content_type: str) -> dict[str, object]:
    async with http.post(url, data=body, headers={**auth(token), "Content-Type": content_type}) as response:
        assert response.status == 202, await response.text()
        return dict(await response.json())


async def test_every_format_lands_in_the_lake_exactly_once(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    expected_cdr = expected_acd = 0
    for fmt, sample, content_type in SAMPLES:
        body = (VECTORS / sample).read_bytes()
        records, rejects = expected_counts(fmt, body, content_type)
        endpoint = "/v1/acd/queue-log" if fmt == "queue-log" else f"/v1/cdr/{fmt}"
        answer = await post(http, node.url + endpoint, token, body, content_type)
        # Samples share calls (the same CDR in several encodings): those are duplicates, not new rows.
        assert answer["accepted"] + answer["duplicates"] == records, (sample, answer)
        assert len(answer["rejected"]) == rejects, (sample, answer)  # type: ignore[arg-type]
        if fmt == "queue-log":
            expected_acd += int(answer["accepted"])  # type: ignore[call-overload]
        else:
            expected_cdr += int(answer["accepted"])  # type: ignore[call-overload]
        again = await post(http, node.url + endpoint, token, body, content_type)
        assert again["accepted"] == 0, sample  # a retried delivery is all duplicates
        assert again["duplicates"] == records, sample

    await node.gateway.flusher.flush_now()
    cdr = node.gateway.lake.scan("cdr")
    acd = node.gateway.lake.scan("acd_event")
    assert cdr.num_rows == expected_cdr > 0
    assert acd.num_rows == expected_acd > 0
    assert len(set(cdr.column("dedupe_key").to_pylist())) == cdr.num_rows
    assert set(cdr.column("tenant").to_pylist()) == {"acme"}

    first = next(r for r in cdr.to_pylist() if r["call_id"] == "1741097109.18")
    assert first["start_at"] == datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)  # GMT in March
    assert first["billsec_s"] == 143
    assert first["disposition"] == "ANSWERED"
    assert first["callee"] == "600"
    assert first["callee_kind"] == "extension"
    assert first["caller_kind"] == "subject"
    assert str(first["caller"]).startswith("sub_")
    events = set(acd.column("event").to_pylist())
    assert {"ENTERQUEUE", "CONNECT"} <= events


async def test_queue_log_store_answers_a_row_count(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    body = (VECTORS / "queue_log/store_data.form").read_bytes()
    async with http.post(
        f"{node.url}/v1/acd/queue-log/store", data=body, headers={**auth(token), "Content-Type": FORM}
    ) as response:
        assert response.status == 200
        assert (await response.text()).strip() == "1"  # res_config_curl reads the row count


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, b"x", 401, "unauthenticated"),
        ({"Authorization": "Bearer tgp_wrong"}, b"x", 401, "unauthenticated"),
        ({"Content-Type": "image/png"}, b"{}", 415, "ingest.unsupported_media_type"),
        ({"Content-Type": "application/json"}, b"   ", 400, "bad_request"),
        ({"Content-Type": "application/json"}, b"[1, 2", 400, "ingest.unparseable"),
    ],
)
async def test_bad_requests_get_one_error_shape(
    http: aiohttp.ClientSession,
    node: RunningServer,
    dpo_token: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    token = await pbx_token(http, node, dpo_token)
    if "Authorization" not in headers and status != 401:
        headers = {**headers, **auth(token)}
    async with http.post(f"{node.url}/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
        assert response.status == status
        payload = await response.json()
        assert payload["error"]["code"] == code


async def test_oversized_body_is_413(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> None:
    token = await pbx_token(http, node, dpo_token)
    limit = node.gateway.settings.ingest.max_body_bytes
    async with http.post(
        f"{node.url}/v1/cdr/asterisk-csv",
        data=b"x" * (limit + 1),
        headers={**auth(token), "Content-Type": "text/csv"},
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_oversized_chunked_body_is_413(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> None:
    """Without a Content-Length the limit is enforced while reading."""
    token = await pbx_token(http, node, dpo_token)
    limit = node.gateway.settings.ingest.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65_536 + 2):
            yield b"x" * 65_536

    async with http.post(
        f"{node.url}/v1/cdr/asterisk-csv", data=chunks(), headers={**auth(token), "Content-Type": "text/csv"}
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_compressed_body_is_read_decoded(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    body = (VECTORS / "freeswitch/a_leg.json").read_bytes()
    headers = {**auth(token), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(f"{node.url}/v1/cdr/freeswitch-json", data=gzip.compress(body), headers=headers) as response:
        assert response.status == 202, await response.text()
        assert (await response.json())["accepted"] == expected_counts("freeswitch-json", body, "application/json")[0]


async def test_rejects_are_quarantined_sealed(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    good = (VECTORS / "asterisk/master_21.csv").read_bytes().splitlines()[0]
    bad = b'"","07700900999","600","from-pstn","x","y","z","Dial","","not-a-time","","",1,1,"ANSWERED","DOCUMENTATION"'
    answer = await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, good + b"\n" + bad + b"\n", "text/csv")
    assert answer["accepted"] == 1
    rejected = answer["rejected"]
    assert isinstance(rejected, list)
    assert len(rejected) == 1
    assert rejected[0]["line"] == 2
    assert "07700900999" not in rejected[0]["reason"]
    quarantine_id = rejected[0]["quarantine_id"]
    meta, raw = node.gateway.staging.unseal(quarantine_id)  # type: ignore[misc]
    assert raw == bad
    assert meta["reason"] == rejected[0]["reason"]


async def test_no_raw_number_anywhere_on_disk(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    for fmt, sample, content_type in SAMPLES:
        endpoint = "/v1/acd/queue-log" if fmt == "queue-log" else f"/v1/cdr/{fmt}"
        await post(http, node.url + endpoint, token, (VECTORS / sample).read_bytes(), content_type)
    # Some records stay staged (only the lake is flushed once) so both places are scanned with data.
    await node.gateway.flusher.flush_now()
    bad = b'"","07700900777","600","from-pstn","x","y","z","Dial","","nope","","",1,1,"ANSWERED","DOCUMENTATION"'
    await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, bad + b"\n", "text/csv")
    await post(
        http, f"{node.url}/v1/cdr/asterisk-csv", token,
        (VECTORS / "asterisk/master_21.csv").read_bytes().replace(b"1741097109.18", b"9999999999.99"), "text/csv",
    )  # fmt: skip
    forms = set()
    for national in [*NUMBERS_NATIONAL, "07700900777"]:
        e164 = "+44" + national[1:]
        forms |= {national.encode(), e164.encode(), e164[1:].encode()}
    root = node.gateway.layout.root
    scanned = 0
    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            scanned += len(content)
            for form in forms:
                assert form not in content, f"{form!r} found in {path}"
    assert scanned > 0


async def test_lake_maintenance_under_the_flush_lock_keeps_every_row(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    sample = (VECTORS / "asterisk/master_21.csv").read_bytes()
    for index in range(6):  # six small flushes: six small files in the same day partition
        await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, sample.replace(b".18", f".9{index}".encode()),
                   "text/csv")  # fmt: skip
        await node.gateway.flusher.flush_now()
    before = node.gateway.lake.scan("cdr").sort_by("dedupe_key")
    files_before = len(node.gateway.lake.data_files("cdr"))
    report = await node.gateway.flusher.maintain_lake(node.gateway.settings.lake)
    after = node.gateway.lake.scan("cdr").sort_by("dedupe_key")
    assert after.equals(before)
    assert len(node.gateway.lake.data_files("cdr")) < files_before
    assert report.data_files_after < report.data_files_before
    assert node.gateway.lake.last_committed_marker("cdr") is not None

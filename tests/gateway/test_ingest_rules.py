"""The ingest rules the issue names that other tests only touch: PBX credentials (Bearer, HTTP Basic as
FreeSWITCH's ``cred=`` sends it, revoked tokens), a PBX writing only its own tenant, the flusher's
size and age triggers, the dedupe window after which a record counts as new again, and the real curl
posting as FreeSWITCH, Asterisk's res_config_curl and a batch uploader do."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from gateway.server import RunningServer, start_server
from gateway.settings import Settings
from gateway.staging import StageRequest
from gateway.wiring import FIRST_DPO, build_gateway, initialise
from tests.conftest import auth, login, make_settings
from tests.fakes import FakeClock
from tests.gateway.test_ingest_api import VECTORS, pbx_token, post
from tests.gateway.test_staging_contract import cdr
from tests.sftp_clients import CLIENT_TIMEOUT, require

LEG = (VECTORS / "freeswitch/a_leg.json").read_bytes()


def basic(name: str, password: str) -> dict[str, str]:
    """An HTTP Basic header, as FreeSWITCH sends ``cred=name:password``."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def test_pbx_credentials_bearer_basic_and_revoked(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    url = f"{node.url}/v1/cdr/freeswitch-json"
    json_type = {"Content-Type": "application/json"}
    async with http.post(url, data=LEG, headers=basic("pbx1", token) | json_type) as response:
        assert response.status == 202, await response.text()
        assert (await response.json())["accepted"] == 1
    for wrong in (basic("pbx1", "tgp_wrong"), basic("pbx2", token), auth("tgp_wrong"), {}):
        async with http.post(url, data=LEG, headers=wrong | json_type) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthenticated"
    async with http.post(f"{node.url}/v1/admin/pbxs/pbx1/revoke", headers=auth(dpo_token)) as response:
        assert response.status == 200
    # A revoked token stops working at once on this node (the credential cache forgets it).
    async with http.post(url, data=LEG, headers=auth(token) | json_type) as response:
        assert response.status == 401


async def test_a_pbx_writes_only_its_own_tenant(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    async with http.post(
        f"{node.url}/v1/admin/customers", json={"tenant": "globex", "name": "Globex"}, headers=auth(dpo_token)
    ) as response:
        assert response.status == 201
    acme = await pbx_token(http, node, dpo_token)  # pbx1, tenant acme
    async with http.post(
        f"{node.url}/v1/admin/pbxs", json={"name": "pbx9", "tenant": "globex"}, headers=auth(dpo_token)
    ) as response:
        globex = str((await response.json())["token"])
    claims_globex = json.dumps(
        {"id": "c-7", "start": "2025-03-04T14:05:09Z", "caller": "601", "callee": "602",
         "extra": {"tenant": "globex", "pbx": "pbx9"}}
    ).encode()  # fmt: skip
    await post(http, f"{node.url}/v1/cdr/json", acme, claims_globex + b"\n", "application/x-ndjson")
    await post(http, f"{node.url}/v1/cdr/freeswitch-json", globex, LEG, "application/json")
    await node.gateway.flusher.flush_now()
    rows = node.gateway.lake.scan("cdr", columns=["tenant", "pbx", "call_id"]).to_pylist()
    by_pbx = {row["pbx"]: row["tenant"] for row in rows}
    assert by_pbx == {"pbx1": "acme", "pbx9": "globex"}  # the credential decides, never the body


async def test_the_flusher_moves_staged_records_by_size_or_by_age(tmp_path_factory: pytest.TempPathFactory) -> None:
    clock = FakeClock()
    data = tmp_path_factory.mktemp("flusher")
    settings = make_settings(data / "var", ingest={"flush_records": 3, "flush_interval": "30s"})
    initialise(settings, clock)
    gateway = await asyncio.to_thread(build_gateway, settings, clock)
    try:
        flusher = gateway.flusher
        await gateway.staging_writer.stage(StageRequest("cdr", "acme", "pbx1", "json", [cdr(1), cdr(2)]))
        assert not flusher.due(clock.now())  # 2 records, just staged
        clock.advance(timedelta(seconds=29))
        assert not flusher.due(clock.now())
        clock.advance(timedelta(seconds=1))
        assert flusher.due(clock.now())  # the oldest has waited flush_interval
        await flusher.flush_now()
        assert not flusher.due(clock.now())
        await gateway.staging_writer.stage(StageRequest("cdr", "acme", "pbx1", "json", [cdr(3), cdr(4), cdr(5)]))
        assert flusher.due(clock.now())  # flush_records reached, at once

        rounds = 0

        async def sleep(seconds: float) -> None:  # one round of the background loop
            nonlocal rounds
            rounds += 1
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await flusher.run(sleep=sleep)
        assert rounds == 1
        assert gateway.staging.status().backlog == 0
        assert gateway.lake.scan("cdr").num_rows == 5
    finally:
        await asyncio.to_thread(gateway.close)


async def test_a_retry_within_the_dedupe_window_is_a_duplicate_and_after_it_a_new_record(
    tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    settings: Settings = make_settings(tmp_path_factory.mktemp("dedupe") / "var", ingest={"dedupe_window": "2d"})
    _, password = initialise(settings, clock)
    node = await start_server(settings, clock)
    try:
        token = await pbx_token(http, node, await login(http, node, FIRST_DPO, password))
        url = f"{node.url}/v1/cdr/freeswitch-json"
        assert (await post(http, url, token, LEG, "application/json"))["accepted"] == 1
        clock.advance(timedelta(days=2) - timedelta(seconds=1))
        assert node.gateway.flusher.expire_dedupe() == 0
        assert (await post(http, url, token, LEG, "application/json"))["duplicates"] == 1
        clock.advance(timedelta(seconds=2))  # the first sighting is older than the window now
        assert node.gateway.flusher.expire_dedupe() == 1
        assert (await post(http, url, token, LEG, "application/json"))["accepted"] == 1
    finally:
        await node.stop()


async def curl(*args: str) -> tuple[int, str]:
    """Run the real curl (not blocking the loop that serves the node): its HTTP status and body.

    A missing curl skips, or fails where clients are required (CI), as for the SFTP clients.
    """
    process = await asyncio.create_subprocess_exec(
        require("curl", "curl"), "-sS", "-o", "-", "-w", "\n%{http_code}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT)
    assert process.returncode == 0, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


async def test_real_curl_posts_as_pbxs_do(
    tmp_path: Path, http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    host = node.url.removeprefix("http://")
    form = "application/x-www-form-urlencoded"
    # FreeSWITCH mod_json_cdr, encode=true, cred=pbx1:<token> (libcurl, HTTP Basic).
    leg = VECTORS / "freeswitch/a_leg_json_urlencoded.form"
    status, body = await curl("-u", f"pbx1:{token}", "-H", f"Content-Type: {form}", "--data-binary", f"@{leg}",
                              f"{node.url}/v1/cdr/freeswitch-json")  # fmt: skip
    assert (status, json.loads(body)["accepted"]) == (202, 1)
    # Asterisk res_config_curl: credentials in the URL, the row count as the answer.
    status, body = await curl("--data-binary", f"@{VECTORS / 'queue_log/store_data.form'}",
                              f"http://pbx1:{token}@{host}/v1/acd/queue-log/store")  # fmt: skip
    assert (status, body.strip()) == (200, "1")
    # A Master.csv batch sent chunked, after an Expect: 100-continue handshake.
    lines = [line for line in (VECTORS / "asterisk/master_21.csv").read_bytes().splitlines() if line][:1]
    batch = tmp_path / "Master.csv"
    batch.write_bytes(b"".join(line.replace(b"1741097109.18", f"1741097109.{n}".encode()) + b"\n"
                               for line in lines for n in range(2000)))  # fmt: skip
    status, body = await curl("-H", f"Authorization: Bearer {token}", "-H", "Content-Type: text/csv",
                              "-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
                              "--data-binary", f"@{batch}", f"{node.url}/v1/cdr/asterisk-csv")  # fmt: skip
    assert status == 202, body
    assert json.loads(body) == {"accepted": 2000, "duplicates": 0, "rejected": []}

"""Operators see how far behind the lake is: ``ingest status`` (API, CLI) and the ingest gauges of
``/metrics`` report staged records, the oldest one's wait and the quarantine; ``ingest flush`` empties
staging. The figures come from the store, so every HTTP worker process reports the same. A node whose
lake is down starts anyway and takes records into staging; they reach the lake once it is back."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from gateway.server import RunningServer, start_server
from gateway.settings import Settings
from gateway.staging import Rejected, StageRequest
from gateway.wiring import FIRST_DPO, build_gateway, initialise
from ingest.lake import LakeError
from tests.conftest import auth, cli_env, login, make_settings
from tests.fakes import FakeClock
from tests.gateway.test_cli import arun
from tests.gateway.test_ingest_api import VECTORS, pbx_token, post
from tests.gateway.test_ingest_metrics import sample
from tests.gateway.test_staging_contract import cdr

CSV = (VECTORS / "asterisk/master_21.csv").read_bytes()
QUEUE_LOG = (VECTORS / "queue_log/queue_log").read_bytes()


async def status(http: aiohttp.ClientSession, node: RunningServer, token: str) -> dict[str, object]:
    """The answer of GET /v1/admin/ingest/status."""
    async with http.get(f"{node.url}/v1/admin/ingest/status", headers=auth(token)) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def metrics(http: aiohttp.ClientSession, node: RunningServer) -> str:
    """The /metrics exposition text."""
    async with http.get(f"{node.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_status_and_gauges_follow_staging_and_quarantine_until_a_flush(
    tmp_path: Path, http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, dpo_password: str,
    clock: FakeClock,
) -> None:  # fmt: skip
    empty = await status(http, node, dpo_token)
    assert empty["backlog"] == 0
    assert empty["flush_overdue"] is False
    assert empty["staged"] == {
        kind: {"records": 0, "payloads": 0, "oldest_staged_at": None, "oldest_age_seconds": None}
        for kind in ("cdr", "acd_event")
    }

    token = await pbx_token(http, node, dpo_token)
    staged_at = clock.now()
    cdrs = await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, CSV + b"not,a,cdr\n", "text/csv")
    events = await post(http, f"{node.url}/v1/acd/queue-log", token, QUEUE_LOG, "text/plain")
    accepted, acd_accepted = int(cdrs["accepted"]), int(events["accepted"])  # type: ignore[call-overload]
    rejected = len(cdrs["rejected"]) + len(events["rejected"])  # type: ignore[arg-type]
    assert accepted > 0
    assert acd_accepted > 0
    assert rejected > 0
    clock.advance(timedelta(seconds=10))  # less than the 30 s flush interval: the flusher leaves them

    now = await status(http, node, dpo_token)
    assert now["staged"] == {
        "cdr": {"records": accepted, "payloads": 1, "oldest_staged_at": staged_at.isoformat(),
                "oldest_age_seconds": 10.0},
        "acd_event": {"records": acd_accepted, "payloads": 1, "oldest_staged_at": staged_at.isoformat(),
                      "oldest_age_seconds": 10.0},
    }  # fmt: skip
    assert now["backlog"] == accepted + acd_accepted
    assert now["quarantine"] == {"pending": rejected, "replayed": 0}
    assert now["flush_overdue"] is False
    pbx1 = {
        "last_post_at": staged_at.isoformat(), "last_post_age_seconds": 10.0, "posts": 2,
        "accepted": accepted + acd_accepted, "duplicates": 0, "rejected": rejected,
    }  # fmt: skip
    assert now["pbxs"] == {"pbx1": pbx1}
    async with http.get(f"{node.url}/v1/admin/pbxs", headers=auth(dpo_token)) as response:
        assert [p["activity"] for p in (await response.json())["pbxs"]] == [pbx1]

    text = await metrics(http, node)
    assert sample(text, "telgate_ingest_staged_records", kind="cdr") == accepted
    assert sample(text, "telgate_ingest_staged_records", kind="acd_event") == acd_accepted
    assert sample(text, "telgate_ingest_oldest_staged_age_seconds", kind="cdr") == 10
    assert f"telgate_ingest_quarantine_pending {rejected:.1f}" in text.splitlines()
    assert sample(text, "telgate_ingest_pbx_last_post_timestamp_seconds", pbx="pbx1") == staged_at.timestamp()
    assert sample(text, "telgate_ingest_pbx_records_total", pbx="pbx1", outcome="rejected") == rejected

    env = cli_env(tmp_path / "cli")
    code, _, err = await arun(["login", "--url", node.url, "--user", "dpo", "--password-stdin"], env,
                              dpo_password + "\n")  # fmt: skip
    assert code == 0, err
    code, out, err = await arun(["ingest", "status"], env)
    assert code == 0, err
    assert f"backlog {accepted + acd_accepted} of 5000000" in out
    assert "pbx1" in out
    assert f"quarantine: {rejected} pending" in out

    code, out, err = await arun(["ingest", "flush", "--json"], env)
    assert code == 0, err
    assert json.loads(out) == {"flushed": accepted + acd_accepted, "backlog": 0}
    code, out, err = await arun(["ingest", "status", "--json"], env)
    assert code == 0, err
    assert json.loads(out)["backlog"] == 0
    text = await metrics(http, node)
    assert sample(text, "telgate_ingest_staged_records", kind="cdr") == 0
    assert sample(text, "telgate_ingest_oldest_staged_age_seconds", kind="cdr") == 0
    assert node.gateway.lake.scan("cdr").num_rows == accepted


async def test_a_node_whose_lake_is_down_takes_records_and_flushes_them_once_it_is_back(
    tmp_path: Path, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    storage = tmp_path / "lake-storage"
    storage.write_text("not mounted")  # nothing can be created under the lake's warehouse
    settings = make_settings(tmp_path / "var", lake={"warehouse": f"file://{storage}/warehouse"})
    _, password = initialise(settings, clock)
    node = await start_server(settings, clock)  # starts although reconciling with the lake fails
    try:
        dpo = await login(http, node, FIRST_DPO, password)
        token = await pbx_token(http, node, dpo)
        cdrs = await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, CSV, "text/csv")
        accepted = int(cdrs["accepted"])  # type: ignore[call-overload]
        assert accepted > 0  # 202: staged, durable, whatever the lake's state
        with pytest.raises(LakeError):
            await node.gateway.flusher.flush_now()
        clock.advance(timedelta(seconds=61))  # more than twice the flush interval

        overdue = await status(http, node, dpo)
        assert overdue["flush_overdue"] is True
        assert overdue["backlog"] == accepted
        env = cli_env(tmp_path / "cli")
        code, _, err = await arun(["login", "--url", node.url, "--user", "dpo", "--password-stdin"], env,
                                  password + "\n")  # fmt: skip
        assert code == 0, err
        code, out, err = await arun(["ingest", "status"], env)
        assert code == 69, out  # backend unavailable: the lake is not taking records
        assert "flush overdue" in err
        assert sample(await metrics(http, node), "telgate_ingest_oldest_staged_age_seconds", kind="cdr") == 61

        storage.unlink()  # the lake's storage is back
        await node.gateway.flusher.flush_now()  # the background flusher may have been first: either way
        after = await status(http, node, dpo)
        assert after["backlog"] == 0
        assert after["flush_overdue"] is False
        assert node.gateway.lake.scan("cdr").num_rows == accepted
    finally:
        await node.stop()


async def test_a_flush_never_appends_what_a_flush_that_died_committed(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, settings: Settings, clock: FakeClock
) -> None:
    """A flush killed between its lake commit and its staging delete (another process: an HTTP worker
    answering ``ingest flush``; or this one, started while the lake was down) leaves its batch staged."""
    token = await pbx_token(http, node, dpo_token)
    accepted = int((await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, CSV, "text/csv"))["accepted"])  # type: ignore[call-overload]
    last_seq, table = node.gateway.staging.batch("cdr", 1_000)
    assert table is not None
    node.gateway.lake.append("cdr", table, marker=last_seq)  # committed to the lake, then killed
    assert await node.gateway.flusher.flush_now() == accepted  # settled with the lake, not appended
    assert node.gateway.lake.scan("cdr").num_rows == accepted  # once, not twice
    assert node.gateway.staging.status().backlog == 0
    # So does a process started after the crash.
    await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, CSV.replace(b"1741097109.18", b"1741099999.1"),
               "text/csv")  # fmt: skip
    last_seq, table = node.gateway.staging.batch("cdr", 1_000)
    assert table is not None
    node.gateway.lake.append("cdr", table, marker=last_seq)
    restarted = await asyncio.to_thread(build_gateway, settings, clock)
    try:
        await asyncio.to_thread(restarted.flusher.flush_all)
        assert restarted.lake.scan("cdr").num_rows == accepted + table.num_rows
        assert restarted.staging.status().backlog == 0
    finally:
        restarted.close()


async def test_failing_flushes_back_off_and_log_one_traceback(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = tmp_path / "lake-storage"
    storage.write_text("not mounted")
    settings = make_settings(tmp_path / "var", lake={"warehouse": f"file://{storage}/warehouse"})
    initialise(settings, clock)
    gateway = await asyncio.to_thread(build_gateway, settings, clock)
    try:
        await gateway.staging_writer.stage(
            StageRequest("cdr", "acme", "pbx1", "json", [cdr(1)], [Rejected(2, "x", b"y")])
        )
        clock.advance(settings.ingest.quarantine_retention + timedelta(minutes=1))  # due by age, reject expired
        waits: list[float] = []

        quarantined_while_down: list[int] = []

        async def sleep(seconds: float) -> None:  # the loop's waits, without waiting
            waits.append(seconds)
            if len(waits) == 1:
                quarantined_while_down.append(len(gateway.staging.quarantined()[0]))
            if len(waits) == 7:
                storage.unlink()  # the storage is back during the seventh wait
            if len(waits) == 9:
                raise asyncio.CancelledError

        with caplog.at_level(logging.INFO, logger="telgate.ingest"), pytest.raises(asyncio.CancelledError):
            await gateway.flusher.run(poll_seconds=1.0, sleep=sleep)
        assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 1.0, 1.0]
        failures = [r for r in caplog.records if "flush failed" in r.getMessage()]
        assert len(failures) == 7
        assert [r.exc_info is not None for r in failures] == [True] + [False] * 6
        assert any("works again after 7 failed attempts" in r.getMessage() for r in caplog.records)
        assert gateway.lake.scan("cdr").num_rows == 1
        assert quarantined_while_down == [0]  # expired in the first round, although the lake was down
    finally:
        await asyncio.to_thread(gateway.close)


async def test_quarantined_records_are_deleted_after_their_retention_and_it_is_audited(
    settings: Settings, dpo_password: str, clock: FakeClock
) -> None:
    gateway = await asyncio.to_thread(build_gateway, settings, clock)
    try:
        old = StageRequest("cdr", "acme", "pbx1", "json", [], [Rejected(1, "bad", b"07700 900123,x")])
        outcome = await gateway.staging_writer.stage(old)
        clock.advance(settings.ingest.quarantine_retention + timedelta(seconds=1))
        await gateway.staging_writer.stage(StageRequest("cdr", "acme", "pbx1", "json", [], [Rejected(2, "bad", b"y")]))

        async def sleep(seconds: float) -> None:  # one round of the loop
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await gateway.flusher.run(sleep=sleep)
        assert [row["line"] for row in gateway.staging.quarantined()[0]] == [2]
        assert gateway.staging.unseal(outcome.quarantined[0]) is None
        (entry,) = [e for e in gateway.audit.entries() if e.action == "quarantine.expire"]
        assert (entry.actor, entry.role, entry.reason) == ("system", "system", "retention")
        assert entry.details["deleted"] == 1
        assert gateway.audit.verify().ok
    finally:
        await asyncio.to_thread(gateway.close)


async def test_a_full_staging_answers_503_with_retry_after_and_takes_the_retry_once_flushed(
    tmp_path: Path, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    settings = make_settings(tmp_path / "var", ingest={"max_staged_records": 3})
    _, password = initialise(settings, clock)
    node = await start_server(settings, clock)
    try:
        dpo = await login(http, node, FIRST_DPO, password)
        token = await pbx_token(http, node, dpo)
        url = f"{node.url}/v1/cdr/freeswitch-json"
        leg = (VECTORS / "freeswitch/a_leg.json").read_bytes()
        staged = await post(http, f"{node.url}/v1/cdr/asterisk-csv", token, CSV, "text/csv")
        assert int(staged["accepted"]) >= 3  # type: ignore[call-overload]
        headers = {**auth(token), "Content-Type": "application/json"}
        async with http.post(url, data=leg, headers=headers) as response:  # staging holds its limit: shed load
            assert response.status == 503
            assert int(response.headers["Retry-After"]) > 0
            assert (await response.json())["error"]["code"] == "overloaded"
        assert (await status(http, node, dpo))["backlog"] == staged["accepted"]  # nothing of it was kept
        await node.gateway.flusher.flush_now()
        async with http.post(url, data=leg, headers=headers) as response:  # the PBX's retry
            assert response.status == 202
            assert await response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    finally:
        await node.stop()

"""Crash test: a load generator posts CDRs while the gateway is killed with SIGKILL and restarted.

Every record the gateway acknowledged (202) must be in the lake exactly once; records posted again
after a restart are reported as duplicates. The server is a real ``telgate serve`` process with a
small flush threshold, so kills also land between lake commits and staging deletes, and with two
HTTP worker processes, which the kernel stops when their supervisor is killed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import signal
import subprocess
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.settings import load_settings
from gateway.wiring import build_gateway
from tests.conftest import cli_env
from tests.gateway.test_cli import FAST_ENV, TELGATE, free_port, run

SAMPLE = json.loads((Path(__file__).resolve().parents[1] / "vectors/ingest/freeswitch/a_leg.json").read_text())
RECORDS = 400
KILLS = 4
CONCURRENCY = 8


def cdr_body(index: int) -> tuple[str, bytes]:
    """A FreeSWITCH JSON CDR with its own leg uuid and a drama number."""
    document: dict[str, Any] = copy.deepcopy(SAMPLE)
    leg = str(uuid.UUID(int=index + 1))
    document["variables"]["uuid"] = leg
    document["variables"]["caller_id_number"] = f"%2B44770090{index % 1000:04d}"
    return leg, json.dumps(document).encode()


class Gateway:
    """A ``telgate serve`` subprocess that the test kills and restarts."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data = data
        self.env = env
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [TELGATE, "serve", "--data", str(self.data)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once both listeners are up
        assert "serving HTTP" in line, line

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def admin_setup(url: str, password: str) -> str:
    """Log in as the first DPO, add a customer and a PBX; the PBX token."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/auth/login", json={"user": "dpo", "password": password}) as response:
            token = (await response.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{url}/v1/admin/customers", json={"tenant": "acme", "name": "Acme"}, headers=headers):
            pass
        async with http.post(
            f"{url}/v1/admin/pbxs", json={"name": "fs1", "tenant": "acme", "country": "GB"}, headers=headers
        ) as response:
            return str((await response.json())["token"])


@pytest.mark.timeout(300)
async def test_sigkill_loses_nothing_acknowledged_and_counts_nothing_twice(tmp_path: Path) -> None:
    http_port = free_port()
    env = cli_env(tmp_path / "cli") | FAST_ENV | {
        "TELGATE_SERVER_HTTP_PORT": str(http_port),
        "TELGATE_SERVER_SFTP_PORT": str(free_port()),
        "TELGATE_INGEST_FLUSH_RECORDS": "30",
        "TELGATE_INGEST_FLUSH_INTERVAL": "1s",
        "TELGATE_SERVER_HTTP_WORKERS": "2",  # the supervisor is killed; its workers die with it
    }
    data = tmp_path / "var"
    initialised = run(["init", "--data", str(data), "--json"], env)
    assert initialised.returncode == 0, initialised.stderr
    url = f"http://127.0.0.1:{http_port}"
    server = Gateway(data, env)
    server.start()
    try:
        pbx_token = await admin_setup(url, json.loads(initialised.stdout)["first_dpo"]["password"])
        headers = {"Authorization": f"Bearer {pbx_token}", "Content-Type": "application/json"}
        rng = random.Random(20261122)  # kill points are random but reproducible
        kill_at = sorted(rng.sample(range(40, RECORDS - 40), KILLS))
        pending = deque(cdr_body(index) for index in range(RECORDS))
        acked: set[str] = set()
        up = asyncio.Event()
        up.set()
        restarting = asyncio.Lock()

        async def restart_if_due() -> None:
            async with restarting:
                if kill_at and len(acked) >= kill_at[0]:
                    kill_at.pop(0)
                    up.clear()
                    await asyncio.to_thread(server.kill)
                    await asyncio.to_thread(server.start)
                    up.set()

        async def worker(http: aiohttp.ClientSession) -> None:
            while pending:
                leg, body = pending.popleft()
                await up.wait()
                try:
                    async with http.post(f"{url}/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
                        status = response.status
                        answer = await response.json() if status == 202 else None
                except (aiohttp.ClientError, ConnectionError):
                    status, answer = 0, None  # died mid-request: not acknowledged, post again
                if status == 202 and answer is not None and answer["accepted"] + answer["duplicates"] == 1:
                    acked.add(leg)
                    await restart_if_due()
                else:
                    pending.append((leg, body))
                    await up.wait()

        connector = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
            assert len(acked) == RECORDS
            assert not kill_at, "every planned kill happened"
            # Retries of acknowledged records after the restarts are duplicates, never new rows.
            for index in rng.sample(range(RECORDS), 25):
                _leg, body = cdr_body(index)
                async with http.post(f"{url}/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
                    assert response.status == 202
                    assert await response.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    finally:
        server.stop()

    settings = load_settings(environ=env, overrides={"server": {"data_dir": str(data)}})
    gateway = await asyncio.to_thread(build_gateway, settings)
    try:
        await asyncio.to_thread(gateway.flusher.flush_all)  # first drops what the lake holds already
        legs = gateway.lake.scan("cdr", columns=["call_id"]).column("call_id").to_pylist()
    finally:
        gateway.close()
    assert len(legs) == RECORDS, "each acknowledged record exactly once"
    assert set(legs) == acked

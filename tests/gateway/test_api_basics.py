"""Health, readiness, metrics, the one JSON error shape, and login throttling."""

from __future__ import annotations

import json
from datetime import timedelta

import aiohttp

from gateway.server import RunningServer
from gateway.settings import Settings
from tests.conftest import add_operator, auth, login
from tests.fakes import FakeClock


async def test_health_ready_metrics(http: aiohttp.ClientSession, node: RunningServer) -> None:
    async with http.get(f"{node.url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{node.url}/readyz") as response:
        assert response.status == 200
    async with http.get(f"{node.url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
        assert "telgate_http_requests_total" in text


async def test_error_shape_is_one_shape(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> None:
    cases = [
        ("GET", "/v1/nowhere", None, 404),
        ("POST", "/v1/auth/login", b"not json", 400),
        ("GET", "/v1/admin/whoami", None, 401),
        ("DELETE", "/healthz", None, 405),
    ]
    for method, path, data, status in cases:
        async with http.request(
            method, node.url + path, data=data, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == status
            payload = await response.json()
            assert set(payload) == {"error"}
            assert set(payload["error"]) == {"code", "message", "details"}
    async with http.post(
        f"{node.url}/v1/admin/operators",
        json={"name": "Bad Name!", "role": "manager"},
        headers=auth(dpo_token),
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"
    await add_operator(http, node, dpo_token, "twin", "manager")
    async with http.post(
        f"{node.url}/v1/admin/operators", json={"name": "twin", "role": "manager"}, headers=auth(dpo_token)
    ) as response:
        assert response.status == 409


async def test_failed_logins_lock_out_the_address_and_are_audited(
    http: aiohttp.ClientSession,
    node: RunningServer,
    settings: Settings,
    clock: FakeClock,
    dpo_password: str,
    dpo_token: str,
) -> None:
    limit = settings.security.login_max_failures
    for _ in range(limit):
        async with http.post(f"{node.url}/v1/auth/login", json={"user": "dpo", "password": "wrong"}) as response:
            assert response.status == 401
    # Banned now: even the right password is refused, with Retry-After.
    async with http.post(f"{node.url}/v1/auth/login", json={"user": "dpo", "password": dpo_password}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0
    clock.advance(settings.security.login_ban + timedelta(seconds=1))
    token = await login(http, node, "dpo", dpo_password)
    async with http.get(f"{node.url}/v1/admin/audit", headers=auth(token)) as response:
        entries = (await response.json())["entries"]
    outcomes = [e["outcome"] for e in entries if e["action"] == "login"]
    assert outcomes.count("failed") == limit - 1
    assert "failed-then-banned" in outcomes
    assert "refused-banned" in outcomes
    assert all(e["source"] == "127.0.0.1" for e in entries if e["action"] == "login")


async def test_no_audit_entry_contains_a_password(
    http: aiohttp.ClientSession, node: RunningServer, dpo_password: str, dpo_token: str
) -> None:
    created = await add_operator(http, node, dpo_token, "alice", "manager")
    await login(http, node, "alice", created)
    async with http.post(f"{node.url}/v1/auth/login", json={"user": "alice", "password": "typo-secret-1"}):
        pass
    async with http.get(f"{node.url}/v1/admin/audit", headers=auth(dpo_token)) as response:
        dump = json.dumps(await response.json())
    for secret in (dpo_password, created, "typo-secret-1", dpo_token):
        assert secret not in dump

"""Every admin endpoint refuses the roles it should (and anonymous callers), and allows the rest.

The expected table is written out here by hand, independent of ``gateway.rbac``: a change of policy
must change this file too. A second test fails when an endpoint is added without a row here.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.api import ADMIN_ROUTES
from gateway.server import RunningServer
from tests.conftest import add_operator, auth, login

ALL = {"dpo", "tech_manager", "manager", "auditor"}
GOVERNORS = {"dpo", "tech_manager"}
UNIQUE = "<unique>"  # replaced by a fresh name per call, so an allowed call never conflicts

# (method, path, body, roles allowed)
EXPECTED: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("GET", "/v1/admin/whoami", None, ALL),
    ("GET", "/v1/admin/operators", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/operators", {"name": UNIQUE, "role": "manager"}, {"dpo"}),
    ("POST", "/v1/admin/operators/target/disable", None, {"dpo"}),
    ("GET", "/v1/admin/audit", None, {"dpo", "tech_manager", "auditor"}),
    ("GET", "/v1/admin/audit/verify", None, {"dpo", "tech_manager", "auditor"}),
    ("GET", "/v1/admin/settings", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/customers", {"tenant": UNIQUE, "name": "Acme"}, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/customers", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/pbxs", {"name": UNIQUE, "tenant": "base"}, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/pbxs", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/pbxs/target/revoke", None, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/recordings", None, {"dpo", "tech_manager", "manager"}),
    ("GET", "/v1/admin/keys", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/keys/rotate", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/keys/1/retire", None, {"dpo"}),  # version 1 is no longer current (fixture)
    ("POST", "/v1/admin/vault/verify", None, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/cdr/search?call_id=none", None, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/ingest/quarantine", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/ingest/quarantine/q_unknown/replay", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/ingest/quarantine/replay", {"pbx": "target", "after": None}, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/ingest/flush", None, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/ingest/status", None, {"dpo", "tech_manager"}),
    (
        "POST",
        "/v1/admin/recordings/rec_unknown/access-requests",
        {"reason": "quality check of this call"},
        {"dpo", "tech_manager", "manager"},
    ),
    ("GET", "/v1/admin/access-requests", None, {"dpo", "tech_manager", "manager"}),
    ("POST", "/v1/admin/access-requests/req_unknown/approve", None, {"dpo"}),
    ("POST", "/v1/admin/access-requests/req_unknown/deny", {"reason": "not needed"}, {"dpo"}),
    ("POST", "/v1/admin/access-requests/req_unknown/fetch", {"password": "wrong"}, {"dpo", "tech_manager", "manager"}),
    ("POST", "/v1/admin/recordings/rec_unknown/break-glass", {"reason": "emergency for the test"}, {"dpo"}),
    ("POST", "/v1/admin/releases", {"tenant": "base", "since": "2000-01-01", "until": "2100-01-01"}, GOVERNORS),
    ("GET", "/v1/admin/releases", None, {"dpo", "tech_manager"}),
    ("GET", "/v1/admin/releases/rls_unknown", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/releases/rls_unknown/revoke", None, {"dpo", "tech_manager"}),
    ("POST", "/v1/admin/releases/rls_unknown/reissue", None, {"dpo", "tech_manager"}),
]


def test_every_admin_route_is_in_the_table() -> None:
    declared = {(route.method, route.path) for route in ADMIN_ROUTES}
    tabled = {
        (
            method,
            path.split("?")[0]
            .replace("/target/", "/{name}/")
            .replace("/keys/1/", "/keys/{version}/")
            .replace("/q_unknown/", "/{id}/")
            .replace("/rec_unknown/", "/{recording_id}/")
            .replace("/req_unknown/", "/{request_id}/")
            .replace("/rls_unknown", "/{release_id}"),
        )
        for method, path, _, _ in EXPECTED
    }
    assert declared == tabled


@pytest.fixture
async def role_tokens(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> dict[str, str]:
    # Objects the routes act on: an operator, a customer and a PBX all named for the routes' paths.
    await add_operator(http, node, dpo_token, "target", "manager")
    for path, body in (
        ("/v1/admin/customers", {"tenant": "base", "name": "Base"}),
        ("/v1/admin/pbxs", {"name": "target", "tenant": "base"}),
    ):
        async with http.post(node.url + path, json=body, headers=auth(dpo_token)) as response:
            assert response.status == 201, await response.text()
    # A recording of tenant base, so that a release of it can be created.
    pbx = {"name": "releaser", "tenant": "base"}
    async with http.post(node.url + "/v1/admin/pbxs", json=pbx, headers=auth(dpo_token)) as response:
        pbx_token = (await response.json())["token"]
    async with http.put(node.url + "/v1/recordings/rbac-1", data=b"audio", headers=auth(pbx_token)) as response:
        assert response.status == 201, await response.text()
    # Rotate once, so that master-key version 1 is no longer current and may be retired.
    async with http.post(node.url + "/v1/admin/keys/rotate", headers=auth(dpo_token)) as response:
        assert response.status == 200, await response.text()
    tokens = {"dpo": dpo_token}
    for role in sorted(ALL - {"dpo"}):
        password = await add_operator(http, node, dpo_token, f"op-{role.replace('_', '-')}", role)
        tokens[role] = await login(http, node, f"op-{role.replace('_', '-')}", password)
    return tokens


@pytest.mark.parametrize(("method", "path", "body", "allowed"), EXPECTED)
async def test_route_checks_roles(
    http: aiohttp.ClientSession,
    node: RunningServer,
    dpo_token: str,
    role_tokens: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    allowed: set[str],
) -> None:
    async with http.request(method, node.url + path, json=body) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
    async with http.request(method, node.url + path, json=body, headers=auth("tgs_forged")) as response:
        assert response.status == 401
    for role, token in role_tokens.items():
        fresh = {k: f"new-{role.replace('_', '-')}" if v == UNIQUE else v for k, v in (body or {}).items()}
        async with http.request(method, node.url + path, json=fresh or None, headers=auth(token)) as response:
            payload = await response.json()
            if role in allowed:  # past the role check; 404 only where the test names no real object
                assert response.status in (200, 201) or (response.status == 404 and "unknown" in path), (
                    role,
                    path,
                    payload,
                )
            else:
                assert response.status == 403, (role, path, payload)
                assert payload["error"]["code"] == "forbidden"


async def test_disabled_operator_loses_session(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    password = await add_operator(http, node, dpo_token, "leaver", "manager")
    token = await login(http, node, "leaver", password)
    async with http.post(f"{node.url}/v1/admin/operators/leaver/disable", headers=auth(dpo_token)) as response:
        assert response.status == 200
    async with http.get(f"{node.url}/v1/admin/whoami", headers=auth(token)) as response:
        assert response.status == 401
    async with http.post(f"{node.url}/v1/auth/login", json={"user": "leaver", "password": password}) as response:
        assert response.status == 401

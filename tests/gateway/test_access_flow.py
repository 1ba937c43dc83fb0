"""Access governance through the admin API of a real node: the flow's rules, table-driven, then the
one-time password, expiry by the injected clock, denial, break-glass, throttling, interrupted transfers
and the DPO webhook.

Acceptance shown here: (2) four eyes, role and ownership rules of the flow, auditor read-only;
(3) grants expire by ``FakeClock.advance``, a denial records its reason, break-glass needs a reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.access import FETCH_REFUSED
from gateway.routes_access import NOTIFIER, TRANSFERS, WebhookNotifier
from gateway.server import RunningServer, start_server
from gateway.settings import Settings
from gateway.wiring import initialise
from tests.conftest import add_operator, auth, login, make_settings
from tests.fakes import FakeClock
from vault.errors import CorruptRecordingError
from vault.service import RecordingReader

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

GRANT_TTL = timedelta(hours=2)  # shorter than a session (12h), so the clock can pass it without re-login
REASON = "complaint INC0012345: check what was said"
CONTENT = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB of recording

# operator name -> role (the first DPO, "dpo", exists already)
OPERATORS = {"dpo2": "dpo", "alice": "manager", "bob": "manager", "tom": "tech_manager", "audrey": "auditor"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A test node whose grants live two hours."""
    return make_settings(tmp_path / "var", access={"grant_ttl": "2h"})


@dataclass
class Scene:
    """A node with a recording, one operator per role and a helper to call the API as any of them."""

    node: RunningServer
    http: aiohttp.ClientSession
    clock: FakeClock
    recording_id: str
    tokens: dict[str, str] = field(default_factory=dict)

    async def call(self, who: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Call the API as ``who``; (status, decoded JSON or raw bytes for a download)."""
        async with self.http.request(method, self.node.url + path, json=body, headers=auth(self.tokens[who])) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            content = await r.read()
        await self.settled()
        return r.status, content

    async def settled(self) -> None:
        """Wait until every download has audited its outcome (the client may finish first)."""
        await self.node.runner.app[TRANSFERS].idle()

    async def request(self, who: str, reason: str = REASON, recording_id: str | None = None) -> str:
        status, body = await self.call(
            who, "POST", f"/v1/admin/recordings/{recording_id or self.recording_id}/access-requests", {"reason": reason}
        )
        assert status == 201, body
        assert body["status"] == "pending"
        return str(body["request_id"])

    async def approve(self, who: str, request_id: str) -> dict[str, Any]:
        status, body = await self.call(who, "POST", f"/v1/admin/access-requests/{request_id}/approve")
        assert status == 200, body
        assert "password" not in body  # never in the approving DPO's answer
        return dict(body)

    async def listing(self, who: str, pending: bool = False) -> dict[str, dict[str, Any]]:
        status, body = await self.call(who, "GET", "/v1/admin/access-requests" + ("?pending=1" if pending else ""))
        assert status == 200, body
        return {r["request_id"]: r for r in body["requests"]}

    async def password(self, who: str, request_id: str) -> str:
        listed = await self.listing(who)
        password = listed[request_id]["password"]
        assert isinstance(password, str)
        assert len(password) >= 20
        return password

    async def fetch(self, who: str, request_id: str, password: str) -> tuple[int, Any]:
        return await self.call(who, "POST", f"/v1/admin/access-requests/{request_id}/fetch", {"password": password})

    def audit(self, action: str) -> list[Any]:
        return [e for e in self.node.gateway.audit.entries() if e.action == action]


async def make_scene(node: RunningServer, http: aiohttp.ClientSession, dpo_token: str, clock: FakeClock) -> Scene:
    for path, body in (
        ("/v1/admin/customers", {"tenant": "acme", "name": "Acme Ltd"}),
        ("/v1/admin/pbxs", {"name": "pbx1", "tenant": "acme"}),
    ):
        async with http.post(node.url + path, json=body, headers=auth(dpo_token)) as response:
            assert response.status == 201, await response.text()
            pbx_token = (await response.json()).get("token")
    async with http.put(f"{node.url}/v1/recordings/1712345678.42", data=CONTENT, headers=auth(pbx_token)) as response:
        assert response.status == 201, await response.text()
        recording_id = (await response.json())["recording_id"]
    scene = Scene(node, http, clock, recording_id, {"dpo": dpo_token})
    for name, role in OPERATORS.items():
        scene.tokens[name] = await login(http, node, name, await add_operator(http, node, dpo_token, name, role))
    return scene


@pytest.fixture
async def scene(node: RunningServer, http: aiohttp.ClientSession, dpo_token: str, clock: FakeClock) -> Scene:
    return await make_scene(node, http, dpo_token, clock)


# --- the flow's rules, table-driven ----------------------------------------------------------------


@dataclass
class Prepared:
    """Requests in known states: alice holds a grant and its password; dpo and tom wait."""

    alice_granted: str
    alice_password: str
    dpo_pending: str
    tom_pending: str


async def prepare(scene: Scene) -> Prepared:
    alice = await scene.request("alice")
    await scene.approve("dpo2", alice)
    return Prepared(
        alice_granted=alice,
        alice_password=await scene.password("alice", alice),
        dpo_pending=await scene.request("dpo"),
        tom_pending=await scene.request("tom"),
    )


# (case, actor, action, target, expected status, expected error code or None)
#   actions: approve/deny/fetch (target: a Prepared field), fetch-with (right password of alice's grant),
#            request, list, break-glass, audit, verify
RULES: list[tuple[str, str, str, str, int, str | None]] = [
    ("a DPO cannot approve their own request", "dpo", "approve", "dpo_pending", 403, "forbidden"),
    ("a DPO cannot deny their own request", "dpo", "deny", "dpo_pending", 403, "forbidden"),
    ("another DPO approves a DPO's request", "dpo2", "approve", "dpo_pending", 200, None),
    ("a manager cannot approve", "bob", "approve", "tom_pending", 403, "forbidden"),
    ("a manager cannot approve their own request", "alice", "approve", "alice_granted", 403, "forbidden"),
    ("a tech_manager cannot approve", "tom", "approve", "dpo_pending", 403, "forbidden"),
    ("a tech_manager cannot deny", "tom", "deny", "dpo_pending", 403, "forbidden"),
    ("a DPO denies a tech_manager's request", "dpo", "deny", "tom_pending", 200, None),
    ("a decided request cannot be decided again", "dpo", "approve", "alice_granted", 409, "conflict"),
    ("a tech_manager cannot fetch a pending request", "tom", "fetch", "tom_pending", 403, "forbidden"),
    ("a tech_manager cannot fetch another's grant", "tom", "fetch-with", "alice_granted", 403, "forbidden"),
    ("a manager cannot fetch another's grant", "bob", "fetch-with", "alice_granted", 403, "forbidden"),
    ("a DPO cannot fetch another's grant", "dpo", "fetch-with", "alice_granted", 403, "forbidden"),
    ("the requester needs the right password", "alice", "fetch", "alice_granted", 403, "forbidden"),
    ("the requester fetches with the password", "alice", "fetch-with", "alice_granted", 200, None),
    ("an unknown request is not found", "dpo2", "approve", "req_missing", 404, "not_found"),
    ("a manager may request", "bob", "request", "", 201, None),
    ("a second DPO may request too", "dpo2", "request", "", 201, None),
    ("a tech_manager with a pending request is told so", "tom", "request", "", 409, "conflict"),
    ("a manager lists", "bob", "list", "", 200, None),
    ("an auditor cannot request", "audrey", "request", "", 403, "forbidden"),
    ("an auditor cannot list requests", "audrey", "list", "", 403, "forbidden"),
    ("an auditor cannot fetch", "audrey", "fetch-with", "alice_granted", 403, "forbidden"),
    ("an auditor cannot decide", "audrey", "approve", "tom_pending", 403, "forbidden"),
    ("an auditor cannot break the glass", "audrey", "break-glass", "", 403, "forbidden"),
    ("a tech_manager cannot break the glass", "tom", "break-glass", "", 403, "forbidden"),
    ("a manager cannot break the glass", "alice", "break-glass", "", 403, "forbidden"),
    ("a DPO breaks the glass with a reason", "dpo", "break-glass", "", 200, None),
    ("an auditor reads the audit trail", "audrey", "audit", "", 200, None),
    ("an auditor verifies the audit trail", "audrey", "verify", "", 200, None),
]


@pytest.mark.parametrize(("case", "actor", "action", "target", "status", "code"), RULES, ids=[r[0] for r in RULES])
async def test_flow_rules(
    scene: Scene, case: str, actor: str, action: str, target: str, status: int, code: str | None
) -> None:
    prepared = await prepare(scene)
    request_id = getattr(prepared, target, target)
    if action == "approve":
        got, body = await scene.call(actor, "POST", f"/v1/admin/access-requests/{request_id}/approve")
    elif action == "deny":
        got, body = await scene.call(
            actor, "POST", f"/v1/admin/access-requests/{request_id}/deny", {"reason": "not justified"}
        )
    elif action in ("fetch", "fetch-with"):
        password = prepared.alice_password if action == "fetch-with" else "a-wrong-guess"
        got, body = await scene.fetch(actor, request_id, password)
    elif action == "request":
        got, body = await scene.call(
            actor, "POST", f"/v1/admin/recordings/{scene.recording_id}/access-requests", {"reason": REASON}
        )
    elif action == "list":
        got, body = await scene.call(actor, "GET", "/v1/admin/access-requests")
    elif action == "break-glass":
        got, body = await scene.call(
            actor, "POST", f"/v1/admin/recordings/{scene.recording_id}/break-glass", {"reason": "court order 2026-17"}
        )
    elif action == "audit":
        got, body = await scene.call(actor, "GET", "/v1/admin/audit")
    else:
        got, body = await scene.call(actor, "GET", "/v1/admin/audit/verify")
    assert got == status, (case, body)
    if code is not None:
        assert body["error"]["code"] == code, (case, body)
        if action.startswith("fetch") and actor != "audrey":  # one message: no oracle for who or what was wrong
            assert body["error"]["message"] == FETCH_REFUSED
    if action in ("fetch-with", "break-glass") and got == 200:
        assert body == CONTENT
    if action == "approve" and request_id == prepared.dpo_pending and got == 403 and actor == "dpo":
        assert "four eyes" in body["error"]["message"]
        assert "break-glass" in body["error"]["message"]  # the way out with a single DPO


# --- the one-time password ------------------------------------------------------------------------


async def test_password_reaches_only_the_requester_once(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    request_id = await scene.request("alice")
    assert (await scene.listing("alice"))[request_id]["password"] is None  # not approved yet
    approved = await scene.approve("dpo2", request_id)
    assert approved["status"] == "approved"
    assert approved["expires_at"] == (scene.clock.now() + GRANT_TTL).isoformat()

    dpo_view = await scene.listing("dpo2")  # the approver lists first: no password for them
    assert dpo_view[request_id]["password"] is None
    assert dpo_view[request_id]["password_issued"] is False
    password = await scene.password("alice", request_id)
    again = await scene.listing("alice")
    assert again[request_id]["password"] is None  # never twice
    assert again[request_id]["password_issued"] is True
    assert (await scene.listing("dpo"))[request_id]["password"] is None

    # Neither the audit trail, nor the logs, nor the database files hold the password.
    exported = str([e.to_json() for e in scene.node.gateway.audit.entries()])
    assert password not in exported
    assert password not in caplog.text
    scene.node.gateway.db.fetch_one("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in scene.node.gateway.layout.root.rglob("telgate.sqlite*"):
        assert password.encode() not in path.read_bytes(), path
    with sqlite3.connect(scene.node.gateway.layout.database) as conn:
        (stored,) = conn.execute("SELECT password_hash FROM access_requests WHERE id = ?", (request_id,)).fetchone()
    conn.close()
    assert stored.startswith("$argon2id$")

    status, body = await scene.fetch("alice", request_id, password)
    assert status == 200
    assert body == CONTENT
    status, body = await scene.fetch("alice", request_id, password)
    assert status == 410
    assert body["error"]["code"] == "access.grant_used"
    assert [e.outcome for e in scene.audit("access.fetch")] == ["started", "completed", "refused-used"]
    assert [e.actor for e in scene.audit("access.grant.issue")] == ["alice"]
    listed = await scene.listing("alice")
    assert listed[request_id]["status"] == "used"


async def test_grant_expires_by_the_clock(scene: Scene) -> None:
    collected = await scene.request("alice")
    await scene.approve("dpo2", collected)
    password = await scene.password("alice", collected)
    never_viewed = await scene.request("bob")
    await scene.approve("dpo", never_viewed)

    scene.clock.advance(GRANT_TTL - timedelta(seconds=1))
    assert (await scene.listing("dpo"))[collected]["status"] == "approved"
    scene.clock.advance(timedelta(seconds=1))
    status, body = await scene.fetch("alice", collected, password)
    assert status == 410
    assert body["error"]["code"] == "access.grant_expired"
    listed = await scene.listing("bob")
    assert listed[never_viewed]["status"] == "expired"
    assert listed[never_viewed]["password"] is None  # an expired grant never issues a password
    await scene.listing("dpo")  # listing again audits nothing new
    expiries = scene.audit("access.expire")
    assert sorted(e.object for e in expiries) == sorted([collected, never_viewed])
    assert all(e.actor == "system" and e.reason == "grant expired unused" for e in expiries)
    # A new request after expiry is allowed (the old grant is over).
    await scene.request("alice")


async def test_denial_records_its_reason(scene: Scene) -> None:
    request_id = await scene.request("tom")
    status, body = await scene.call(
        "dpo", "POST", f"/v1/admin/access-requests/{request_id}/deny", {"reason": "no ticket on file"}
    )
    assert status == 200, body
    assert body["status"] == "denied"
    listed = (await scene.listing("tom"))[request_id]
    assert (listed["status"], listed["decided_by"], listed["decision_reason"]) == ("denied", "dpo", "no ticket on file")
    [entry] = scene.audit("access.deny")
    assert (entry.actor, entry.role, entry.object, entry.reason) == ("dpo", "dpo", request_id, "no ticket on file")
    assert entry.details["requester"] == "tom"
    status, body = await scene.call("dpo", "POST", f"/v1/admin/access-requests/{request_id}/deny", {"reason": " "})
    assert status == 400  # an empty reason is refused before anything else


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (None, 400),
        ({}, 400),
        ({"reason": ""}, 400),
        ({"reason": "   \t "}, 400),
        ({"reason": "because"}, 400),  # shorter than 10 characters
        ({"reason": 42}, 400),
        ({"reason": "caller 07700 900123 asked"}, 400),  # no phone number in the audit trail
        ({"reason": "subject access request ref SAR-2026-17"}, 200),
    ],
)
async def test_break_glass_needs_a_reason(scene: Scene, body: dict[str, Any] | None, status: int) -> None:
    got, answer = await scene.call("dpo", "POST", f"/v1/admin/recordings/{scene.recording_id}/break-glass", body)
    assert got == status, answer
    entries = scene.audit("recording.break_glass")
    if status == 200:
        assert answer == CONTENT
        assert [(e.actor, e.outcome, e.reason) for e in entries] == [
            ("dpo", "started", body["reason"]),  # type: ignore[index]
            ("dpo", "completed", body["reason"]),  # type: ignore[index]
        ]
    else:
        assert answer["error"]["code"] == "bad_request"
        assert entries == []


@pytest.mark.parametrize(
    "reason",
    ["", "too short", "call from 020 7946 0123 about billing", "ring +447700900456 back"],
)
async def test_request_reason_rules(scene: Scene, reason: str) -> None:
    status, body = await scene.call(
        "alice", "POST", f"/v1/admin/recordings/{scene.recording_id}/access-requests", {"reason": reason}
    )
    assert status == 400, body
    assert scene.audit("access.request") == []


async def test_request_rules(scene: Scene) -> None:
    status, body = await scene.call(
        "alice", "POST", "/v1/admin/recordings/rec_0000/access-requests", {"reason": REASON}
    )
    assert (status, body["error"]["code"]) == (404, "vault.recording_not_found")
    first = await scene.request("alice")
    status, body = await scene.call(
        "alice", "POST", f"/v1/admin/recordings/{scene.recording_id}/access-requests", {"reason": REASON}
    )
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert body["error"]["details"] == {"request_id": first}
    await scene.request("bob")  # another requester may ask for the same recording
    [entry, _] = scene.audit("access.request")
    assert (entry.actor, entry.role, entry.object, entry.reason) == ("alice", "manager", first, REASON)
    assert entry.details == {"recording_id": scene.recording_id, "tenant": "acme"}
    mine = await scene.listing("alice")
    assert list(mine) == [first]  # a manager sees only their own requests
    assert len(await scene.listing("dpo", pending=True)) == 2
    status, body = await scene.call("dpo", "GET", "/v1/admin/access-requests?limit=1")
    assert (status, len(body["requests"])) == (200, 1)
    status, body = await scene.call("dpo", "GET", "/v1/admin/access-requests?limit=zero")
    assert status == 400


async def test_a_shredded_recording_cannot_be_approved(scene: Scene) -> None:
    request_id = await scene.request("alice")
    scene.node.gateway.vault.shred(scene.recording_id, actor="dpo", role="dpo", reason="erasure", source="test")
    status, body = await scene.call("dpo", "POST", f"/v1/admin/access-requests/{request_id}/approve")
    assert (status, body["error"]["code"]) == (404, "vault.recording_shredded")


async def test_wrong_passwords_are_throttled(scene: Scene) -> None:
    request_id = await scene.request("alice")
    await scene.approve("dpo2", request_id)
    password = await scene.password("alice", request_id)
    limit = scene.node.gateway.settings.security.login_max_failures
    for _ in range(limit):
        status, _body = await scene.fetch("alice", request_id, "a-wrong-guess")
        assert status == 403
    status, body = await scene.fetch("alice", request_id, password)
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    scene.clock.advance(scene.node.gateway.settings.security.login_ban)
    status, body = await scene.fetch("alice", request_id, password)
    assert status == 200
    assert body == CONTENT
    outcomes = [e.outcome for e in scene.audit("access.fetch")]
    assert outcomes == ["refused"] * limit + ["refused-banned", "started", "completed"]


async def test_an_interrupted_transfer_spends_the_grant(
    scene: Scene, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession, dpo_token: str
) -> None:
    big = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three pieces
    async with http.post(
        scene.node.url + "/v1/admin/pbxs", json={"name": "pbx2", "tenant": "acme"}, headers=auth(dpo_token)
    ) as response:
        pbx_token = (await response.json())["token"]
    async with http.put(f"{scene.node.url}/v1/recordings/big-1", data=big, headers=auth(pbx_token)) as response:
        recording_id = (await response.json())["recording_id"]
    request_id = await scene.request("alice", recording_id=recording_id)
    await scene.approve("dpo2", request_id)
    password = await scene.password("alice", request_id)

    real_read_at = RecordingReader.read_at

    def failing_read_at(self: RecordingReader, offset: int, length: int) -> bytes:
        if offset > 0:
            raise CorruptRecordingError()
        return real_read_at(self, offset, length)

    monkeypatch.setattr(RecordingReader, "read_at", failing_read_at)
    async with http.post(
        f"{scene.node.url}/v1/admin/access-requests/{request_id}/fetch",
        json={"password": password},
        headers=auth(scene.tokens["alice"]),
    ) as response:
        assert response.status == 200
        assert response.content_length == len(big)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await scene.settled()
    monkeypatch.undo()
    finished = scene.audit("access.fetch")[-1]
    assert finished.outcome == "incomplete"
    assert finished.details["bytes_sent"] == 1024 * 1024
    status, body = await scene.fetch("alice", request_id, password)
    assert (status, body["error"]["code"]) == (410, "access.grant_used")


async def test_webhook_tells_dpos_of_a_pending_request(
    tmp_path: Path, clock: FakeClock, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[dict[str, Any]] = []
    delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        if len(received) == 1:
            return web.Response(status=503)  # the first attempt fails: it is retried
        delivered.set()
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = make_settings(tmp_path / "var", access={"webhook_url": f"http://127.0.0.1:{port}/hook"})
    _, dpo_password = initialise(settings, clock)
    assert dpo_password is not None
    monkeypatch.setattr(WebhookNotifier, "retry_delay", 0.0)
    node = await start_server(settings, clock)
    try:
        scene = await make_scene(node, http, await login(http, node, "dpo", dpo_password), clock)
        request_id = await scene.request("alice")
        await asyncio.wait_for(delivered.wait(), timeout=30)
        assert received[-1] == {
            "event": "access.request.pending",
            "request_id": request_id,
            "recording_id": scene.recording_id,
        }
        assert len(received) == 2
    finally:
        await node.stop()
        await runner.cleanup()


async def test_no_webhook_without_a_url(scene: Scene) -> None:
    notifier = scene.node.runner.app[NOTIFIER]
    assert notifier.url == ""
    await scene.request("alice")
    assert not notifier._tasks

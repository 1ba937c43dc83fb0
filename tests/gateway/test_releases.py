"""Releases end to end through a real node: admin API, the real gate, paramiko as the customer.

Acceptance shown here (issue 6): paramiko collects byte-identical recordings and the vault forgets
them (1); twenty concurrent logins from twenty addresses, one claim (2); dead and wrong credentials
fail alike, with distinct audit reasons, and the ban (3); a dropped half download destroys nothing,
resume and ``reissue`` (4); writes and escapes refused through the real gate (5). The other clients
(OpenSSH, curl, lftp) and the CLI are in test_releases_clients.py.

Customers on different machines are played by binding client sockets to 127.0.0.N.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import paramiko
import pytest

from gateway.db import utc_text
from gateway.errors import ERROR_TABLE
from gateway.releases import file_extension, release_file_name
from gateway.server import RunningServer, start_server
from gateway.wiring import initialise
from tests.conftest import auth, make_settings
from tests.fakes import FakeClock
from tests.sftp_clients import paramiko_login_failure, paramiko_sftp, paramiko_transport
from vault.blobs import LocalBlobStore
from vault.service import Recording
from vault.sftp import SFTP_FAILURE, SFTP_STATUS_BY_CODE

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

TENANT = "acme"


# --- helpers shared with test_releases_clients.py ------------------------------------------------------


def content(size: int, seed: int) -> bytes:
    """Reproducible random bytes (incompressible, like audio)."""
    return random.Random(seed).randbytes(size)


async def add_tenant(http: aiohttp.ClientSession, node: RunningServer, token: str, tenant: str = TENANT) -> str:
    """A customer tenant with one PBX; the PBX's token."""
    for path, body in (
        ("/v1/admin/customers", {"tenant": tenant, "name": f"{tenant} Ltd"}),
        ("/v1/admin/pbxs", {"name": f"pbx-{tenant}", "tenant": tenant}),
    ):
        async with http.post(node.url + path, json=body, headers=auth(token)) as response:
            assert response.status == 201, await response.text()
            answer = await response.json()
    return str(answer["token"])


async def upload(
    http: aiohttp.ClientSession,
    node: RunningServer,
    pbx_token: str,
    call_id: str,
    body: bytes,
    content_type: str = "audio/wav",
) -> str:
    """PUT a recording as a PBX does; its recording id."""
    async with http.put(
        f"{node.url}/v1/recordings/{call_id}", data=body, headers=auth(pbx_token) | {"Content-Type": content_type}
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["recording_id"])


async def create_release(
    http: aiohttp.ClientSession, node: RunningServer, token: str, **body: Any
) -> dict[str, Any]:
    """POST /v1/admin/releases; the credential answer."""
    async with http.post(f"{node.url}/v1/admin/releases", json=body, headers=auth(token)) as response:
        answer = await response.json()
        assert response.status == 201, answer
        return dict(answer)


async def admin(
    http: aiohttp.ClientSession, node: RunningServer, token: str, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """Any admin request; (status, JSON answer)."""
    async with http.request(method, node.url + path, json=body, headers=auth(token)) as response:
        return response.status, dict(await response.json())


def is_destroyed(node: RunningServer, recording_id: str) -> bool:
    """No key row, no blob file, a tombstone in the catalog."""
    gw = node.gateway
    key_row = gw.db.fetch_one("SELECT recording_id FROM recording_keys WHERE recording_id = ?", (recording_id,))
    blob = LocalBlobStore(gw.layout.recordings).path_of(gw.vault.get(recording_id).blob_id)
    return key_row is None and not blob.exists() and gw.vault.get(recording_id).shredded


def is_intact(node: RunningServer, recording_id: str) -> bool:
    """Key row and blob both present, not shredded."""
    gw = node.gateway
    key_row = gw.db.fetch_one("SELECT recording_id FROM recording_keys WHERE recording_id = ?", (recording_id,))
    blob = LocalBlobStore(gw.layout.recordings).path_of(gw.vault.get(recording_id).blob_id)
    return key_row is not None and blob.exists() and not gw.vault.get(recording_id).shredded


def refusals(node: RunningServer) -> list[tuple[str, str, str]]:
    """(actor, source, reason) of every refused SFTP login, in order."""
    return [
        (e.actor, e.source, e.reason)
        for e in node.gateway.audit.entries()
        if e.action == "release.login" and e.outcome == "refused"
    ]


def wait_for_connections_from(source: str) -> None:
    """Block until the server has finished with every connection from ``source`` (its threads end)."""
    for thread in threading.enumerate():
        if thread.name.startswith(f"telgate-sftp-{source}:"):
            thread.join(timeout=10)
            assert not thread.is_alive(), thread.name


def download_all(port: int, credential: dict[str, Any], out: Path, source: str | None = None) -> dict[str, bytes]:
    """Log in with paramiko and get every listed file; their contents by name."""
    got: dict[str, bytes] = {}
    with paramiko_sftp(port, credential["username"], credential["password"], source=source) as sftp:
        for name in sorted(sftp.listdir(".")):
            sftp.get(name, str(out / name))
            got[name] = (out / name).read_bytes()
        assert sftp.listdir(".") == []  # each file leaves the folder once collected
    return got


@pytest.fixture
async def pbx_token(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> str:
    """Tenant acme and its PBX."""
    return await add_tenant(http, node, dpo_token)


# --- pure parts -----------------------------------------------------------------------------------


# Gateway error codes the release gate can raise towards the SFTP server.
GATE_CODES = ["internal", "bad_request", "unauthenticated", "forbidden", "not_found", "conflict", "rate_limited",
              "backend_unavailable", "config"]  # fmt: skip


def test_sftp_statuses_agree_with_the_error_table() -> None:
    # vault/sftp.py keeps its own table (the vault cannot import gateway): where both know a code, they
    # agree; every vault code and every code the gate raises shows the status ERROR_TABLE gives it.
    for code, status in SFTP_STATUS_BY_CODE.items():
        if code in ERROR_TABLE:
            assert status == ERROR_TABLE[code].sftp_status, code
    reachable = [code for code in ERROR_TABLE if code.startswith("vault.")] + GATE_CODES
    for code in reachable:
        assert SFTP_STATUS_BY_CODE.get(code, SFTP_FAILURE) == ERROR_TABLE[code].sftp_status, code


def _recording(call_id: str, content_type: str) -> Recording:
    received = datetime(2025, 3, 4, 14, 5, 9, 123456, tzinfo=UTC)
    return Recording("rec_0123456789abcdef", TENANT, "pbx", call_id, content_type, 1, "", received, "rec_x")


@pytest.mark.parametrize(
    ("call_id", "content_type", "expected"),
    [
        ("1741097109.18", "audio/wav", "20250304T140509Z_1741097109.18.wav"),
        ("a84b4c76e66710@pc33.example.com", "audio/mpeg", "20250304T140509Z_a84b4c76e66710@pc33.example.com.mp3"),
        ("call id: 7;x", "audio/x-wav; codec=1", "20250304T140509Z_call_id__7_x.wav"),
        ("..hidden", "application/ogg", "20250304T140509Z_hidden.bin"),
        ("日本", "audio/wav", "20250304T140509Z_rec_0123456789abcdef.wav"),  # nothing file-safe left
    ],
)
def test_release_file_names(call_id: str, content_type: str, expected: str) -> None:
    assert release_file_name(_recording(call_id, content_type)) == expected


def test_file_names_prefer_the_call_time_and_never_hold_a_slash() -> None:
    call_time = datetime(2025, 3, 4, 15, 0, 1, tzinfo=UTC)
    assert release_file_name(_recording("1.2", "audio/wav"), call_time) == "20250304T150001Z_1.2.wav"
    name = release_file_name(_recording("../../etc/passwd", "audio/wav"))
    assert "/" not in name
    assert not name.startswith(".")
    assert file_extension("AUDIO/MPEG") == "mp3"
    assert file_extension("") == "bin"


# --- creating releases ------------------------------------------------------------------------------


async def test_create_shows_the_password_once_and_stores_only_an_argon2_hash(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, clock: FakeClock
) -> None:
    first = await upload(http, node, pbx_token, "1741097109.18", content(1000, 1))
    second = await upload(http, node, pbx_token, "1741097402.3", content(10, 2), "audio/mpeg")
    answer = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[first, second], ttl="24h")
    assert set(answer) == {"release_id", "tenant", "host", "port", "username", "password", "expires_at", "recordings"}
    assert answer["port"] == node.sftp_port
    assert answer["host"] == "127.0.0.1"
    assert answer["expires_at"] == (clock.now() + timedelta(hours=24)).isoformat()
    assert len(answer["password"]) >= 24
    stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
    assert answer["recordings"] == [
        {"recording_id": first, "name": f"{stamp}_1741097109.18.wav", "size": 1000},
        {"recording_id": second, "name": f"{stamp}_1741097402.3.mp3", "size": 10},
    ]
    password = answer["password"]

    status, listed = await admin(http, node, dpo_token, "GET", "/v1/admin/releases")
    assert status == 200
    assert [(r["release_id"], r["state"], r["recordings_pending"]) for r in listed["releases"]] == [
        (answer["release_id"], "open", 2)
    ]
    status, shown = await admin(http, node, dpo_token, "GET", f"/v1/admin/releases/{answer['release_id']}")
    assert status == 200
    assert [i["name"] for i in shown["recordings"]] == sorted(r["name"] for r in answer["recordings"])
    for document in (listed, shown):
        assert password not in str(document)

    stored = node.gateway.db.fetch_all("SELECT password_hash FROM release_credentials")
    assert [row["password_hash"].startswith("$argon2id$") for row in stored] == [True]
    assert all(password not in str(entry.to_json()) for entry in node.gateway.audit.entries())
    node.gateway.db.fetch_one("PRAGMA wal_checkpoint(TRUNCATE)")
    database = node.gateway.layout.database
    for path in (database, Path(f"{database}-wal")):
        if path.exists():
            assert password.encode() not in path.read_bytes()
    created = [e for e in node.gateway.audit.entries() if e.action == "release.create"]
    assert [(e.actor, e.object, e.details["recordings"]) for e in created] == [("dpo", answer["release_id"], 2)]


async def test_create_refuses_what_must_not_be_released(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str
) -> None:
    mine = await upload(http, node, pbx_token, "mine", b"audio")
    other_pbx = await add_tenant(http, node, dpo_token, "globex")
    theirs = await upload(http, node, other_pbx, "theirs", b"audio")
    shredded = await upload(http, node, pbx_token, "gone", b"audio")
    node.gateway.vault.shred(shredded, actor="dpo", role="dpo", reason="test", source="test")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"tenant": TENANT, "recordings": [theirs]}, 404, "not_found"),  # another tenant's recording
        ({"tenant": TENANT, "recordings": [mine, theirs]}, 404, "not_found"),
        ({"tenant": TENANT, "recordings": [shredded]}, 409, "conflict"),
        ({"tenant": TENANT, "recordings": ["rec_unknown"]}, 404, "not_found"),
        ({"tenant": "nobody", "recordings": [mine]}, 404, "not_found"),
        ({"tenant": TENANT, "recordings": [mine], "since": "2026-01-01", "until": "2026-12-31"}, 400, "bad_request"),
        ({"tenant": TENANT}, 400, "bad_request"),
        ({"tenant": TENANT, "since": "2020-01-01", "until": "2020-02-01"}, 404, "not_found"),
        ({"tenant": TENANT, "since": "2026-02-01", "until": "2026-01-01"}, 400, "bad_request"),
        ({"tenant": TENANT, "since": "2026-01-01T00:00:00", "until": "2026-12-31"}, 400, "bad_request"),
        ({"tenant": TENANT, "recordings": [mine], "ttl": "31d"}, 400, "bad_request"),  # over release.max_ttl
        ({"tenant": TENANT, "recordings": [mine], "ttl": "soon"}, 400, "bad_request"),
    ]
    for body, expected_status, expected_code in cases:
        status, answer = await admin(http, node, dpo_token, "POST", "/v1/admin/releases", body)
        assert (status, answer["error"]["code"]) == (expected_status, expected_code), body
    assert node.gateway.releases.releases() == []


async def test_create_by_period_takes_only_that_period(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, clock: FakeClock
) -> None:
    start = clock.now()
    before = await upload(http, node, pbx_token, "before", b"a")
    clock.advance(timedelta(hours=4))
    inside = [await upload(http, node, pbx_token, f"in-{n}", b"b") for n in range(3)]
    clock.advance(timedelta(hours=4))
    after = await upload(http, node, pbx_token, "after", b"c")  # at `until`, which is exclusive
    since, until = (start + timedelta(hours=1)).isoformat(), (start + timedelta(hours=8)).isoformat()
    answer = await create_release(http, node, dpo_token, tenant=TENANT, since=since, until=until)
    released = {r["recording_id"] for r in answer["recordings"]}
    assert released == set(inside)
    assert before not in released
    assert after not in released


@pytest.mark.parametrize("flushed", [True, False], ids=["cdrs-in-the-lake", "cdrs-still-staged"])
async def test_restricted_subjects_are_not_released_and_names_use_the_call_time(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, flushed: bool
) -> None:
    # The link from a recording to its subjects is the CDR of the same call, from its 202 on.
    cdrs = [
        {"id": "c-1", "call_id": "crm-1001", "start": "2025-03-04T14:05:09Z", "caller": "020 7946 0123"},
        {"id": "c-2", "call_id": "crm-1002", "start": "2025-03-04T15:00:00Z", "caller": "07700 900123"},
    ]
    body = "".join(json.dumps(cdr | {"callee": "601"}) + "\n" for cdr in cdrs).encode()
    headers = auth(pbx_token) | {"Content-Type": "application/x-ndjson"}
    async with http.post(f"{node.url}/v1/cdr/json", data=body, headers=headers) as response:
        assert response.status == 202, await response.text()
    if flushed:
        assert await node.gateway.flusher.flush_now() == 2
    with node.gateway.db.transaction() as tx:
        assert node.gateway.subjects.set_restricted(tx, "+447700900123", True) == 1
    fine = await upload(http, node, pbx_token, "crm-1001", b"audio")
    restricted = await upload(http, node, pbx_token, "crm-1002", b"audio")
    unknown = await upload(http, node, pbx_token, "no-cdr", b"audio")

    status, answer = await admin(
        http, node, dpo_token, "POST", "/v1/admin/releases", {"tenant": TENANT, "recordings": [fine, restricted]}
    )
    assert (status, answer["error"]["code"]) == (409, "conflict")
    assert answer["error"]["details"] == {"recordings": [restricted]}
    assert node.gateway.releases.releases() == []
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[fine, unknown])
    stamp = node.gateway.clock.now().strftime("%Y%m%dT%H%M%SZ")
    assert [r["name"] for r in credential["recordings"]] == ["20250304T140509Z_crm-1001.wav", f"{stamp}_no-cdr.wav"]
    # A subject restricted after the release was made: reissue checks again.
    with node.gateway.db.transaction() as tx:
        node.gateway.subjects.set_restricted(tx, "+442079460123", True)
    path = f"/v1/admin/releases/{credential['release_id']}/reissue"
    status, answer = await admin(http, node, dpo_token, "POST", path)
    assert (status, answer["error"]["code"], answer["error"]["details"]) == (409, "conflict", {"recordings": [fine]})


# --- acceptance 1 (paramiko) ------------------------------------------------------------------------


async def test_paramiko_collects_byte_identical_and_the_vault_forgets(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, tmp_path: Path
) -> None:
    bodies = {"1741097109.18": content(1024 * 1024 + 17, 1), "1741097402.3": content(100 * 1024, 2), "empty": b""}
    ids = {call: await upload(http, node, pbx_token, call, body) for call, body in bodies.items()}
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=list(ids.values()))
    names = {r["recording_id"]: r["name"] for r in credential["recordings"]}

    got = await asyncio.to_thread(download_all, node.sftp_port, credential, tmp_path, "127.0.0.5")
    assert got == {names[ids[call]]: body for call, body in bodies.items()}
    for recording_id in ids.values():
        assert is_destroyed(node, recording_id)

    collected = [e for e in node.gateway.audit.entries() if e.action == "release.collect"]
    assert sorted((e.object, e.actor, e.role, e.source, e.details["file"]) for e in collected) == sorted(
        (rid, credential["username"], "customer", "127.0.0.5", names[rid]) for rid in ids.values()
    )
    assert [e.details["remaining"] for e in collected] == [2, 1, 0]
    shreds = [e for e in node.gateway.audit.entries() if e.action == "recording.shred"]
    assert {(e.object, e.reason, e.source) for e in shreds} == {
        (rid, "collected by customer", "127.0.0.5") for rid in ids.values()
    }
    _, shown = await admin(http, node, dpo_token, "GET", f"/v1/admin/releases/{credential['release_id']}")
    assert shown["state"] == "collected"
    assert {(i["collected_by"], i["shredded"]) for i in shown["recordings"]} == {("127.0.0.5", True)}
    # Everything collected: the credential is dead, even from the address that claimed it.
    await asyncio.to_thread(
        paramiko_login_failure, node.sftp_port, credential["username"], credential["password"], source="127.0.0.5"
    )
    assert refusals(node)[-1] == (credential["username"], "127.0.0.5", "consumed")


# --- acceptance 2 ---------------------------------------------------------------------------------


def _race(port: int, username: str, password: str, sources: list[str]) -> dict[str, paramiko.Transport | None]:
    """Log in from every source at once; the transports that got in (the others are None)."""
    barrier = threading.Barrier(len(sources))

    def attempt(source: str) -> paramiko.Transport | None:
        transport = paramiko_transport(port, source)
        try:
            transport.start_client(timeout=30)
            barrier.wait(timeout=30)
            transport.auth_password(username, password)
        except paramiko.AuthenticationException:
            transport.close()
            return None
        except BaseException:
            transport.close()
            raise
        return transport

    with ThreadPoolExecutor(max_workers=len(sources)) as pool:
        return dict(zip(sources, pool.map(attempt, sources), strict=True))


async def test_twenty_concurrent_logins_from_twenty_addresses_claim_once(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, tmp_path: Path
) -> None:
    bodies = [content(64 * 1024, n) for n in range(3)]
    ids = [await upload(http, node, pbx_token, f"race-{n}", body) for n, body in enumerate(bodies)]
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=ids)
    user, password = credential["username"], credential["password"]
    sources = [f"127.0.0.{n}" for n in range(2, 22)]

    results = await asyncio.to_thread(_race, node.sftp_port, user, password, sources)
    winners = [source for source, transport in results.items() if transport is not None]
    assert len(winners) == 1, winners
    winner = winners[0]
    first_session = results[winner]
    assert first_session is not None
    try:
        assert sorted(source for _, source, reason in refusals(node) if reason == "wrong-address") == sorted(
            set(sources) - {winner}
        )
        row = node.gateway.db.fetch_one(
            "SELECT claimed_by, sessions FROM release_credentials WHERE username = ?", (user,)
        )
        assert row == {"claimed_by": winner, "sessions": 1}
        # A second session from the winning address works (FileZilla's transfer connection, curl's next
        # command) and collects everything; none works afterwards, from anywhere.
        got = await asyncio.to_thread(download_all, node.sftp_port, credential, tmp_path, winner)
        assert sorted(got.values()) == sorted(bodies)
        assert all(is_destroyed(node, rid) for rid in ids)
        for source in (winner, sources[0] if winner != sources[0] else sources[1]):
            await asyncio.to_thread(paramiko_login_failure, node.sftp_port, user, password, source=source)
        assert [reason for _, _, reason in refusals(node)[-2:]] == ["consumed", "consumed"]
    finally:
        first_session.close()


# --- acceptance 3 ---------------------------------------------------------------------------------


async def test_dead_and_wrong_credentials_fail_alike_with_distinct_audit_reasons(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def release(call_id: str, **extra: Any) -> dict[str, Any]:
        recording = await upload(http, node, pbx_token, call_id, content(2048, len(call_id)))
        return await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording], **extra)

    fresh, expiring, revoked, consumed, claimed = (
        await release("fresh"),
        await release("expiring", ttl="1h"),
        await release("revoked"),
        await release("consumed"),
        await release("claimed"),
    )
    status, _ = await admin(http, node, dpo_token, "POST", f"/v1/admin/releases/{revoked['release_id']}/revoke")
    assert status == 200
    await asyncio.to_thread(download_all, node.sftp_port, consumed, tmp_path, "127.0.0.34")
    with paramiko_sftp(node.sftp_port, claimed["username"], claimed["password"], source="127.0.0.35") as sftp:
        assert len(sftp.listdir()) == 1  # claimed by .35, still open
        clock.advance(timedelta(hours=2))  # past the 1h credential's expiry
        attempts = [
            ("127.0.0.30", fresh["username"], "not the password"),
            ("127.0.0.31", "rel-nobody", fresh["password"]),
            ("127.0.0.32", expiring["username"], expiring["password"]),
            ("127.0.0.33", revoked["username"], revoked["password"]),
            ("127.0.0.34", consumed["username"], consumed["password"]),
            ("127.0.0.36", claimed["username"], claimed["password"]),
        ]
        failures = [
            await asyncio.to_thread(paramiko_login_failure, node.sftp_port, user, pw, source=source)
            for source, user, pw in attempts
        ]
    assert {(type(f), str(f)) for f in failures} == {(paramiko.AuthenticationException, "Authentication failed.")}
    assert refusals(node) == [
        (fresh["username"], "127.0.0.30", "wrong-password"),
        ("rel-nobody", "127.0.0.31", "unknown-user"),
        (expiring["username"], "127.0.0.32", "expired"),
        (revoked["username"], "127.0.0.33", "revoked"),
        (consumed["username"], "127.0.0.34", "consumed"),
        (claimed["username"], "127.0.0.36", "wrong-address"),
    ]
    # Still usable by its rightful owner: the fresh credential was not harmed by the wrong password.
    got = await asyncio.to_thread(download_all, node.sftp_port, fresh, tmp_path, "127.0.0.30")
    assert len(got) == 1


async def test_the_ban_engages_after_max_failures_and_refuses_even_the_right_password(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, clock: FakeClock, tmp_path: Path
) -> None:
    settings = node.gateway.settings.release
    recording = await upload(http, node, pbx_token, "ban", content(4096, 7))
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording])
    user, password, attacker = credential["username"], credential["password"], "127.0.0.40"
    wrong = [
        await asyncio.to_thread(paramiko_login_failure, node.sftp_port, user, f"guess {n}", source=attacker)
        for n in range(settings.max_failures)
    ]
    banned = await asyncio.to_thread(paramiko_login_failure, node.sftp_port, user, password, source=attacker)
    failure = (paramiko.AuthenticationException, "Authentication failed.")
    assert {(type(f), str(f)) for f in [*wrong, banned]} == {failure}
    assert [reason for _, _, reason in refusals(node)] == ["wrong-password"] * settings.max_failures + ["banned"]
    last_failure = [e for e in node.gateway.audit.entries() if e.reason == "wrong-password"][-1]
    assert last_failure.details == {"failures": settings.max_failures, "banned": True}
    assert node.gateway.db.fetch_all("SELECT claimed_by FROM release_credentials") == [{"claimed_by": None}]

    clock.advance(settings.ban + timedelta(seconds=1))  # the ban is over: the right password works again
    got = await asyncio.to_thread(download_all, node.sftp_port, credential, tmp_path, attacker)
    assert list(got.values()) == [content(4096, 7)]


# --- acceptance 4 ---------------------------------------------------------------------------------


def _read_half_and_drop(port: int, credential: dict[str, Any], name: str, source: str) -> bytes:
    """Open ``name``, read half of it, then drop the TCP connection without any SSH goodbye."""
    transport = paramiko_transport(port, source)
    try:
        transport.connect(username=credential["username"], password=credential["password"])
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        remote = sftp.open(name)
        size = remote.stat().st_size
        assert size is not None
        half = remote.read(size // 2)
    finally:
        transport.close()
    wait_for_connections_from(source)
    return half


async def test_half_a_download_destroys_nothing_and_the_same_address_finishes(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, tmp_path: Path
) -> None:
    body = content(512 * 1024, 11)
    recording = await upload(http, node, pbx_token, "broken-1", body)
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording])
    name = credential["recordings"][0]["name"]
    half = await asyncio.to_thread(_read_half_and_drop, node.sftp_port, credential, name, "127.0.0.50")
    assert half == body[: len(body) // 2]
    assert is_intact(node, recording)
    assert not [e for e in node.gateway.audit.entries() if e.action in {"release.collect", "recording.shred"}]

    got = await asyncio.to_thread(download_all, node.sftp_port, credential, tmp_path, "127.0.0.50")
    assert got == {name: body}
    assert is_destroyed(node, recording)


async def test_reissue_gives_a_new_credential_for_a_new_address_and_kills_the_old(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, tmp_path: Path
) -> None:
    bodies = {"done": content(8192, 21), "broken": content(256 * 1024, 22)}
    ids = {call: await upload(http, node, pbx_token, call, body) for call, body in bodies.items()}
    old = await create_release(http, node, dpo_token, tenant=TENANT, recordings=list(ids.values()))
    names = {r["recording_id"]: r["name"] for r in old["recordings"]}
    with paramiko_sftp(node.sftp_port, old["username"], old["password"], source="127.0.0.60") as sftp:
        sftp.get(names[ids["done"]], str(tmp_path / "done"))
    await asyncio.to_thread(_read_half_and_drop, node.sftp_port, old, names[ids["broken"]], "127.0.0.60")
    assert is_destroyed(node, ids["done"])
    assert is_intact(node, ids["broken"])

    status, new = await admin(http, node, dpo_token, "POST", f"/v1/admin/releases/{old['release_id']}/reissue")
    assert status == 200, new
    assert new["release_id"] == old["release_id"]
    assert new["username"] != old["username"]
    assert new["password"] != old["password"]
    assert [r["recording_id"] for r in new["recordings"]] == [ids["broken"]]  # only what is left
    await asyncio.to_thread(
        paramiko_login_failure, node.sftp_port, old["username"], old["password"], source="127.0.0.60"
    )
    assert refusals(node)[-1] == (old["username"], "127.0.0.60", "revoked")
    got = await asyncio.to_thread(download_all, node.sftp_port, new, tmp_path, "127.0.0.61")  # a new address
    assert got == {names[ids["broken"]]: bodies["broken"]}
    assert is_destroyed(node, ids["broken"])
    reissued = [e for e in node.gateway.audit.entries() if e.action == "release.reissue"]
    assert [(e.details["previous_username"], e.details["username"]) for e in reissued] == [
        (old["username"], new["username"])
    ]
    status, answer = await admin(http, node, dpo_token, "POST", f"/v1/admin/releases/{old['release_id']}/reissue")
    assert (status, answer["error"]["code"]) == (409, "conflict")  # nothing left to collect


async def test_reissue_after_expiry(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str, clock: FakeClock, tmp_path: Path
) -> None:
    body = content(1000, 31)
    recording = await upload(http, node, pbx_token, "late", body)
    old = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording], ttl="1h")
    clock.advance(timedelta(hours=1))
    await asyncio.to_thread(paramiko_login_failure, node.sftp_port, old["username"], old["password"])
    status, listed = await admin(http, node, dpo_token, "GET", "/v1/admin/releases")
    assert listed["releases"][0]["state"] == "expired"
    status, new = await admin(
        http, node, dpo_token, "POST", f"/v1/admin/releases/{old['release_id']}/reissue", {"ttl": "2h"}
    )
    assert status == 200, new
    assert new["expires_at"] == (clock.now() + timedelta(hours=2)).isoformat()
    got = await asyncio.to_thread(download_all, node.sftp_port, new, tmp_path)
    assert list(got.values()) == [body]
    assert [reason for _, _, reason in refusals(node)] == ["expired"]


# --- sessions ---------------------------------------------------------------------------------------


async def test_revocation_ends_what_an_open_session_can_see(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str
) -> None:
    recording = await upload(http, node, pbx_token, "revoke-me", b"audio")
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording])
    name = credential["recordings"][0]["name"]
    with paramiko_sftp(node.sftp_port, credential["username"], credential["password"]) as sftp:
        assert sftp.listdir() == [name]
        status, answer = await admin(
            http, node, dpo_token, "POST", f"/v1/admin/releases/{credential['release_id']}/revoke"
        )
        assert (status, answer["state"]) == (200, "revoked")
        assert sftp.listdir() == []
        with pytest.raises(FileNotFoundError):
            sftp.open(name)
    status, again = await admin(http, node, dpo_token, "POST", f"/v1/admin/releases/{credential['release_id']}/revoke")
    assert status == 200
    assert again["revoked_at"] == answer["revoked_at"]  # idempotent
    assert len([e for e in node.gateway.audit.entries() if e.action == "release.revoke"]) == 1
    assert is_intact(node, recording)
    status, answer = await admin(http, node, dpo_token, "POST", "/v1/admin/releases/rls_unknown/revoke")
    assert status == 404


async def test_strict_mode_allows_exactly_one_session(tmp_path: Path, clock: FakeClock) -> None:
    settings = make_settings(tmp_path / "strict", release={"strict_single_session": True})
    initialise(settings, clock)
    strict = await start_server(settings, clock)
    try:
        pbx = _direct_tenant(strict)
        recording = strict.gateway.vault.store([b"one", b"two"], tenant=TENANT, pbx=pbx, call_id="s1",
                                               content_type="audio/wav").recording  # fmt: skip
        issued = strict.gateway.releases.create(
            tenant=TENANT, recording_ids=[recording.recording_id], actor="dpo", role="dpo", source="test"
        )
        with paramiko_sftp(strict.sftp_port, issued.username, issued.password) as sftp:
            assert len(sftp.listdir()) == 1
            await asyncio.to_thread(paramiko_login_failure, strict.sftp_port, issued.username, issued.password)
        assert refusals(strict)[-1] == (issued.username, "127.0.0.1", "consumed")
    finally:
        await strict.stop()


def _direct_tenant(node: RunningServer) -> str:
    """Tenant acme and a PBX, made through the stores (no operator session needed)."""
    gw = node.gateway
    with gw.db.transaction() as tx:
        gw.principals.add_customer(tx, TENANT, "Acme Ltd", gw.clock.now())
        gw.principals.add_pbx(tx, "pbx-acme", TENANT, "Europe/London", "GB", None, gw.clock.now())
    return "pbx-acme"


# --- acceptance 5 -----------------------------------------------------------------------------------


async def test_writes_and_escapes_are_refused_through_the_real_gate(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str
) -> None:
    recording = await upload(http, node, pbx_token, "guarded", content(4096, 41))
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording])
    name = credential["recordings"][0]["name"]
    secret_dir = node.gateway.layout.recordings
    with paramiko_sftp(node.sftp_port, credential["username"], credential["password"]) as sftp:
        writes = [
            lambda: sftp.open("new.wav", "w"),
            lambda: sftp.open(name, "w"),
            lambda: sftp.open(name, "a"),
            lambda: sftp.open(name, "r+"),
            lambda: sftp.mkdir("incoming"),
            lambda: sftp.remove(name),
            lambda: sftp.rename(name, "other.wav"),
            lambda: sftp.chmod(name, 0o777),
            lambda: sftp.truncate(name, 0),
            lambda: sftp.symlink("/etc/passwd", "passwd"),
            lambda: sftp.symlink(str(secret_dir), "vault"),
            lambda: sftp.readlink(name),
        ]
        for attempt in writes:
            with pytest.raises(PermissionError):
                attempt()
        escapes = [
            "/etc/passwd",
            "../../etc/passwd",
            f"{name}/../../../etc/passwd",
            "~/../etc/passwd",
            str(secret_dir),
            f"../{secret_dir.name}",
            "passwd",
            "vault",
            f"vault/{name}",
        ]
        for path in escapes:
            with pytest.raises(FileNotFoundError):
                sftp.stat(path)
            with pytest.raises(FileNotFoundError):
                sftp.open(path)
        with pytest.raises(FileNotFoundError):
            sftp.listdir("/etc")
        assert sftp.normalize("../../..") == "/"
        assert sftp.listdir("/") == [name]
        mode = sftp.stat("/").st_mode
        assert mode is not None
        assert stat.S_IMODE(mode) == 0o500
    assert is_intact(node, recording)


# --- the metadata store ----------------------------------------------------------------------------


async def test_a_claim_is_a_conditional_update(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str
) -> None:
    # The claim must not depend on one process's lock: two stores on two connections to one database
    # (as two nodes would be) race, and exactly one wins.
    recording = await upload(http, node, pbx_token, "two-nodes", b"audio")
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=[recording])
    database = node.gateway.layout.database
    with sqlite3.connect(database) as other_node:
        changed = other_node.execute(
            "UPDATE release_credentials SET claimed_by = '127.0.0.99', claimed_at = ?, sessions = 1"
            " WHERE username = ? AND claimed_by IS NULL AND revoked_at IS NULL",
            (utc_text(node.gateway.clock.now()), credential["username"]),
        ).rowcount
    other_node.close()
    assert changed == 1
    claim = node.gateway.releases.claim(credential["username"], "127.0.0.1", node.gateway.clock.now(), strict=False)
    assert (claim.session, claim.reason) == (None, "wrong-address")

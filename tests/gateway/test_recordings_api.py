"""PUT /v1/recordings/{call_id} against a real node, and the vault's admin routes.

Acceptance shown here: no plaintext at rest (a marker uploaded over HTTP is found nowhere under the data
directory, SQLite and WAL included); a shredded recording and a pre-rotation copy of the key store are
useless; uploads are streamed in pieces of at most 1 MiB while the body is still arriving.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.routes_vault import PIECE_SIZE
from gateway.server import RunningServer
from tests.conftest import add_operator, auth, login
from tests.fakes import FakeClock
from vault.errors import KeyNotFoundError
from vault.keyring import LocalKeyring
from vault.ports import WrappedKey
from vault.service import RecordingUpload

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

MARKER = b"TGMARK:plaintext-must-never-rest:"  # appears only in recording bodies


@pytest.fixture
async def pbx_token(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> str:
    """A PBX of tenant acme."""
    for path, body in (
        ("/v1/admin/customers", {"tenant": "acme", "name": "Acme Ltd"}),
        ("/v1/admin/pbxs", {"name": "pbx1", "tenant": "acme"}),
    ):
        async with http.post(node.url + path, json=body, headers=auth(dpo_token)) as response:
            assert response.status == 201, await response.text()
            answer = await response.json()
    return str(answer["token"])


async def put(
    http: aiohttp.ClientSession, node: RunningServer, token: str, call_id: str, body: Any, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.put(f"{node.url}/v1/recordings/{call_id}", data=body, headers=auth(token) | headers) as response:
        return response.status, await response.json()


async def pieces(total: int, size: int = 256 * 1024, pattern: bytes = MARKER) -> AsyncIterator[bytes]:
    """A chunked request body of ``total`` bytes made of ``pattern``."""
    block = (pattern * (size // len(pattern) + 1))[:size]
    sent = 0
    while sent < total:
        step = min(size, total - sent)
        yield block[:step]
        sent += step


def at_rest(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_upload_stores_encrypted_with_metadata(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str, clock: FakeClock
) -> None:
    content = MARKER * 10_000
    status, answer = await put(http, node, pbx_token, "1712345678.42", content, **{"Content-Type": "audio/wav"})
    assert status == 201, answer
    assert set(answer) == {"recording_id", "call_id", "size", "sha256"}
    assert answer["call_id"] == "1712345678.42"
    assert answer["size"] == len(content)
    assert answer["sha256"] == hashlib.sha256(content).hexdigest()
    async with http.get(f"{node.url}/v1/admin/recordings", headers=auth(dpo_token)) as response:
        listed = (await response.json())["recordings"]
    assert [(r["recording_id"], r["tenant"], r["pbx"], r["content_type"]) for r in listed] == [
        (answer["recording_id"], "acme", "pbx1", "audio/wav")
    ]
    assert listed[0]["received_at"] == clock.now().isoformat()
    with node.gateway.vault.open_reader(answer["recording_id"]) as reader:
        assert reader.read_at(0, reader.size) == content


async def test_pbx_authentication(http: aiohttp.ClientSession, node: RunningServer, pbx_token: str) -> None:
    async with http.put(f"{node.url}/v1/recordings/c1", data=b"x") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
    status, answer = await put(http, node, "tgp_forged", "c1", b"x")
    assert status == 401
    assert set(answer["error"]) == {"code", "message", "details"}
    basic = base64.b64encode(f"pbx1:{pbx_token}".encode()).decode()  # FreeSWITCH cred=user:pass
    async with http.put(
        f"{node.url}/v1/recordings/c1", data=b"x", headers={"Authorization": f"Basic {basic}"}
    ) as response:
        assert response.status == 201
    assert list(node.gateway.layout.recordings.rglob(".*.tmp")) == []


@pytest.mark.parametrize("call_id", ["x" * 129, "a%2Fb", "tab%09here", "back%5Cslash"])
async def test_bad_call_ids_are_refused(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, call_id: str
) -> None:
    status, answer = await put(http, node, pbx_token, call_id, b"audio")
    assert status in (400, 404), answer
    assert answer["error"]["code"] in ("bad_request", "not_found")
    assert node.gateway.vault.list_recordings(include_shredded=True) == []


async def test_sip_call_id_is_accepted(http: aiohttp.ClientSession, node: RunningServer, pbx_token: str) -> None:
    status, answer = await put(http, node, pbx_token, "a84b4c76e66710@pc33.example.com", b"audio")
    assert status == 201, answer
    assert answer["call_id"] == "a84b4c76e66710@pc33.example.com"


async def test_duplicate_and_conflicting_uploads(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str
) -> None:
    status, first = await put(http, node, pbx_token, "dup-1", b"same audio" * 1000)
    assert status == 201
    status, again = await put(http, node, pbx_token, "dup-1", pieces(10_000, 770, b"same audio"))
    assert status == 200, again
    assert again["recording_id"] == first["recording_id"]
    status, conflict = await put(http, node, pbx_token, "dup-1", b"different audio")
    assert status == 409
    assert conflict["error"]["code"] == "vault.recording_conflict"
    assert list(node.gateway.vault.blobs.iter_ids()) == [first["recording_id"]]  # new blobs discarded
    stores = [e for e in node.gateway.audit.entries() if e.action == "recording.store"]
    assert [(e.actor, e.role, e.outcome, e.source) for e in stores] == [
        ("pbx1", "pbx", "ok", "127.0.0.1"),
        ("pbx1", "pbx", "duplicate", "127.0.0.1"),
    ]
    assert stores[0].details == {"tenant": "acme", "call_id": "dup-1", "size": 10_000}


async def test_size_limit(http: aiohttp.ClientSession, node: RunningServer, pbx_token: str) -> None:
    node.gateway.vault.max_recording_bytes = 1024 * 1024
    status, answer = await put(http, node, pbx_token, "big-1", b"x" * (1024 * 1024 + 1))  # Content-Length
    assert status == 413
    assert answer["error"]["code"] == "vault.recording_too_large"
    status, answer = await put(http, node, pbx_token, "big-2", pieces(3 * 1024 * 1024))  # chunked
    assert status == 413
    async with http.put(
        f"{node.url}/v1/recordings/big-3", data=b"x" * (2 * 1024 * 1024), headers=auth(pbx_token), expect100=True
    ) as response:
        assert response.status == 413  # refused before the body was sent
    status, answer = await put(http, node, pbx_token, "fits", b"x" * (1024 * 1024))
    assert status == 201
    assert [r.call_id for r in node.gateway.vault.list_recordings(include_shredded=True)] == ["fits"]
    assert [p.name for p in node.gateway.layout.recordings.rglob("*") if p.is_file()] == [answer["recording_id"]]


async def test_expect_continue_upload(http: aiohttp.ClientSession, node: RunningServer, pbx_token: str) -> None:
    async with http.put(
        f"{node.url}/v1/recordings/curl-1", data=b"a" * 100_000, headers=auth(pbx_token), expect100=True
    ) as response:
        assert response.status == 201
    async with http.put(
        f"{node.url}/v1/recordings/curl-2", data=b"a", headers=auth("tgp_bad"), expect100=True
    ) as response:
        assert response.status == 401


async def test_upload_is_streamed_in_bounded_pieces(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 20 * 1024 * 1024
    sent = 0
    seen: list[tuple[int, int]] = []  # (piece length, bytes the client had sent when it was handed over)
    real_write = RecordingUpload.write_parts
    loop = asyncio.get_running_loop()
    first_piece = asyncio.Event()

    def spy(self: RecordingUpload, parts: list[memoryview]) -> None:  # runs on an upload thread
        assert all(isinstance(part, memoryview) for part in parts)  # views of aiohttp's buffers, not copies
        seen.append((sum(len(part) for part in parts), sent))
        loop.call_soon_threadsafe(first_piece.set)
        real_write(self, parts)

    monkeypatch.setattr(RecordingUpload, "write_parts", spy)

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        async for piece in pieces(total, 128 * 1024, b"streamed"):
            sent += len(piece)
            yield piece
            if sent == total // 2:
                # The rest is sent only once the server has begun encrypting: a server that waited for
                # the whole body would never get it. (Counting bytes alone cannot show this: loopback
                # socket buffers take tens of MB before the server reads any of it.)
                await asyncio.wait_for(first_piece.wait(), timeout=60)

    status, answer = await put(http, node, pbx_token, "stream-1", body())
    assert status == 201, answer
    assert answer["size"] == total
    assert sum(length for length, _ in seen) == total
    assert max(length for length, _ in seen) <= PIECE_SIZE
    assert {length for length, _ in seen[:-1]} == {PIECE_SIZE}  # full pieces until the end of the body
    assert len(seen) >= total // PIECE_SIZE
    assert seen[0][1] <= total // 2  # encryption began before the body had been sent


async def test_no_plaintext_at_rest(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str
) -> None:
    """Acceptance 3: every byte under the data directory, database and WAL included, is marker-free."""
    node.gateway.vault.max_recording_bytes = 4 * 1024 * 1024
    uploads = [
        ("m-1", MARKER),
        ("m-2", MARKER * 2000),  # several 64 KiB chunks
        ("m-3", pieces(3 * 1024 * 1024 + 5)),  # chunked, pieces of 256 KiB
        ("m-4", MARKER * (65536 // len(MARKER) + 1)),
    ]
    for call_id, body in uploads:
        status, answer = await put(http, node, pbx_token, call_id, body, **{"Content-Type": "audio/wav"})
        assert status == 201, answer
    assert (await put(http, node, pbx_token, "m-2", MARKER * 2000))[0] == 200  # duplicate, blob discarded
    assert (await put(http, node, pbx_token, "m-2", MARKER * 2001))[0] == 409  # conflict, blob discarded
    assert (await put(http, node, pbx_token, "m-5", pieces(5 * 1024 * 1024)))[0] == 413  # aborted midway
    recordings = node.gateway.vault.list_recordings()
    node.gateway.vault.shred(recordings[0].recording_id, actor="dpo", role="dpo", reason="test", source="test")
    async with http.post(f"{node.url}/v1/admin/keys/rotate", headers=auth(dpo_token)) as response:
        assert response.status == 200
    files = at_rest(node.gateway.settings.data_dir)
    assert any(path.name.endswith("-wal") for path in files)
    assert len([p for p in files if p.parent.parent.parent == node.gateway.layout.recordings]) == 3
    for path, content in files.items():
        assert MARKER not in content, f"plaintext found in {path}"
        assert MARKER[:16] not in content, f"plaintext found in {path}"
    await node.stop()  # and once the database is closed and checkpointed
    for path, content in at_rest(node.gateway.settings.data_dir).items():
        assert MARKER[:16] not in content, f"plaintext found in {path}"


async def test_shred_over_a_live_node_leaves_no_key(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str
) -> None:
    """Acceptance 4a: after shredding, the blob copy and the keyring are not enough."""
    status, answer = await put(http, node, pbx_token, "shred-1", MARKER * 100)
    assert status == 201
    await put(http, node, pbx_token, "shred-2", b"stays")
    vault = node.gateway.vault
    recording_id = answer["recording_id"]
    wrapped = vault.key_store.wrapped_key(recording_id)
    assert wrapped is not None
    saved_blob = vault.blobs.open_reader(recording_id).read()
    result = vault.shred(recording_id, actor="dpo", role="dpo", reason="erasure request", source="127.0.0.1")
    assert result.shredded_now
    assert wrapped.ciphertext not in saved_blob
    for path, content in at_rest(node.gateway.settings.data_dir).items():
        assert wrapped.ciphertext not in content, path
    async with http.get(
        f"{node.url}/v1/admin/recordings", params={"include_shredded": "1"}, headers=auth(dpo_token)
    ) as response:
        listed = {r["call_id"]: r for r in (await response.json())["recordings"]}
    assert listed["shred-1"]["shred_reason"] == "erasure request"
    assert listed["shred-1"]["shredded_at"] is not None
    # A new upload for the same call is a new recording.
    status, again = await put(http, node, pbx_token, "shred-1", MARKER * 100)
    assert status == 201
    assert again["recording_id"] != recording_id


async def test_saved_key_store_useless_after_rotate_and_retire(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str, tmp_path: Path
) -> None:
    """Acceptance 4b: copy the SQLite file before rotation; after rotate + retire it unwraps nothing."""
    ids = [(await put(http, node, pbx_token, f"k-{n}", MARKER * (n + 1)))[1]["recording_id"] for n in range(5)]
    backup = tmp_path / "before-rotation.sqlite"
    with sqlite3.connect(node.gateway.layout.database) as source, sqlite3.connect(backup) as target:
        source.backup(target)
    source.close()
    target.close()

    async with http.post(
        f"{node.url}/v1/admin/keys/rotate", headers=auth(dpo_token) | {"Accept": "application/x-ndjson"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines[0] == {"progress": {"done": 0, "total": 5, "unit": "rows"}}
    assert lines[-2] == {"progress": {"done": 5, "total": 5, "unit": "rows"}}
    assert lines[-1]["result"] == {"version": 2, "previous_version": 1, "total": 5, "rewrapped": 5, "failed": []}
    async with http.post(f"{node.url}/v1/admin/keys/1/retire", headers=auth(dpo_token)) as response:
        assert response.status == 200, await response.text()

    keyring = LocalKeyring.load(node.gateway.layout.keyring)
    assert keyring.versions() == [2]
    with sqlite3.connect(backup) as conn:
        saved = conn.execute("SELECT recording_id, key_version, wrapped FROM recording_keys").fetchall()
    conn.close()
    assert sorted(row[0] for row in saved) == sorted(ids)
    for recording_id, version, ciphertext in saved:
        assert version == 1
        with pytest.raises(KeyNotFoundError):
            keyring.unwrap(WrappedKey(version, bytes(ciphertext)), recording_id.encode())
    for n, recording_id in enumerate(ids):  # the live store still reads every recording
        with node.gateway.vault.open_reader(recording_id) as reader:
            assert reader.read_at(0, reader.size) == MARKER * (n + 1)


async def test_keys_list_and_retire_rules(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str
) -> None:
    await put(http, node, pbx_token, "r-1", b"audio")
    async with http.get(f"{node.url}/v1/admin/keys", headers=auth(dpo_token)) as response:
        listed = await response.json()
    assert listed == {"current_version": 1, "versions": [{"version": 1, "state": "current", "rows": 1}]}
    async with http.post(f"{node.url}/v1/admin/keys/1/retire", headers=auth(dpo_token)) as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "vault.key_in_use"
    node.gateway.vault.keys.rotate()  # a new version, rows not yet rewrapped
    async with http.post(f"{node.url}/v1/admin/keys/1/retire", headers=auth(dpo_token)) as response:
        assert response.status == 409
        assert "1 key row" in (await response.json())["error"]["message"]
    for path, status in (("/v1/admin/keys/7/retire", 404), ("/v1/admin/keys/one/retire", 400)):
        async with http.post(node.url + path, headers=auth(dpo_token)) as response:
            assert response.status == status
    actions = [e.action for e in node.gateway.audit.entries()]
    assert "keys.retire" not in actions


async def test_verify_reports_damage(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str
) -> None:
    good = (await put(http, node, pbx_token, "v-1", MARKER * 5000))[1]["recording_id"]
    bad = (await put(http, node, pbx_token, "v-2", MARKER * 5000))[1]["recording_id"]
    async with http.post(f"{node.url}/v1/admin/vault/verify", headers=auth(dpo_token)) as response:
        report = await response.json()
    assert report == {"ok": True, "checked": 2, "bytes_checked": 2 * len(MARKER) * 5000, "damaged": []}
    path = node.gateway.vault.blobs.path_of(bad)  # type: ignore[attr-defined]
    damaged = bytearray(path.read_bytes())
    damaged[-500] ^= 0x80
    path.write_bytes(bytes(damaged))
    async with http.post(
        f"{node.url}/v1/admin/vault/verify", headers=auth(dpo_token) | {"Accept": "application/x-ndjson"}
    ) as response:
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert all(line["progress"]["unit"] == "bytes" for line in lines[:-1])
    result = lines[-1]["result"]
    assert result["ok"] is False
    assert result["damaged"] == [{"recording_id": bad, "problem": "failed authentication"}]
    assert good not in json.dumps(result)
    verifies = [e for e in node.gateway.audit.entries() if e.action == "vault.verify"]
    assert [e.outcome for e in verifies] == ["ok", "damaged"]
    assert verifies[-1].details["damaged"] == [bad]


async def test_listing_filters_and_is_audited(
    http: aiohttp.ClientSession, node: RunningServer, pbx_token: str, dpo_token: str, clock: FakeClock
) -> None:
    from datetime import timedelta

    password = await add_operator(http, node, dpo_token, "alice", "manager")
    manager = await login(http, node, "alice", password)
    await put(http, node, pbx_token, "l-1", b"old")
    clock.advance(timedelta(hours=2))
    await put(http, node, pbx_token, "l-2", b"new")
    since = (clock.now() - timedelta(hours=1)).isoformat()
    today, tomorrow = clock.now().date(), clock.now().date() + timedelta(days=1)
    for query, expected in (
        ({}, ["l-1", "l-2"]),
        ({"since": since}, ["l-2"]),
        ({"since": today.isoformat()}, ["l-1", "l-2"]),
        ({"since": tomorrow.isoformat()}, []),
        ({"tenant": "acme"}, ["l-1", "l-2"]),
        ({"tenant": "globex"}, []),
        ({"limit": "1"}, ["l-1"]),
    ):
        async with http.get(f"{node.url}/v1/admin/recordings", params=query, headers=auth(manager)) as response:
            assert response.status == 200
            assert [r["call_id"] for r in (await response.json())["recordings"]] == expected, query
    for bad in ({"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}, {"limit": "0"}):
        async with http.get(f"{node.url}/v1/admin/recordings", params=bad, headers=auth(manager)) as response:
            assert response.status == 400, bad
    listings = [e for e in node.gateway.audit.entries() if e.action == "recordings.list"]
    assert len(listings) == 7
    assert listings[1].actor == "alice"
    assert listings[1].details["count"] == 1

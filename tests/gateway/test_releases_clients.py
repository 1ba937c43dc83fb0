"""Releases collected by real SFTP clients from a running node, and the real ``telgate release`` CLI.

Acceptance 1 (issue 6): a PBX uploads recordings over HTTP, an operator creates a release (through
the admin API, and once through the CLI in a subprocess), then OpenSSH ``sftp -b``, curl ``sftp://``
and lftp download them byte-identical (paramiko: test_releases.py), and the recordings are then gone
from the vault: no ``recording_keys`` row, no blob file. Acceptance 5 with OpenSSH's client.

A missing client skips, or fails under ``TELGATE_REQUIRE_SFTP_CLIENTS=1`` (tests/sftp_clients.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.server import RunningServer
from tests.conftest import cli_env
from tests.gateway.test_releases import (
    TENANT,
    add_tenant,
    admin,
    content,
    create_release,
    is_destroyed,
    is_intact,
    refusals,
    upload,
    wait_for_connections_from,
)
from tests.sftp_clients import curl_sftp, lftp_get, openssh_sftp, require

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

TELGATE = str(Path(sys.executable).with_name("telgate"))

CALLS = {
    "1741097109.18": (content(1024 * 1024 + 5, 101), "audio/wav"),
    "a84b4c76e66710@pc33.example.com": (content(70 * 1024, 102), "audio/mpeg"),
    "1741097717.9": (b"", "application/octet-stream"),
}


async def arun(args: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[int, str, str]:
    """Run the real CLI without blocking the event loop that serves the node under test."""
    process = await asyncio.create_subprocess_exec(
        TELGATE, *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli_login(tmp_path: Path, node: RunningServer, dpo_password: str) -> dict[str, str]:
    """``telgate login`` as the first DPO; the environment of that CLI session."""
    env = cli_env(tmp_path / "cli")
    login = ["login", "--url", node.url, "--user", "dpo", "--password-stdin"]
    code, _, err = await arun(login, env, dpo_password + "\n")
    assert code == 0, err
    return env


@pytest.fixture
async def uploaded(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> dict[str, bytes]:
    """Tenant acme with three recordings uploaded by its PBX: content by recording id."""
    pbx_token = await add_tenant(http, node, dpo_token)
    return {
        await upload(http, node, pbx_token, call_id, body, content_type): body
        for call_id, (body, content_type) in CALLS.items()
    }


def files_by_name(credential: dict[str, Any], uploaded: dict[str, bytes]) -> dict[str, bytes]:
    """What the customer should receive: content by released file name."""
    return {r["name"]: uploaded[r["recording_id"]] for r in credential["recordings"]}


def assert_collected(node: RunningServer, credential: dict[str, Any], source: str) -> None:
    """Every recording of the release destroyed, and its collection audited from ``source``."""
    for released in credential["recordings"]:
        assert is_destroyed(node, released["recording_id"]), released
    collected = {
        e.object: (e.actor, e.source)
        for e in node.gateway.audit.entries()
        if e.action == "release.collect" and e.details["release_id"] == credential["release_id"]
    }
    assert collected == {r["recording_id"]: (credential["username"], source) for r in credential["recordings"]}


async def test_openssh_sftp_collects_a_release_the_cli_created(
    tmp_path: Path, node: RunningServer, dpo_password: str, uploaded: dict[str, bytes]
) -> None:
    require("sftp", "openssh-client")
    env = await cli_login(tmp_path, node, dpo_password)
    args = ["release", "create", "--tenant", TENANT, "--ttl", "48h", "--json"]
    for recording_id in uploaded:
        args += ["--recording", recording_id]
    code, out, err = await arun(args, env)
    assert code == 0, err
    credential = json.loads(out)
    assert set(credential) >= {"release_id", "host", "port", "username", "password", "expires_at", "recordings"}
    assert (credential["host"], credential["port"]) == ("127.0.0.1", node.sftp_port)
    expected = files_by_name(credential, uploaded)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    commands = ["ls -l", *(f"get {name} {downloads / name}" for name in expected)]
    result = await asyncio.to_thread(
        openssh_sftp, tmp_path, credential["port"], commands,
        username=credential["username"], password=credential["password"], bind_address="127.0.0.70",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name, body in expected.items():
        assert name in result.stdout
        assert (downloads / name).read_bytes() == body
    assert_collected(node, credential, "127.0.0.70")

    code, out, err = await arun(["release", "list", "--json"], env)
    assert code == 0, err
    [listed] = json.loads(out)["releases"]
    assert (listed["release_id"], listed["state"], listed["recordings_collected"]) == (
        credential["release_id"], "collected", 3
    )  # fmt: skip
    assert credential["password"] not in out
    code, out, _ = await arun(["release", "list"], env | {"COLUMNS": "200"})
    assert credential["release_id"] in out  # a human table
    assert "collected" in out
    code, out, err = await arun(["release", "show", credential["release_id"], "--json"], env)
    assert code == 0, err
    assert {r["collected_by"] for r in json.loads(out)["recordings"]} == {"127.0.0.70"}
    # The credential is dead now: OpenSSH is refused like any wrong password.
    again = await asyncio.to_thread(
        openssh_sftp, tmp_path, credential["port"], ["ls"],
        username=credential["username"], password=credential["password"], bind_address="127.0.0.70",
    )  # fmt: skip
    assert again.returncode == 255
    assert "Permission denied" in again.stderr
    assert refusals(node)[-1] == (credential["username"], "127.0.0.70", "consumed")


async def test_cli_revoke_reissue_and_errors(
    tmp_path: Path, node: RunningServer, dpo_password: str, uploaded: dict[str, bytes]
) -> None:
    env = await cli_login(tmp_path, node, dpo_password)
    code, out, err = await arun(
        ["release", "create", "--tenant", TENANT, "--since", "2026-01-01", "--until", "2027-01-01"], env
    )
    assert code == 0, err
    assert "password" in out  # the human form prints the credential once
    release_id = node.gateway.releases.releases()[0].release_id
    old_username = node.gateway.releases.releases()[0].username

    code, out, err = await arun(["release", "reissue", release_id, "--ttl", "2h", "--json"], env)
    assert code == 0, err
    reissued = json.loads(out)
    assert reissued["release_id"] == release_id
    assert reissued["username"] != old_username
    assert len(reissued["recordings"]) == 3
    code, out, err = await arun(["release", "revoke", release_id, "--json"], env)
    assert code == 0, err
    assert json.loads(out)["state"] == "revoked"
    code, out, _ = await arun(["release", "reissue", release_id, "--json"], env)
    assert (code, json.loads(out)["error"]["code"]) == (65, "conflict")  # a revoked release stays dead
    code, out, _ = await arun(["release", "revoke", "rls_nothing", "--json"], env)
    assert (code, json.loads(out)["error"]["code"]) == (66, "not_found")
    code, _, _ = await arun(["release", "create", "--tenant", TENANT, "--since", "2026-01-01"], env)
    assert code == 2  # usage: --until missing
    code, out, _ = await arun(["release", "create", "--tenant", TENANT, "--recording", "rec_x", "--json"], env)
    assert (code, json.loads(out)["error"]["code"]) == (66, "not_found")
    assert all(is_intact(node, recording_id) for recording_id in uploaded)


async def test_curl_collects_logging_in_once_per_file(
    tmp_path: Path, http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, uploaded: dict[str, bytes]
) -> None:
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=list(uploaded))
    expected = files_by_name(credential, uploaded)
    for name, body in expected.items():  # curl logs in for every file: later sessions from the same address
        out = tmp_path / name
        result = await asyncio.to_thread(
            curl_sftp, node.sftp_port, name, out,
            username=credential["username"], password=credential["password"], bind_address="127.0.0.71",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == body
    assert_collected(node, credential, "127.0.0.71")
    sessions = node.gateway.db.fetch_one(
        "SELECT sessions FROM release_credentials WHERE username = ?", (credential["username"],)
    )
    assert sessions == {"sessions": len(expected)}
    denied = await asyncio.to_thread(
        curl_sftp, node.sftp_port, next(iter(expected)), tmp_path / "again",
        username=credential["username"], password=credential["password"], bind_address="127.0.0.71",
    )  # fmt: skip
    assert denied.returncode == 67  # CURLE_LOGIN_DENIED: the credential died with the last file


async def test_lftp_collects_with_get_then_bye(
    tmp_path: Path, http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, uploaded: dict[str, bytes]
) -> None:
    # No trailing command: lftp may hang up before closing the last file; its clean goodbye closes it.
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=list(uploaded))
    expected = files_by_name(credential, uploaded)
    result = await asyncio.to_thread(
        lftp_get, tmp_path, node.sftp_port, list(expected),
        username=credential["username"], password=credential["password"], bind_address="127.0.0.72",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name, body in expected.items():
        assert (tmp_path / name).read_bytes() == body
    wait_for_connections_from("127.0.0.72")  # the goodbye may be handled after lftp exits
    assert_collected(node, credential, "127.0.0.72")


async def test_openssh_sftp_refusals_through_the_real_gate(
    tmp_path: Path, http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, uploaded: dict[str, bytes]
) -> None:
    credential = await create_release(http, node, dpo_token, tenant=TENANT, recordings=list(uploaded))
    name = credential["recordings"][0]["name"]
    upload_file = tmp_path / "upload.wav"
    upload_file.write_bytes(b"RIFF")
    refused = [
        f"-put {upload_file} new.wav",
        f"-put {upload_file} {name}",
        "-mkdir incoming",
        f"-rm {name}",
        f"-rename {name} other.wav",
        f"-chmod 777 {name}",
        "-ln -s /etc/passwd passwd",
        f"-ln -s {node.gateway.layout.recordings} vault",
    ]
    missing = ["../../etc/passwd", "/etc/passwd", "passwd", f"vault/{name}", str(node.gateway.layout.database)]
    commands = refused + [f"-get {path} {tmp_path / 'stolen'}" for path in missing] + ["ls -l"]
    result = await asyncio.to_thread(
        openssh_sftp, tmp_path, node.sftp_port, commands,
        username=credential["username"], password=credential["password"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    errors = result.stderr.splitlines()
    assert sum("Permission denied" in line for line in errors) == len(refused), result.stderr
    assert sum("not found" in line for line in errors) == len(missing), result.stderr
    assert not (tmp_path / "stolen").exists()
    assert all(r["name"] in result.stdout for r in credential["recordings"])
    assert all(is_intact(node, recording_id) for recording_id in uploaded)
    status, shown = await admin(http, node, dpo_token, "GET", f"/v1/admin/releases/{credential['release_id']}")
    assert (status, shown["recordings_collected"]) == (200, 0)

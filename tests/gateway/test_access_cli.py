"""The access flow through the real ``telgate`` executable (subprocesses) against a running node.

Acceptance shown here: (1) a manager requests, the DPO approves, the manager fetches byte-identical
content once, the second fetch fails, and the audit trail shows each step with actors and reasons;
(2) and (3) through the CLI: self-approval, roles, the auditor, expiry by the injected clock, denial
with a reason, break-glass needs a reason; (4) the ``--json`` output of every access command parses.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.routes_access import TRANSFERS
from gateway.server import RunningServer
from gateway.settings import Settings
from tests.conftest import auth, cli_env, make_settings
from tests.fakes import FakeClock
from tests.gateway.test_cli import arun

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

CONTENT = bytes(range(256)) * (12 * 1024) + b"end"  # 3 MiB and a bit: several pieces, a progress bar
REASON = "complaint INC0012345: quality check of the call"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A node whose grants live two hours (sessions live twelve)."""
    return make_settings(tmp_path / "var", access={"grant_ttl": "2h"})


@dataclass
class Cli:
    """Runs the CLI as one operator (their own saved session)."""

    env: dict[str, str]

    async def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        return await arun(list(args), self.env, stdin)

    async def json(self, *args: str, code: int = 0, stdin: str | None = None) -> Any:
        """Run with --json; the exit code must be ``code``; stdout is one JSON document."""
        got, out, err = await self.run(*args, "--json", stdin=stdin)
        assert got == code, (args, got, out, err)
        return json.loads(out)


async def as_operator(tmp_path: Path, node: RunningServer, name: str, password: str) -> Cli:
    cli = Cli(cli_env(tmp_path / f"cli-{name}") | {"COLUMNS": "250"})  # human tables without wrapping
    document = await cli.json("login", "--url", node.url, "--user", name, "--password-stdin", stdin=password + "\n")
    assert document["user"] == name
    return cli


@pytest.fixture
async def recording_id(node: RunningServer, http: aiohttp.ClientSession, dpo_token: str) -> str:
    """A PBX of tenant acme uploads one recording."""
    for path, body in (
        ("/v1/admin/customers", {"tenant": "acme", "name": "Acme Ltd"}),
        ("/v1/admin/pbxs", {"name": "pbx1", "tenant": "acme"}),
    ):
        async with http.post(node.url + path, json=body, headers=auth(dpo_token)) as response:
            assert response.status == 201, await response.text()
            token = (await response.json()).get("token")
    async with http.put(f"{node.url}/v1/recordings/1712345678.42", data=CONTENT, headers=auth(token)) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["recording_id"])


@pytest.fixture
async def dpo(tmp_path: Path, node: RunningServer, dpo_password: str) -> Cli:
    return await as_operator(tmp_path, node, "dpo", dpo_password)


async def add(tmp_path: Path, node: RunningServer, dpo: Cli, name: str, role: str) -> Cli:
    created = await dpo.json("operator", "add", name, "--role", role)
    return await as_operator(tmp_path, node, name, created["password"])


def no_leftovers(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.endswith(".part")] == []


async def test_request_approve_fetch_once_end_to_end(
    tmp_path: Path, node: RunningServer, dpo: Cli, recording_id: str
) -> None:
    alice = await add(tmp_path, node, dpo, "alice", "manager")
    listed = await alice.json("recordings", "list")
    assert [r["recording_id"] for r in listed["recordings"]] == [recording_id]

    requested = await alice.json("access", "request", recording_id, "--reason", REASON)
    request_id = requested["request_id"]
    assert (requested["status"], requested["requester"], requested["reason"]) == ("pending", "alice", REASON)

    queue = await dpo.json("access", "list", "--pending")
    assert [(r["request_id"], r["password"]) for r in queue["requests"]] == [(request_id, None)]
    code, out, _ = await dpo.run("access", "list", "--pending")
    assert code == 0
    assert request_id in out  # a human table
    assert "pending" in out

    approved = await dpo.json("access", "approve", request_id, "--note", "checked with the team lead")
    assert approved["status"] == "approved"
    assert approved["decided_by"] == "dpo"
    assert "password" not in approved
    assert all(r["password"] is None for r in (await dpo.json("access", "list"))["requests"])

    mine = await alice.json("access", "list")
    [grant] = mine["requests"]
    password = grant["password"]
    assert isinstance(password, str)
    assert len(password) >= 20
    code, out, _ = await alice.run("access", "list")
    assert code == 0
    assert password not in out  # shown once only
    assert "approved" in out

    target = tmp_path / "call.wav"
    code, out, err = await alice.run(
        "access", "fetch", request_id, "--password", password, "--out", str(target), "--json"
    )
    assert code == 0, err
    fetched = json.loads(out)
    assert fetched == {
        "request_id": request_id,
        "recording_id": recording_id,
        "content_type": "application/octet-stream",
        "size": len(CONTENT),
        "sha256": hashlib.sha256(CONTENT).hexdigest(),
        "out": str(target),
    }
    assert target.read_bytes() == CONTENT
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    again = tmp_path / "again.wav"
    second = await alice.json("access", "fetch", request_id, "--password", password, "--out", str(again), code=77)
    assert second["error"]["code"] == "access.grant_used"
    assert not again.exists()
    no_leftovers(tmp_path)
    assert (await alice.json("access", "list"))["requests"][0]["status"] == "used"

    await node.runner.app[TRANSFERS].idle()  # the server has audited the transfer's outcome
    code, out, _ = await dpo.run("audit", "export", "--json")
    assert code == 0
    assert password not in out
    steps = [
        (e["action"], e["actor"], e["role"], e["object"], e["reason"], e["outcome"])
        for e in json.loads(out)["entries"]
        if e["action"].startswith("access.")
    ]
    assert steps == [
        ("access.request", "alice", "manager", request_id, REASON, "ok"),
        ("access.approve", "dpo", "dpo", request_id, REASON, "ok"),
        ("access.grant.issue", "alice", "manager", request_id, REASON, "ok"),
        ("access.fetch", "alice", "manager", request_id, REASON, "started"),
        ("access.fetch", "alice", "manager", request_id, REASON, "completed"),
        ("access.fetch", "alice", "manager", request_id, "", "refused-used"),
    ]
    approval = next(e for e in json.loads(out)["entries"] if e["action"] == "access.approve")
    assert approval["details"]["note"] == "checked with the team lead"
    assert approval["details"]["requester"] == "alice"
    assert (await dpo.json("audit", "verify"))["ok"] is True


async def test_rules_through_the_cli(
    tmp_path: Path, node: RunningServer, dpo: Cli, recording_id: str, clock: FakeClock
) -> None:
    alice = await add(tmp_path, node, dpo, "alice", "manager")
    tom = await add(tmp_path, node, dpo, "tom", "tech_manager")
    audrey = await add(tmp_path, node, dpo, "audrey", "auditor")

    # A single DPO cannot approve their own request; the message says why and what to do.
    own = (await dpo.json("access", "request", recording_id, "--reason", "my own look at this call"))["request_id"]
    code, _, err = await dpo.run("access", "approve", own)
    assert code == 77
    assert "four eyes" in err
    assert "break-glass" in err

    # A manager cannot approve; a tech_manager cannot fetch without a grant.
    toms = (await tom.json("access", "request", recording_id, "--reason", "line fault ticket INC0099887"))["request_id"]
    refused = await alice.json("access", "approve", toms, code=77)
    assert refused["error"]["code"] == "forbidden"
    refused = await tom.json("access", "fetch", toms, "--password", "guess", "--out", str(tmp_path / "t.wav"), code=77)
    assert refused["error"]["code"] == "forbidden"
    assert not (tmp_path / "t.wav").exists()

    # A denial records its reason, which the requester sees.
    denied = await dpo.json("access", "deny", toms, "--reason", "no fault on file for this line")
    assert (denied["status"], denied["decision_reason"]) == ("denied", "no fault on file for this line")
    code, out, _ = await tom.run("access", "list")
    assert "denied" in out
    assert "no fault on file" in out

    # An auditor reads and verifies the trail, and nothing else.
    assert (await audrey.json("audit", "verify"))["ok"] is True
    assert (await audrey.json("audit", "export"))["entries"]
    for args in (
        ("access", "list"),
        ("access", "request", recording_id, "--reason", REASON),
        ("recordings", "list"),
        ("recordings", "get", recording_id, "--reason", REASON, "--out", str(tmp_path / "a.wav")),
    ):
        assert (await audrey.json(*args, code=77))["error"]["code"] == "forbidden", args

    # Refusing to overwrite happens before the grant is spent; --force replaces.
    alices = (await alice.json("access", "request", recording_id, "--reason", REASON))["request_id"]
    await as_second_dpo_approve(tmp_path, node, dpo, alices)
    password = (await alice.json("access", "list"))["requests"][0]["password"]
    existing = tmp_path / "existing.wav"
    existing.write_bytes(b"keep me")
    code, _, err = await alice.run("access", "fetch", alices, "--password", password, "--out", str(existing))
    assert code == 65
    assert "--force" in err
    assert existing.read_bytes() == b"keep me"
    code, out, err = await alice.run(
        "access", "fetch", alices, "--password-stdin", "--out", str(existing), "--force", stdin=password + "\n"
    )
    assert code == 0, err
    assert existing.read_bytes() == CONTENT
    no_leftovers(tmp_path)

    # Grants expire by the injected clock.
    late = (await tom.json("access", "request", recording_id, "--reason", "second look at INC0099887"))["request_id"]
    await dpo.json("access", "approve", late)
    late_password = (await find(tom, late))["password"]
    clock.advance(timedelta(hours=2))
    expired = await tom.json(
        "access", "fetch", late, "--password", late_password, "--out", str(tmp_path / "late.wav"), code=77
    )
    assert expired["error"]["code"] == "access.grant_expired"
    assert (await find(tom, late))["status"] == "expired"

    # Break-glass: DPO only, reason mandatory, audited as such.
    out_file = tmp_path / "glass.wav"
    code, _, err = await dpo.run("recordings", "get", recording_id, "--out", str(out_file))
    assert code == 2  # usage: --reason is required
    assert "--reason" in err
    short = await dpo.json("recordings", "get", recording_id, "--reason", "because", "--out", str(out_file), code=65)
    assert short["error"]["code"] == "bad_request"
    refused = await tom.json("recordings", "get", recording_id, "--reason", REASON, "--out", str(out_file), code=77)
    assert refused["error"]["code"] == "forbidden"
    assert not out_file.exists()
    glass = await dpo.json(
        "recordings", "get", recording_id, "--reason", "court order 2026/0412, no second DPO", "--out", str(out_file)
    )
    assert (glass["recording_id"], glass["size"]) == (recording_id, len(CONTENT))
    assert out_file.read_bytes() == CONTENT
    missing = await dpo.json(
        "recordings", "get", "rec_missing", "--reason", REASON, "--out", str(tmp_path / "m.wav"), code=66
    )
    assert missing["error"]["code"] == "vault.recording_not_found"
    no_leftovers(tmp_path)
    await node.runner.app[TRANSFERS].idle()
    entries = [e for e in node.gateway.audit.entries() if e.action == "recording.break_glass"]
    assert [(e.actor, e.outcome, e.reason) for e in entries] == [
        ("dpo", "started", "court order 2026/0412, no second DPO"),
        ("dpo", "completed", "court order 2026/0412, no second DPO"),
    ]


async def find(cli: Cli, request_id: str) -> dict[str, Any]:
    """One request as ``cli``'s operator lists it."""
    listed = await cli.json("access", "list")
    [found] = [r for r in listed["requests"] if r["request_id"] == request_id]
    return dict(found)


async def as_second_dpo_approve(tmp_path: Path, node: RunningServer, dpo: Cli, request_id: str) -> None:
    """A second DPO approves (either DPO may, as long as they did not ask)."""
    second = await add(tmp_path, node, dpo, "dpo2", "dpo")
    approved = await second.json("access", "approve", request_id)
    assert approved["decided_by"] == "dpo2"

"""The real ``telgate`` executable: recordings list, keys list/rotate/retire, vault verify, and init's keyring."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import aiohttp
import pytest

from gateway.server import RunningServer
from tests.conftest import add_operator, auth, cli_env
from tests.gateway.test_cli import FAST_ENV, arun, run

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")


async def upload(http: aiohttp.ClientSession, node: RunningServer, token: str, call_id: str, body: bytes) -> str:
    async with http.put(f"{node.url}/v1/recordings/{call_id}", data=body, headers=auth(token)) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["recording_id"])


@pytest.fixture
async def pbx_token(http: aiohttp.ClientSession, node: RunningServer, dpo_token: str) -> str:
    for path, body in (
        ("/v1/admin/customers", {"tenant": "acme", "name": "Acme Ltd"}),
        ("/v1/admin/pbxs", {"name": "pbx1", "tenant": "acme"}),
    ):
        async with http.post(node.url + path, json=body, headers=auth(dpo_token)) as response:
            assert response.status == 201
            answer = await response.json()
    return str(answer["token"])


async def cli_login(node: RunningServer, config: Path, user: str, password: str) -> dict[str, str]:
    env = cli_env(config)
    code, _, err = await arun(["login", "--url", node.url, "--user", user, "--password-stdin"], env, password + "\n")
    assert code == 0, err
    return env


def test_init_creates_the_keyring_once(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cli") | FAST_ENV
    data = tmp_path / "var"
    first = run(["init", "--data", str(data), "--json"], env)
    assert first.returncode == 0, first.stderr
    keyring = data / "vault" / "keyring.json"
    assert str(keyring) in json.loads(first.stdout)["created"]
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    before = keyring.read_bytes()
    second = run(["init", "--data", str(data), "--json"], env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["created"] == []
    assert keyring.read_bytes() == before  # never overwritten


async def test_recordings_keys_and_verify_end_to_end(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    node: RunningServer,
    dpo_password: str,
    dpo_token: str,
    pbx_token: str,
) -> None:
    env = await cli_login(node, tmp_path / "dpo", "dpo", dpo_password)
    ids = [await upload(http, node, pbx_token, f"call-{n}", b"audio " * (n + 1) * 1000) for n in range(3)]

    code, out, err = await arun(["recordings", "list", "--json"], env)
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(r["recording_id"] for r in listed["recordings"]) == sorted(ids)  # same received_at: by id
    assert set(listed["recordings"][0]) == {
        "recording_id", "tenant", "pbx", "call_id", "content_type", "size", "sha256", "received_at",
        "shredded_at", "shred_reason",
    }  # fmt: skip
    code, out, _ = await arun(["recordings", "list", "--tenant", "globex", "--since", "2026-01-01", "--json"], env)
    assert json.loads(out)["recordings"] == []
    code, out, _ = await arun(["recordings", "list"], env)
    assert ids[0] in out
    assert "call-0" in out

    code, out, _ = await arun(["keys", "list", "--json"], env)
    assert json.loads(out) == {"current_version": 1, "versions": [{"version": 1, "state": "current", "rows": 3}]}

    code, out, err = await arun(["keys", "rotate"], env)  # human: progress bar on stderr
    assert code == 0, err
    assert "rotated to version 2: 3 of 3 key rows rewrapped" in out
    assert "rewrapping key rows" in err
    code, out, err = await arun(["keys", "rotate", "--json"], env)
    assert code == 0, err
    assert json.loads(out) == {"version": 3, "previous_version": 2, "total": 3, "rewrapped": 3, "failed": []}

    code, out, _ = await arun(["keys", "retire", "3", "--json"], env)
    assert code == 65
    assert json.loads(out)["error"]["code"] == "vault.key_in_use"
    for version in ("1", "2"):
        code, out, err = await arun(["keys", "retire", version, "--json"], env)
        assert code == 0, err
        assert json.loads(out) == {"version": int(version), "retired": True}
    code, _, err = await arun(["keys", "retire", "1"], env)
    assert code == 66, err
    code, out, _ = await arun(["keys", "list"], env)
    assert "current" in out

    code, out, err = await arun(["vault", "verify", "--json"], env)
    assert code == 0, err
    assert json.loads(out) == {"ok": True, "checked": 3, "bytes_checked": 6 * 6000, "damaged": []}
    code, out, err = await arun(["vault", "verify"], env)
    assert code == 0
    assert "vault intact: 3 recordings" in out

    path = node.gateway.vault.blobs.path_of(ids[1])  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, err = await arun(["vault", "verify", "--json"], env)
    assert code == 65
    assert json.loads(out)["damaged"] == [{"recording_id": ids[1], "problem": "failed authentication"}]
    code, out, err = await arun(["vault", "verify"], env)
    assert code == 65
    assert ids[1] in out
    assert "1 of 3 recordings are damaged" in err


async def test_roles(
    tmp_path: Path, http: aiohttp.ClientSession, node: RunningServer, dpo_token: str, pbx_token: str
) -> None:
    await upload(http, node, pbx_token, "call-1", b"audio")
    manager = await cli_login(
        node, tmp_path / "m", "mona", await add_operator(http, node, dpo_token, "mona", "manager")
    )
    tech = await cli_login(
        node, tmp_path / "t", "tess", await add_operator(http, node, dpo_token, "tess", "tech_manager")
    )
    code, out, _ = await arun(["recordings", "list", "--json"], manager)
    assert code == 0
    assert len(json.loads(out)["recordings"]) == 1
    for args in (["keys", "rotate"], ["keys", "list"], ["vault", "verify"]):
        code, _, err = await arun(args, manager)
        assert code == 77, (args, err)
    code, _, err = await arun(["keys", "rotate", "--json"], tech)
    assert code == 0, err
    code, out, _ = await arun(["keys", "retire", "1", "--json"], tech)
    assert code == 77
    assert json.loads(out)["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "command",
    [
        ["recordings", "list"],
        ["keys", "list"],
        ["keys", "rotate"],
        ["keys", "retire"],
        ["vault", "verify"],
    ],
)
def test_help_has_examples(tmp_path: Path, command: list[str]) -> None:
    result = run([*command, "--help"], cli_env(tmp_path))
    assert result.returncode == 0
    assert "Example" in result.stdout
    assert "--json" in result.stdout

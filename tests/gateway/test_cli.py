"""The real ``telgate`` executable: init is idempotent and private, serve runs and stops cleanly,
and the operator commands work end to end against a running node."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.server import RunningServer
from tests.conftest import cli_env

TELGATE = str(Path(sys.executable).with_name("telgate"))
FAST_ENV = {
    "TELGATE_SECURITY_ARGON2_TIME_COST": "1",
    "TELGATE_SECURITY_ARGON2_MEMORY_KIB": "1024",
}


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI synchronously (for commands that need no server)."""
    return subprocess.run(
        [TELGATE, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


async def arun(args: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[int, str, str]:
    """Run the CLI without blocking the event loop that serves the node under test."""
    process = await asyncio.create_subprocess_exec(
        TELGATE,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Mode, size and content of every key file, and mode of every entry, under ``root``."""
    result: dict[str, tuple[int, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.stat().st_mode)
        content = path.read_bytes() if path.is_file() and "secrets" in path.parts else b""
        result[str(path.relative_to(root))] = (mode, path.stat().st_size if path.is_file() else 0, content)
    return result


def test_init_twice_changes_nothing_and_keeps_secrets_private(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cli") | FAST_ENV
    data = tmp_path / "var"
    first = run(["init", "--data", str(data), "--json"], env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["first_dpo"]["name"] == "dpo"
    assert len(report["first_dpo"]["password"]) >= 20
    before = snapshot(data)
    with sqlite3.connect(data / "telgate.sqlite") as conn:
        rows_before = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]

    second = run(["init", "--data", str(data), "--json"], env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["created"] == []
    assert again["first_dpo"] is None  # the password is never shown twice
    after = snapshot(data)
    assert {k: v for k, v in after.items() if "sqlite" not in k} == {
        k: v for k, v in before.items() if "sqlite" not in k
    }
    with sqlite3.connect(data / "telgate.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == rows_before

    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        else:
            assert mode == 0o600, path  # keys, the database and its WAL files


def test_human_init_prints_the_password_once(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cli") | FAST_ENV
    first = run(["init", "--data", str(tmp_path / "var")], env)
    assert "One-time password" in first.stdout
    second = run(["init", "--data", str(tmp_path / "var")], env)
    assert "already initialised" in second.stdout
    assert "password" not in second.stdout.lower()


def test_bad_setting_exits_78(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cli") | {"TELGATE_SERVER_HTTP_PORT": "not-a-port"}
    result = run(["init", "--data", str(tmp_path / "var")], env)
    assert result.returncode == 78
    assert "server.http_port" in result.stderr


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert run(["operator", "add"], cli_env(tmp_path)).returncode == 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_answers_http_and_ssh_then_stops_on_sigterm(tmp_path: Path) -> None:
    http_port, sftp_port = free_port(), free_port()
    env = (
        cli_env(tmp_path / "cli")
        | FAST_ENV
        | {
            "TELGATE_SERVER_HTTP_PORT": str(http_port),
            "TELGATE_SERVER_SFTP_PORT": str(sftp_port),
        }
    )
    data = tmp_path / "var"
    assert run(["init", "--data", str(data)], env).returncode == 0
    process = subprocess.Popen(
        [TELGATE, "serve", "--data", str(data)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once both listeners are up
        assert f"127.0.0.1:{http_port}" in line, line
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as response:
            assert response.status == 200
        with socket.create_connection(("127.0.0.1", sftp_port), timeout=10) as ssh:
            assert ssh.recv(64).startswith(b"SSH-2.0-")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_operator_commands_end_to_end(tmp_path: Path, node: RunningServer, dpo_password: str) -> None:
    env = cli_env(tmp_path / "cli")
    code, out, err = await arun(
        ["login", "--url", node.url, "--user", "dpo", "--password-stdin", "--json"], env, dpo_password + "\n"
    )
    assert code == 0, err
    session_file = tmp_path / "cli" / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert dpo_password not in session_file.read_text()

    code, out, err = await arun(["operator", "add", "alice", "--role", "manager", "--json"], env)
    assert code == 0, err
    created: dict[str, Any] = json.loads(out)
    assert set(created) == {"name", "role", "password"}

    code, out, _ = await arun(["operator", "list", "--json"], env)
    assert {o["name"] for o in json.loads(out)["operators"]} == {"dpo", "alice"}
    code, out, _ = await arun(["operator", "list"], env)
    assert "alice" in out  # a human table
    assert "manager" in out

    code, _, err = await arun(["operator", "add", "alice", "--role", "manager"], env)
    assert code == 65, err  # conflict: bad input

    alice_env = cli_env(tmp_path / "alice")
    code, _, err = await arun(
        ["login", "--url", node.url, "--user", "alice", "--password-stdin"], alice_env, created["password"] + "\n"
    )
    assert code == 0, err
    code, _, err = await arun(["operator", "add", "mallory", "--role", "dpo"], alice_env)
    assert code == 77, err  # permission denied
    code, out, _ = await arun(["operator", "disable", "nobody", "--json"], env)
    assert code == 66
    assert json.loads(out)["error"]["code"] == "not_found"

    code, out, _ = await arun(["audit", "verify", "--json"], env)
    assert code == 0
    assert json.loads(out)["ok"] is True

    db_path = node.gateway.layout.database
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE seq = 2")
    conn.close()
    code, out, err = await arun(["audit", "verify"], env)
    assert code == 65
    assert "entry 2" in err

    code, out, _ = await arun(["audit", "export", "--since", "2020-01-01", "--json"], env)
    actions = [e["action"] for e in json.loads(out)["entries"]]
    assert actions[:2] == ["operator.create", "login"]

    code, _, _ = await arun(["logout"], env)
    assert code == 0
    code, _, err = await arun(["whoami"], env)
    assert code == 77
    assert "login" in err


def test_not_logged_in_exits_77(tmp_path: Path) -> None:
    result = run(["operator", "list"], cli_env(tmp_path / "nobody"))
    assert result.returncode == 77
    assert "telgate login" in result.stderr


def test_unreachable_server_exits_69(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cli")
    port = free_port()
    result = run(["login", "--url", f"http://127.0.0.1:{port}", "--user", "dpo", "--password-stdin"], env, "x\n")
    assert result.returncode == 69


def test_help_has_examples(tmp_path: Path) -> None:
    result = run(["operator", "add", "--help"], cli_env(tmp_path))
    assert "Example" in result.stdout


SERVE_ALLOCATOR_PROBE = """
import json, sys, types

def probe(settings):
    import io
    import pyarrow as pa, pyarrow.csv as pacsv
    import gateway.staging  # its import allocates through Arrow's C++ default pool
    pacsv.read_csv(io.BytesIO(b"a,b\\n" + b"1,2\\n" * 10_000))
    mimalloc_bytes = pa.mimalloc_memory_pool().max_memory()
    print(json.dumps({"mimalloc_bytes": mimalloc_bytes, "backend": pa.default_memory_pool().backend_name}))

sys.modules["gateway.server"] = types.SimpleNamespace(serve_forever=probe)
from gateway.cli import main
main(["serve", "--data", sys.argv[1]])
"""


def test_serve_puts_arrow_on_the_system_allocator_before_its_first_allocation(tmp_path: Path) -> None:
    """mimalloc, Arrow's default, kept ~65 MB more resident per process during Master.csv batches."""
    env = {k: v for k, v in cli_env(tmp_path / "cli").items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_ALLOCATOR_PROBE, str(tmp_path / "var")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"mimalloc_bytes": 0, "backend": "system"}

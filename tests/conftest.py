"""Shared fixtures: settings for a throwaway data directory, and a real node on ephemeral ports."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.db import Database, PostgresDatabase, SqliteDatabase, migrate
from gateway.server import RunningServer, start_server
from gateway.settings import Settings, load_settings
from gateway.wiring import FIRST_DPO, initialise
from tests.fakes import FakeClock
from tests.pg import postgres_cluster

# Cheap argon2 for tests: the cost is a setting, the algorithm is the same.
FAST_SECURITY = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


@pytest.fixture(autouse=True)
def _no_outside_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse connections to anything but loopback (tests talk to their own servers only)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if not (host.startswith("127.") or host in {"::1", "localhost"}):
                raise RuntimeError(f"test tried to reach {host}: tests use loopback only")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test node: its own data dir, ports 0, fast argon2."""
    overrides: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(data_dir), "http_port": 0, "sftp_port": 0},
        "security": dict(FAST_SECURITY),
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(environ={}, overrides=overrides)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock shared by the node and the test."""
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a fresh data directory."""
    return make_settings(tmp_path / "var")


@pytest.fixture
def dpo_password(settings: Settings, clock: FakeClock) -> str:
    """Initialise the data directory; the first DPO's password."""
    _, password = initialise(settings, clock)
    assert password is not None
    return password


@pytest.fixture
async def node(settings: Settings, clock: FakeClock, dpo_password: str) -> AsyncIterator[RunningServer]:
    """A real gateway node on ephemeral loopback ports."""
    server = await start_server(settings, clock)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def login(http: aiohttp.ClientSession, node: RunningServer, user: str, password: str) -> str:
    """Log in through the API; the session token."""
    async with http.post(f"{node.url}/v1/auth/login", json={"user": user, "password": password}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["token"])


async def add_operator(
    http: aiohttp.ClientSession, node: RunningServer, token: str, name: str, role: str
) -> str:
    """Create an operator through the API; their password."""
    async with http.post(
        f"{node.url}/v1/admin/operators", json={"name": name, "role": role}, headers=auth(token)
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["password"])


def auth(token: str) -> dict[str, str]:
    """Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def dpo_token(http: aiohttp.ClientSession, node: RunningServer, dpo_password: str) -> str:
    """A session token of the first DPO."""
    return await login(http, node, FIRST_DPO, dpo_password)


def cli_env(config_dir: Path) -> dict[str, str]:
    """Environment for running the real ``telgate`` CLI in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELGATE_")}
    env["TELGATE_CLI_CONFIG_DIR"] = str(config_dir)
    return env


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """One throwaway PostgreSQL cluster for the whole run (None when PostgreSQL is not installed)."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_db(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> Iterator[Database]:
    """A migrated metadata store on each backend: SQLite always, PostgreSQL in a schema of its own."""
    from gateway.wiring import COMPONENT_MIGRATIONS

    database: Database
    if request.param == "sqlite":
        database = SqliteDatabase(tmp_path / "metadata.sqlite")
    else:
        if postgres_url is None:
            pytest.skip("PostgreSQL binaries not installed and TELGATE_TEST_POSTGRES_URL not set")
        database = PostgresDatabase(postgres_url)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with database.transaction() as tx:
            tx.execute(f"CREATE SCHEMA {schema}")
            tx.execute(f"SET search_path TO {schema}")
    for component, migrations in COMPONENT_MIGRATIONS:
        migrate(database, component, migrations)
    yield database
    database.close()

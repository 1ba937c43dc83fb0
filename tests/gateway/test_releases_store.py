"""The release store and gate on every metadata backend: SQLite always, PostgreSQL when available.

The claim must be atomic across gateway nodes, so it is raced here by two store instances on two
connections to one database, as two nodes would be.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.audit import AuditTrail
from gateway.db import Database, PostgresDatabase, SqliteDatabase, migrate, utc_text
from gateway.errors import ConflictError
from gateway.recordings import SqlRecordingCatalog
from gateway.releases import ReleaseStore, SqlReleaseGate
from gateway.security import LoginThrottle, PasswordHashing
from gateway.settings import ReleaseSettings
from gateway.wiring import COMPONENT_MIGRATIONS
from tests.fakes import FakeClock
from vault.blobs import LocalBlobStore
from vault.keyring import LocalKeyring
from vault.service import RecordingVault

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

AUDIT_KEY = b"a" * 32


@dataclass
class Node:
    """One gateway node's release parts over a shared database."""

    db: Database
    store: ReleaseStore
    gate: SqlReleaseGate
    vault: RecordingVault
    audit: AuditTrail


@pytest.fixture(params=["sqlite", "postgresql"])
def connect(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None
) -> Iterator[Callable[[], Database]]:
    """A factory of connections to one fresh database (each call: a new connection, as a new node)."""
    opened: list[Database] = []
    schema = f"t_{uuid.uuid4().hex[:12]}"

    def open_one() -> Database:
        database: Database
        if request.param == "sqlite":
            database = SqliteDatabase(tmp_path / "meta.sqlite")
        else:
            if postgres_url is None:
                pytest.skip("PostgreSQL binaries not installed and TELGATE_TEST_POSTGRES_URL not set")
            database = PostgresDatabase(postgres_url)
            with database.transaction() as tx:
                tx.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                tx.execute(f"SET search_path TO {schema}")
        opened.append(database)
        return database

    yield open_one
    for database in opened:
        database.close()


def make_node(db: Database, root: Path, clock: FakeClock, keyring: LocalKeyring) -> Node:
    """Migrate (idempotent) and wire the release parts of one node."""
    for component, migrations in COMPONENT_MIGRATIONS:
        migrate(db, component, migrations)
    audit = AuditTrail(db, AUDIT_KEY, clock)
    catalog = SqlRecordingCatalog(db, audit)
    vault = RecordingVault(blobs=LocalBlobStore(root / "blobs"), keys=keyring, catalog=catalog, key_store=catalog,
                           clock=clock)  # fmt: skip
    hashing = PasswordHashing(time_cost=1, memory_kib=1024)
    settings = ReleaseSettings()
    store = ReleaseStore(db, vault, hashing, audit, clock, settings)
    throttle = LoginThrottle(db, max_failures=settings.max_failures, window=settings.failure_window, ban=settings.ban)
    return Node(db, store, SqlReleaseGate(store, vault, hashing, throttle, audit, clock), vault, audit)


@pytest.fixture
def nodes(connect: Callable[[], Database], tmp_path: Path) -> tuple[Node, Node]:
    """Two nodes on one database, a customer and three recordings."""
    clock = FakeClock()
    keyring = LocalKeyring.create(tmp_path / "keyring.json")
    first = make_node(connect(), tmp_path, clock, keyring)
    second = make_node(connect(), tmp_path, clock, keyring)
    with first.db.transaction() as tx:
        created = utc_text(clock.now())
        tx.execute("INSERT INTO customers (tenant, name, created_at) VALUES ('acme', 'Acme', ?)", (created,))
    for n in range(3):
        first.vault.store([b"audio %d" % n], tenant="acme", pbx="pbx1", call_id=f"call-{n}", content_type="audio/wav")
    return first, second


def test_two_nodes_race_for_the_claim_and_one_wins(nodes: tuple[Node, Node]) -> None:
    first, second = nodes
    ids = [r.recording_id for r in first.vault.list_recordings()]
    issued = first.store.create(tenant="acme", recording_ids=ids, actor="dpo", role="dpo", source="test")
    barrier = threading.Barrier(2)

    def login(node: Node, source: str) -> bool:
        barrier.wait(timeout=10)
        return node.gate.authenticate(issued.username, issued.password, source) is not None

    with ThreadPoolExecutor(2) as pool:
        won = list(pool.map(login, nodes, ["10.0.0.1", "10.0.0.2"]))
    assert sorted(won) == [False, True]
    winner = "10.0.0.1" if won[0] else "10.0.0.2"
    session = second.gate.authenticate(issued.username, issued.password, winner)  # the other node, same client
    assert session is not None
    assert [f.recording_id for f in second.gate.list_files(session)] == sorted(
        ids, key=lambda rid: next(i.name for i in issued.items if i.recording_id == rid)
    )
    for recording_id in ids:
        first.gate.file_completed(session, recording_id)
    assert first.store.release(issued.release_id).state(first.vault.clock.now()) == "collected"
    assert second.gate.authenticate(issued.username, issued.password, winner) is None
    reasons = [e.reason for e in first.audit.entries() if e.action == "release.login" and e.outcome == "refused"]
    assert reasons == ["wrong-address", "consumed"]
    assert all(first.vault.get(rid).shredded for rid in ids)


def test_revoke_reissue_and_expiry_on_every_backend(nodes: tuple[Node, Node]) -> None:
    first, second = nodes
    clock = first.vault.clock
    assert isinstance(clock, FakeClock)
    ids = [r.recording_id for r in first.vault.list_recordings()]
    issued = first.store.create(
        tenant="acme", recording_ids=ids[:1], ttl=timedelta(hours=1), actor="dpo", role="dpo", source="test"
    )
    clock.advance(timedelta(hours=2))
    assert second.gate.authenticate(issued.username, issued.password, "10.0.0.5") is None
    renewed = second.store.reissue(issued.release_id, actor="dpo", role="dpo", source="test")
    assert first.gate.authenticate(issued.username, issued.password, "10.0.0.5") is None
    assert first.gate.authenticate(renewed.username, renewed.password, "10.0.0.6") is not None
    first.store.revoke(issued.release_id, actor="dpo", role="dpo", source="test")
    assert second.gate.authenticate(renewed.username, renewed.password, "10.0.0.6") is None
    with pytest.raises(ConflictError):
        second.store.reissue(issued.release_id, actor="dpo", role="dpo", source="test")
    reasons = [e.reason for e in first.audit.entries() if e.action == "release.login" and e.outcome == "refused"]
    assert reasons == ["expired", "revoked", "revoked"]
    assert [r.state(clock.now()) for r in second.store.releases()] == ["revoked"]

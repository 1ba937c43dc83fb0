"""The metadata store's contract: every repository behaves the same on every backend.

SQLite always runs; PostgreSQL runs against a throwaway cluster when its binaries are installed (or
``TELGATE_TEST_POSTGRES_URL``), and is skipped with the reason otherwise. A new backend passes this
suite before it is offered.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from gateway.audit import AuditTrail
from gateway.db import Database, migrate
from gateway.errors import ConflictError, NotFoundError
from gateway.operators import OperatorStore
from gateway.principals import PrincipalStore
from gateway.security import LoginThrottle, PasswordHashing
from gateway.wiring import COMPONENT_MIGRATIONS
from tests.fakes import FakeClock


@pytest.fixture
def db(metadata_db: Database) -> Database:
    """The metadata store on each backend (see tests/conftest.py)."""
    return metadata_db


def test_migrations_are_idempotent(db: Database) -> None:
    for component, migrations in COMPONENT_MIGRATIONS:
        assert migrate(db, component, migrations) == migrations[-1][0]


def test_transaction_rolls_back_on_error(db: Database) -> None:
    clock = FakeClock()
    store = PrincipalStore(db)

    def add_then_fail() -> None:
        with db.transaction() as tx:
            store.add_customer(tx, "acme", "Acme", clock.now())
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        add_then_fail()
    with pytest.raises(NotFoundError):
        store.customer("acme")


def test_exclusive_keeps_other_holders_out_until_released(db: Database) -> None:
    held, entered, release = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with db.exclusive("contract-test"):
            held.set()
            release.wait(30)

    def second() -> None:
        held.wait(30)
        with db.exclusive("contract-test"):  # a lock of its own: another fd / another session
            entered.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        assert held.wait(30)
        assert not entered.wait(0.3), "the second holder got in while the first held the lock"
        release.set()
        assert entered.wait(30)
        with db.exclusive("another-name"):  # names are independent
            pass
    finally:
        release.set()
        for thread in threads:
            thread.join(30)


def test_duplicate_key_is_a_conflict(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO customers (tenant, name, created_at) VALUES (?, ?, ?)", ("a", "A", "t"))
    with pytest.raises(ConflictError), db.transaction() as tx:
        tx.execute("INSERT INTO customers (tenant, name, created_at) VALUES (?, ?, ?)", ("a", "A", "t"))


def test_operators_and_sessions(db: Database) -> None:
    clock = FakeClock()
    operators = OperatorStore(db, PasswordHashing(1, 1024, 1))
    with db.transaction() as tx:
        password = operators.add(tx, "alice", "manager", "test", clock.now())
    assert operators.authenticate("alice", password) is not None
    assert operators.authenticate("alice", "wrong") is None
    assert operators.authenticate("nobody", password) is None
    with db.transaction() as tx:
        token = operators.open_session(tx, "alice", "127.0.0.1", clock.now(), timedelta(hours=1))
    resolved = operators.resolve_session(token, clock.now())
    assert resolved is not None
    assert resolved.name == "alice"
    clock.advance(timedelta(hours=2))
    assert operators.resolve_session(token, clock.now()) is None
    with db.transaction() as tx:
        operators.disable(tx, "alice")
    assert operators.authenticate("alice", password) is None
    assert [o.name for o in operators.list()] == ["alice"]


def test_audit_chain(db: Database) -> None:
    trail = AuditTrail(db, b"k" * 32, FakeClock())
    for index in range(5):
        trail.append(actor="a", role="dpo", action="x", object=str(index), details={"n": index})
    assert trail.verify().ok
    assert [e.object for e in trail.entries()] == ["0", "1", "2", "3", "4"]
    with db.transaction() as tx:
        tx.execute("UPDATE audit SET object = ? WHERE seq = ?", ("forged", 3))
    report = trail.verify()
    assert not report.ok
    assert report.first_bad_seq == 3


def test_login_throttle(db: Database) -> None:
    clock = FakeClock()
    throttle = LoginThrottle(db, max_failures=3, window=timedelta(minutes=5), ban=timedelta(minutes=10))
    for _ in range(2):
        assert not throttle.record_failure("s", "10.0.0.1", clock.now()).banned(clock.now())
    assert throttle.record_failure("s", "10.0.0.1", clock.now()).banned(clock.now())
    assert throttle.state("s", "10.0.0.1").banned(clock.now())
    assert not throttle.state("s", "10.0.0.2").banned(clock.now())
    clock.advance(timedelta(minutes=11))
    assert not throttle.state("s", "10.0.0.1").banned(clock.now())
    assert not throttle.record_failure("s", "10.0.0.1", clock.now()).banned(clock.now())


def test_principals(db: Database) -> None:
    clock = FakeClock()
    store = PrincipalStore(db)
    with db.transaction() as tx:
        store.add_customer(tx, "acme", "Acme", clock.now())
        token = store.add_pbx(tx, "pbx1", "acme", "Europe/London", "GB", None, clock.now())
    pbx = store.authenticate_pbx(f"Bearer {token}")
    assert pbx is not None
    assert pbx.tenant == "acme"
    assert store.authenticate_pbx("Bearer tgp_wrong") is None
    with db.transaction() as tx:
        store.revoke_pbx(tx, "pbx1")
    assert store.authenticate_pbx(f"Bearer {token}") is None


def test_binary_values_round_trip(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute("CREATE TABLE blobs_contract (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
        tx.execute("INSERT INTO blobs_contract (id, value) VALUES (?, ?)", (1, b"\x00\xff" * 10))
        tx.execute("INSERT INTO blobs_contract (id, value) VALUES (?, ?)", (2, b"x" * 3))
    row = db.fetch_one("SELECT value FROM blobs_contract WHERE id = ?", (1,))
    assert row is not None
    assert row["value"] == b"\x00\xff" * 10
    big = db.fetch_one("SELECT COUNT(*) AS n FROM blobs_contract WHERE id > ?", (2**40,))
    assert big is not None
    assert big["n"] == 0


def test_subject_tokens(db: Database) -> None:
    from gateway.subjects import SqlSubjectTokens

    tokens = SqlSubjectTokens(db, b"p" * 32, b"s" * 32, FakeClock())
    first = tokens.token_for("acme", "+447700900123")
    assert first.startswith("sub_")
    assert tokens.token_for("acme", "+447700900123") == first
    other_tenant = tokens.token_for("globex", "+447700900123")
    assert other_tenant != first
    many = tokens.tokens_for("acme", ["+447700900123", "+442079460001", "+441632960002"])
    assert many["+447700900123"] == first
    assert len(set(many.values())) == 3
    assert {s.tenant for s in tokens.find("+447700900123")} == {"acme", "globex"}
    assert tokens.reveal(first) == "+447700900123"
    dump = repr(db.fetch_all("SELECT * FROM subjects"))
    assert "7700900123" not in dump
    with db.transaction() as tx:
        assert tokens.set_restricted(tx, "+447700900123", True) == 2
    assert all(s.restricted for s in tokens.find("+447700900123"))
    with db.transaction() as tx:
        erased = tokens.erase(tx, "+447700900123", tenant="acme")
    assert erased == [first]
    with pytest.raises(NotFoundError):
        tokens.reveal(first)
    assert tokens.token_for("acme", "+447700900123") != first  # a new subject, unlinkable to the old rows

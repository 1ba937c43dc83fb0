"""Subject tokens created in bulk (a Master.csv batch with thousands of new callers), on every backend."""

from __future__ import annotations

import pytest

from gateway.db import Database, Transaction
from gateway.subjects import SqlSubjectTokens
from tests.fakes import FakeClock

# Ofcom drama numbers: 07700 900000-900999 and 020 7946 0000-0999.
NUMBERS = [f"+447700900{n:03d}" for n in range(1000)] + [f"+4420794600{n:02d}" for n in range(100)]


@pytest.fixture
def db(metadata_db: Database) -> Database:
    """The metadata store on each backend (see tests/conftest.py)."""
    return metadata_db


def tokens_of(db: Database) -> SqlSubjectTokens:
    """A node with an empty cache."""
    return SqlSubjectTokens(db, b"p" * 32, b"s" * 32, FakeClock())


def test_many_new_numbers_get_distinct_stored_tokens(db: Database) -> None:
    node = tokens_of(db)
    created = node.tokens_for("acme", NUMBERS)
    assert set(created) == set(NUMBERS)
    assert len(set(created.values())) == len(NUMBERS)
    row = db.fetch_one("SELECT COUNT(*) AS n FROM subjects WHERE tenant = 'acme'")
    assert row is not None
    assert row["n"] == len(NUMBERS)
    assert tokens_of(db).tokens_for("acme", NUMBERS) == created  # read back by another node, not re-created
    assert node.reveal(created["+447700900042"]) == "+447700900042"
    assert [s.token for s in node.find("+442079460007")] == [created["+442079460007"]]
    assert "7700900042" not in repr(db.fetch_all("SELECT * FROM subjects"))


def test_known_and_new_numbers_mixed(db: Database) -> None:
    known = tokens_of(db).tokens_for("acme", NUMBERS[::3])
    other_tenant = tokens_of(db).tokens_for("globex", NUMBERS[:10])
    mixed = tokens_of(db).tokens_for("acme", NUMBERS)
    assert {number: mixed[number] for number in known} == known
    assert not set(other_tenant.values()) & set(mixed.values())
    assert len(set(mixed.values())) == len(NUMBERS)


def test_numbers_created_by_another_node_meanwhile_take_its_tokens(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tokens_of(db).tokens_for("acme", NUMBERS[:700:2])
    node = tokens_of(db)
    # This node's lookup (two chunks of at most 500) misses them, as if they were committed just after
    # it looked: its inserts conflict, and it must answer with the stored tokens, not its own.
    real = SqlSubjectTokens._stored
    calls: list[int] = []

    def late(tx: Transaction, tenant: str, lookups: list[str]) -> dict[str, str]:
        calls.append(len(lookups))
        return {} if len(calls) <= 2 else real(tx, tenant, lookups)

    monkeypatch.setattr(SqlSubjectTokens, "_stored", staticmethod(late))
    mine = node.tokens_for("acme", NUMBERS[:700])
    assert calls == [500, 200, 500, 200]  # two lookups, then both chunks read back after their conflicts
    assert {number: mine[number] for number in theirs} == theirs
    row = db.fetch_one("SELECT COUNT(*) AS n FROM subjects WHERE tenant = 'acme'")
    assert row is not None
    assert row["n"] == 700

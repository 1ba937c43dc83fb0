"""The audit chain detects altering, deleting, reordering and truncating entries, and holds no secrets."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.audit import AuditTrail
from gateway.db import SqliteDatabase, migrate
from tests.fakes import FakeClock


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[AuditTrail, Path]]:
    path = tmp_path / "audit.sqlite"
    db = SqliteDatabase(path)
    migrate(db)
    clock = FakeClock()
    trail = AuditTrail(db, b"k" * 32, clock)
    for index in range(1, 8):
        clock.advance(timedelta(seconds=1))
        trail.append(actor=f"op{index}", role="dpo", action="test.step", object=f"obj{index}", reason=f"r{index}")
    yield trail, path
    db.close()


def tamper(path: Path, *statements: str) -> None:
    """Change the database behind the trail's back, as an attacker with file access would."""
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_intact_chain_verifies(trail: tuple[AuditTrail, Path]) -> None:
    report = trail[0].verify()
    assert report.ok
    assert report.entries == 7


@pytest.mark.parametrize("column", ["actor", "role", "action", "object", "reason", "outcome", "source", "at"])
@pytest.mark.parametrize("seq", [1, 4, 7])
def test_altering_any_field_of_any_entry_is_detected(trail: tuple[AuditTrail, Path], column: str, seq: int) -> None:
    value = "2020-01-01T00:00:00.000000Z" if column == "at" else "forged"
    tamper(trail[1], f"UPDATE audit SET {column} = '{value}' WHERE seq = {seq}")  # noqa: S608 - test's own values
    report = trail[0].verify()
    assert not report.ok
    assert report.first_bad_seq == seq


def test_altering_details_is_detected(trail: tuple[AuditTrail, Path]) -> None:
    tamper(trail[1], "UPDATE audit SET details = '{\"x\": 1}' WHERE seq = 3")
    assert trail[0].verify().first_bad_seq == 3


@pytest.mark.parametrize("seq", [1, 2, 5])
def test_deleting_an_entry_is_detected(trail: tuple[AuditTrail, Path], seq: int) -> None:
    tamper(trail[1], f"DELETE FROM audit WHERE seq = {seq}")  # noqa: S608
    report = trail[0].verify()
    assert not report.ok
    assert report.first_bad_seq == seq


def test_deleting_the_last_entries_is_detected(trail: tuple[AuditTrail, Path]) -> None:
    tamper(trail[1], "DELETE FROM audit WHERE seq >= 6")
    report = trail[0].verify()
    assert not report.ok
    assert report.first_bad_seq == 6


def test_truncating_and_rewriting_the_head_is_detected(trail: tuple[AuditTrail, Path]) -> None:
    tamper(
        trail[1],
        "DELETE FROM audit WHERE seq = 7",
        "UPDATE audit_head SET seq = 6, hash = (SELECT hash FROM audit WHERE seq = 6)",
    )
    report = trail[0].verify()
    assert not report.ok
    assert report.first_bad_seq == 6


def test_reordering_entries_is_detected(trail: tuple[AuditTrail, Path]) -> None:
    # Swap the contents of entries 3 and 4 (each keeps its own valid hash, but the order changes).
    tamper(
        trail[1],
        "UPDATE audit SET seq = -3 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = -3",
    )
    report = trail[0].verify()
    assert not report.ok
    assert report.first_bad_seq == 3


def test_entries_refuse_secret_details(trail: tuple[AuditTrail, Path]) -> None:
    with pytest.raises(ValueError, match="must not carry"):
        trail[0].append(actor="x", role="dpo", action="oops", details={"password": "hunter2"})


def test_a_different_key_cannot_verify(trail: tuple[AuditTrail, Path]) -> None:
    _, path = trail
    other = AuditTrail(SqliteDatabase(path), b"z" * 32, FakeClock())
    report = other.verify()
    assert not report.ok
    assert report.first_bad_seq == 1

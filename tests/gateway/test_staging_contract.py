"""Staging behaves the same on every metadata backend: keys are claimed once, payloads round-trip.

``claim_keys`` uses backend-specific SQL (``json_each`` in SQLite, ``json_array_elements_text`` in
PostgreSQL); this suite runs it on both (PostgreSQL when a throwaway cluster can be had, see
tests/pg.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gateway import staging
from gateway.db import Database
from gateway.staging import (
    OLDEST_STAGED_SQL,
    PbxActivity,
    Rejected,
    StageRequest,
    StagingStore,
    claim_keys,
    decode_records,
    decode_table,
    records_table,
)
from ingest.records import CdrRecord
from tests.fakes import FakeClock

T0 = datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)


def cdr(n: int, start_at: datetime = T0) -> CdrRecord:
    """A pseudonymised CDR with dedupe key number ``n``."""
    return CdrRecord(
        tenant="acme", pbx="pbx1", source_format="json", dedupe_key=f"{n:032x}{0:032x}", call_id=f"c{n}",
        linked_id=None, sequence=None, start_at=start_at, answer_at=None, end_at=start_at + timedelta(seconds=5),
        duration_s=5, billsec_s=0, disposition="NO_ANSWER", hangup_cause=None, direction="inbound",
        caller="sub_x", caller_kind="subject", callee="601", callee_kind="extension", account_code=None,
        context=None, src_channel=None, dst_channel=None, last_app=None, last_data=None, extra_json=None,
        ingested_at=T0,
    )  # fmt: skip


@pytest.fixture
def store(metadata_db: Database) -> StagingStore:
    return StagingStore(metadata_db, b"k" * 32, FakeClock())


def test_claim_keys_marks_only_first_sightings(metadata_db: Database) -> None:
    with metadata_db.transaction() as tx:
        assert claim_keys(tx, ["a", "b", "c"], "t") == [True, True, True]
    with metadata_db.transaction() as tx:
        assert claim_keys(tx, ["b", "d", "d", "a", "e"], "t") == [False, True, False, False, True]
    with metadata_db.transaction() as tx:
        assert claim_keys(tx, [], "t") == []
    rows = metadata_db.fetch_all("SELECT key FROM dedupe ORDER BY key")
    assert [row["key"] for row in rows] == ["a", "b", "c", "d", "e"]


def test_a_group_stages_new_records_once_in_one_row(store: StagingStore, metadata_db: Database) -> None:
    first = StageRequest("cdr", "acme", "pbx1", "json", [cdr(1), cdr(2)])
    second = StageRequest("cdr", "acme", "pbx1", "json", [cdr(2), cdr(3), cdr(3)])
    with metadata_db.transaction() as tx:
        outcomes = store.stage_many(tx, [first, second], T0)
    assert [(o.accepted, o.duplicates) for o in outcomes] == [(2, 0), (1, 2)]
    # the same dedupe key an hour later is another record (keys are per hour of the record's time)
    later = StageRequest("cdr", "acme", "pbx1", "json", [cdr(1), cdr(1, T0 + timedelta(hours=1))])
    with metadata_db.transaction() as tx:
        assert store.stage(tx, later, T0).accepted == 1
    rows = metadata_db.fetch_all("SELECT kind, records, payload FROM staged ORDER BY seq")
    assert [int(row["records"]) for row in rows] == [3, 1]
    staged = decode_records("cdr", bytes(rows[0]["payload"]))
    assert staged == [cdr(1), cdr(2), cdr(3)]
    seq, table = store.batch("cdr", 10)
    assert table is not None
    assert table.num_rows == 4
    assert table.column("dedupe_key").to_pylist()[:3] == [f"{n:032x}{0:032x}" for n in (1, 2, 3)]
    assert decode_table("cdr", bytes(rows[1]["payload"])).num_rows == 1
    assert seq == 2


def test_a_group_prepared_before_its_transaction_stages_only_what_is_still_new(
    store: StagingStore, metadata_db: Database
) -> None:
    """Payloads are encoded before the write lock; records another process staged meanwhile are left out."""
    column_wise = StageRequest(
        "cdr", "acme", "pbx1", "asterisk-csv", (), [Rejected(7, "bad time", b"a raw line")],
        table=records_table([cdr(1), cdr(2)], "cdr"),
    )  # fmt: skip
    small = StageRequest("cdr", "acme", "pbx1", "json", [cdr(3)])
    prepared = store.prepare_group([column_wise, small])
    with metadata_db.transaction() as tx:  # another worker stages cdr(2) in between
        assert store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [cdr(2)]), T0).accepted == 1
    with metadata_db.transaction() as tx:
        outcomes = store.stage_prepared(tx, prepared, T0)
    assert [(o.accepted, o.duplicates) for o in outcomes] == [(1, 1), (1, 0)]
    assert len(outcomes[0].quarantined) == 1
    assert not outcomes[1].quarantined
    rows = metadata_db.fetch_all("SELECT records, payload FROM staged ORDER BY seq")
    assert [decode_records("cdr", bytes(row["payload"])) for row in rows] == [[cdr(2)], [cdr(1)], [cdr(3)]]
    quarantined = metadata_db.fetch_one(
        "SELECT line, reason, sealed FROM quarantine WHERE id = ?", outcomes[0].quarantined
    )
    assert quarantined is not None
    assert (quarantined["line"], quarantined["reason"]) == (7, "bad time")
    assert b"a raw line" not in bytes(quarantined["sealed"])
    again = store.prepare_group([small])  # every record a duplicate now: nothing staged, nothing lost
    with metadata_db.transaction() as tx:
        assert [(o.accepted, o.duplicates) for o in store.stage_prepared(tx, again, T0)] == [(0, 1)]
    assert len(metadata_db.fetch_all("SELECT seq FROM staged")) == 3


def test_the_oldest_staged_row_is_found_from_the_index_alone(store: StagingStore, metadata_db: Database) -> None:
    assert store.oldest_staged_at("cdr") is None
    for n, moment in enumerate((T0, T0 + timedelta(seconds=30), T0 + timedelta(minutes=1))):
        with metadata_db.transaction() as tx:
            store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [cdr(n)]), moment)
    assert store.oldest_staged_at("cdr") == T0
    assert store.oldest_staged_at("acd_event") is None
    seq, _ = store.batch("cdr", 1)
    store.delete_through("cdr", seq)
    assert store.oldest_staged_at("cdr") == T0 + timedelta(seconds=30)
    if metadata_db.dialect == "sqlite":  # the table's rows (and their payloads) are not read
        plan = metadata_db.fetch_all("EXPLAIN QUERY PLAN " + OLDEST_STAGED_SQL, ("cdr",))
        assert any("COVERING INDEX staged_kind_time" in str(row["detail"]) for row in plan), plan


def test_status_counts_staged_records_per_kind_and_the_quarantine(store: StagingStore, metadata_db: Database) -> None:
    empty = store.status()
    assert empty.backlog == 0
    assert (empty.quarantine_pending, empty.quarantine_replayed) == (0, 0)
    assert {kind: (s.records, s.payloads, s.oldest_staged_at) for kind, s in empty.kinds.items()} == {
        "cdr": (0, 0, None), "acd_event": (0, 0, None)
    }  # fmt: skip
    rejects = [Rejected(1, "bad", b"x"), Rejected(2, "bad", b"y")]
    with metadata_db.transaction() as tx:
        outcome = store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [cdr(1), cdr(2)], rejects), T0)
    with metadata_db.transaction() as tx:
        store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [cdr(3)]), T0 + timedelta(seconds=5))
        store.mark_replayed(tx, outcome.quarantined[0], T0 + timedelta(seconds=6))
    status = store.status()
    assert status.kinds["cdr"].records == 3
    assert status.kinds["cdr"].payloads == 2
    assert status.kinds["cdr"].oldest_staged_at == T0
    assert status.kinds["acd_event"].records == 0
    assert status.backlog == 3
    assert (status.quarantine_pending, status.quarantine_replayed) == (1, 1)


def test_pbx_activity_counts_each_pbx_posts_but_not_replays(store: StagingStore, metadata_db: Database) -> None:
    assert store.pbx_activity() == {}
    first = StageRequest("cdr", "acme", "pbx1", "json", [cdr(1), cdr(2)], [Rejected(3, "bad", b"x")])
    again = StageRequest("cdr", "acme", "pbx1", "json", [cdr(2)])
    other = StageRequest("cdr", "acme", "pbx2", "json", [cdr(3)])
    with metadata_db.transaction() as tx:
        store.stage_many(tx, [first, again, other], T0 + timedelta(seconds=10))
    with metadata_db.transaction() as tx:  # a process whose clock is behind commits next: last_at keeps the later
        store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [cdr(4)]), T0)
    with metadata_db.transaction() as tx:  # an operator's replay from the quarantine is not the PBX's doing
        store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [cdr(5)], replayed=True), T0 + timedelta(hours=1))
    activity = store.pbx_activity()
    assert activity["pbx1"] == PbxActivity(T0 + timedelta(seconds=10), posts=3, accepted=3, duplicates=1, rejected=1)
    assert activity["pbx2"] == PbxActivity(T0 + timedelta(seconds=10), posts=1, accepted=1, duplicates=0, rejected=0)
    assert store.status().pbxs == activity


def test_expire_quarantine_deletes_older_records_and_records_it_in_the_same_transaction(
    store: StagingStore, metadata_db: Database
) -> None:
    for moment, line in ((T0, 1), (T0 + timedelta(days=1), 2)):
        with metadata_db.transaction() as tx:
            store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", [], [Rejected(line, "bad", b"raw")]), moment)
    recorded: list[int] = []

    def record(tx: object, deleted: int) -> None:
        assert tx is not None
        recorded.append(deleted)

    assert store.expire_quarantine(T0, record) == 0  # nothing received before T0
    assert recorded == []
    assert store.expire_quarantine(T0 + timedelta(hours=1), record) == 1
    assert recorded == [1]
    assert [row["line"] for row in store.quarantined()[0]] == [2]


@pytest.mark.parametrize("records_per_read", [20_000, 1])
def test_scan_finds_matching_staged_rows_until_they_are_flushed(
    store: StagingStore, metadata_db: Database, monkeypatch: pytest.MonkeyPatch, records_per_read: int
) -> None:
    monkeypatch.setattr(staging, "_SCAN_RECORDS", records_per_read)  # 1: one payload per read
    for group in ([cdr(1), cdr(2)], [cdr(3)], [cdr(4), cdr(5)]):
        with metadata_db.transaction() as tx:
            store.stage(tx, StageRequest("cdr", "acme", "pbx1", "json", group), T0)

    def odd_calls(table: pa.Table) -> pa.Array:
        return pc.is_in(table["call_id"], value_set=pa.array(["c1", "c3", "c5"]))

    assert store.scan("cdr", odd_calls).column("call_id").to_pylist() == ["c1", "c3", "c5"]
    assert store.scan("acd_event", lambda table: pc.equal(table["pbx"], "pbx1")).num_rows == 0
    assert store.scan("cdr", odd_calls, tenant="acme").num_rows == 3
    assert store.scan("cdr", odd_calls, tenant="another").num_rows == 0
    seq, _ = store.batch("cdr", 2)  # the first group goes to the lake
    store.delete_through("cdr", seq)
    assert store.scan("cdr", odd_calls).column("call_id").to_pylist() == ["c3", "c5"]

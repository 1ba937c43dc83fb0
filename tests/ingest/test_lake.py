"""The Iceberg lake on a throwaway SQLite catalog and local warehouse (and PostgreSQL when available)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import ValidationException
from pyiceberg.expressions import EqualTo, Reference
from pyiceberg.expressions.literals import literal
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.update import snapshot as snapshot_module
from pyiceberg.transforms import DayTransform

from ingest import lake as lake_module
from ingest.lake import MARKER_PROPERTY, IcebergLake, LakeError, lake_locations
from ingest.records import ACD_EVENT_SCHEMA, CDR_SCHEMA, AcdEventRecord, CdrRecord, records_to_table

DAY = datetime(2024, 3, 1, tzinfo=UTC)
INGESTED_AT = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def cdr(n: int, *, start_at: datetime | None = None, caller: str | None = "sub_abc", callee: str = "1001") -> CdrRecord:
    """A pseudonymised CDR: subject tokens and extensions only, never a number."""
    start = start_at or DAY + timedelta(minutes=n)
    answered = n % 2 == 0
    return CdrRecord(
        tenant="acme",
        pbx="pbx-1",
        source_format="asterisk-csv",
        dedupe_key=f"cdr-{n:06d}",
        call_id=f"1709251200.{n}",
        linked_id=f"1709251200.{n}" if answered else None,
        sequence=n if answered else None,
        start_at=start,
        answer_at=start + timedelta(seconds=5) if answered else None,
        end_at=start + timedelta(seconds=65),
        duration_s=65,
        billsec_s=60 if answered else 0,
        disposition="ANSWERED" if answered else "NO_ANSWER",
        hangup_cause=16 if answered else None,
        direction="inbound",
        caller=caller,
        caller_kind="subject" if caller else "withheld",
        callee=callee,
        callee_kind="subject" if callee.startswith("sub_") else "extension",
        account_code=None,
        context="from-trunk",
        src_channel="PJSIP/trunk-00000001",
        dst_channel=f"PJSIP/{callee}-00000002" if answered else None,
        last_app="Dial",
        last_data=None,
        extra_json='{"userfield": "x"}' if n % 3 == 0 else None,
        ingested_at=INGESTED_AT,
    )


def acd_event(n: int, *, data: list[str]) -> AcdEventRecord:
    """A pseudonymised queue_log event."""
    return AcdEventRecord(
        tenant="acme",
        pbx="pbx-1",
        source_format="asterisk-queue-log",
        dedupe_key=f"acd-{n:06d}",
        event_at=DAY + timedelta(hours=n * 7),
        call_id=f"1709251200.{n}",
        queue="support",
        agent="PJSIP/1002" if n % 2 else None,
        event="ENTERQUEUE" if n % 2 == 0 else "CONNECT",
        caller="sub_def" if n % 2 == 0 else None,
        caller_kind="subject" if n % 2 == 0 else "none",
        position=1 if n % 2 == 0 else None,
        original_position=None,
        wait_s=12 if n % 2 else None,
        hold_s=None,
        talk_s=None,
        ring_ms=2500 if n % 2 else None,
        agent_call_id=f"1709251201.{n}" if n % 2 else None,
        data=data,
        ingested_at=INGESTED_AT,
    )


def cdr_table(numbers: range | list[int], **kwargs: object) -> pa.Table:
    """CDRs ``numbers`` as an Arrow table of the contract schema."""
    return records_to_table([cdr(n, **kwargs) for n in numbers], CDR_SCHEMA)  # type: ignore[arg-type]


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[IcebergLake]:
    """A fresh lake under ``tmp_path/lake``, closed after the test."""
    with IcebergLake.open(*lake_locations(tmp_path)) as opened:
        yield opened


def parquet_files_on_disk(root: Path) -> set[str]:
    """Every Parquet file under ``root``, as the ``file://`` paths Iceberg records."""
    return {f"file://{p}" for p in root.rglob("*.parquet")}


def test_open_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    catalog_uri, warehouse = lake_locations(tmp_path)
    with IcebergLake.open(catalog_uri, warehouse) as first:
        first.append("cdr", cdr_table(range(3)))
    with IcebergLake.open(catalog_uri, warehouse) as second:
        assert second.scan("cdr").num_rows == 3
        assert second.scan("acd_event").num_rows == 0


def open_twice_at_once(catalog_uri: str, warehouse: str) -> list[BaseException]:
    """Open and close the lake from two threads at once (as two processes starting); what they raised."""
    errors: list[BaseException] = []

    def open_and_close() -> None:
        try:
            IcebergLake.open(catalog_uri, warehouse).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_open_from_two_threads_at_once(tmp_path: Path) -> None:
    catalog_uri, warehouse = lake_locations(tmp_path)
    assert open_twice_at_once(catalog_uri, warehouse) == []
    with IcebergLake.open(catalog_uri, warehouse) as lake:
        assert lake.scan("cdr").num_rows == 0


def test_tables_have_contract_schema_day_partitions_and_properties(tmp_path: Path) -> None:
    catalog_uri, warehouse = lake_locations(tmp_path)
    IcebergLake.open(catalog_uri, warehouse).close()
    catalog = SqlCatalog("telgate", uri=catalog_uri, warehouse=warehouse)
    try:
        for name, contract, time_column in (
            ("cdr", CDR_SCHEMA, "start_at"),
            ("acd_event", ACD_EVENT_SCHEMA, "event_at"),
        ):
            table = catalog.load_table(("telgate", name))
            assert table.format_version == 2
            assert table.properties["write.parquet.compression-codec"] == "zstd"
            assert int(table.properties["write.target-file-size-bytes"]) >= 64 * 1024 * 1024
            assert table.properties["write.parquet.dict-size-bytes"] == str(1024 * 1024)
            schema = table.schema()
            assert [f.name for f in schema.fields] == contract.names
            assert [f.required for f in schema.fields] == [not f.nullable for f in contract]
            (partition,) = table.spec().fields
            assert isinstance(partition.transform, DayTransform)
            assert partition.source_id == schema.find_field(time_column).field_id
    finally:
        catalog.close()


def test_open_gives_an_older_table_the_properties_it_lacks_and_keeps_set_ones(tmp_path: Path) -> None:
    catalog_uri, warehouse = lake_locations(tmp_path)
    with IcebergLake.open(catalog_uri, warehouse) as lake:
        lake.append("cdr", cdr_table(range(3)))
    catalog = SqlCatalog("telgate", uri=catalog_uri, warehouse=warehouse)
    try:
        old = catalog.load_table(("telgate", "cdr"))  # as a table made before the property existed
        old.transaction().remove_properties("write.parquet.dict-size-bytes").set_properties(
            {"write.parquet.compression-codec": "snappy"}
        ).commit_transaction()
        assert open_twice_at_once(catalog_uri, warehouse) == []
        with IcebergLake.open(catalog_uri, warehouse) as lake:
            assert lake.scan("cdr").num_rows == 3
        table = catalog.load_table(("telgate", "cdr"))
        assert table.properties["write.parquet.dict-size-bytes"] == str(1024 * 1024)
        assert table.properties["write.parquet.compression-codec"] == "snappy"  # an operator's choice stays
        snapshots = len(table.metadata.snapshots)
        with IcebergLake.open(catalog_uri, warehouse):
            pass
        assert catalog.load_table(("telgate", "cdr")).metadata.metadata_log == table.metadata.metadata_log
        assert len(catalog.load_table(("telgate", "cdr")).metadata.snapshots) == snapshots
    finally:
        catalog.close()


def test_cdr_rows_round_trip_exactly(lake: IcebergLake) -> None:
    rows = records_to_table(
        [cdr(1), cdr(2, caller=None), cdr(3, callee="sub_xyz"), cdr(4, start_at=DAY + timedelta(days=1, hours=3))],
        CDR_SCHEMA,
    )
    lake.append("cdr", rows)
    back = lake.scan("cdr")
    assert back.schema == CDR_SCHEMA  # string not large_string, timestamp[us, UTC], required fields
    assert back.sort_by("dedupe_key").equals(rows)
    assert back.sort_by("dedupe_key").column("start_at")[3].as_py() == DAY + timedelta(days=1, hours=3)
    assert back.column("start_at")[0].as_py().tzinfo is not None


def test_acd_rows_round_trip_with_list_column(lake: IcebergLake) -> None:
    rows = records_to_table(
        [acd_event(0, data=["support", "", "1"]), acd_event(1, data=[]), acd_event(2, data=["a", "b"])],
        ACD_EVENT_SCHEMA,
    )
    lake.append("acd_event", rows)
    back = lake.scan("acd_event").sort_by("dedupe_key")
    assert back.schema == ACD_EVENT_SCHEMA
    assert back.equals(rows)
    assert back.column("data").to_pylist() == [["support", "", "1"], [], ["a", "b"]]


def test_append_casts_to_contract_and_refuses_misfits(lake: IcebergLake) -> None:
    rows = cdr_table(range(2))
    # nanoseconds in another zone, columns reordered, large strings: cast to the contract
    other = rows.select(list(reversed(rows.column_names)))
    other = other.set_column(
        other.schema.get_field_index("start_at"),
        pa.field("start_at", pa.timestamp("ns", tz="Europe/Paris"), nullable=False),
        other.column("start_at").cast(pa.timestamp("ns", tz="Europe/Paris")),
    )
    other = other.set_column(
        other.schema.get_field_index("tenant"), "tenant", other.column("tenant").cast(pa.large_string())
    )
    lake.append("cdr", other)
    assert lake.scan("cdr").sort_by("dedupe_key").equals(rows)

    with pytest.raises(ValueError, match="naive"):
        lake.append("cdr", rows.set_column(7, "start_at", rows.column("start_at").cast(pa.timestamp("us"))))
    with pytest.raises(ValueError, match="missing"):
        lake.append("cdr", rows.drop_columns(["tenant"]))
    with pytest.raises(ValueError, match="required"):
        lake.append("cdr", rows.set_column(0, pa.field("tenant", pa.string()), pa.array([None, "acme"])))
    with pytest.raises(ValueError, match="unknown lake table"):
        lake.append("recordings", rows)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lake.append("cdr", rows.to_pylist())
    assert lake.scan("cdr").num_rows == 2


def test_each_append_is_one_snapshot_partitioned_by_day_in_zstd_parquet(lake: IcebergLake, tmp_path: Path) -> None:
    two_days = [cdr(1), cdr(2), cdr(3, start_at=DAY + timedelta(days=1, minutes=5))]
    lake.append("cdr", records_to_table(two_days, CDR_SCHEMA))
    files = sorted(lake.data_files("cdr"), key=lambda f: f.day)
    assert [(f.day.isoformat(), f.record_count) for f in files] == [("2024-03-01", 2), ("2024-03-02", 1)]
    assert "/start_at_day=2024-03-01/" in files[0].path
    assert "/start_at_day=2024-03-02/" in files[1].path
    for data_file in files:
        metadata = pq.ParquetFile(data_file.path.removeprefix("file://")).metadata
        column = metadata.row_group(0).column(0)
        assert column.compression == "ZSTD"
        assert metadata.schema.to_arrow_schema().field("tenant").metadata[b"PARQUET:field_id"] == b"1"
    catalog_uri, warehouse = lake_locations(tmp_path)
    catalog = SqlCatalog("telgate", uri=catalog_uri, warehouse=warehouse)
    try:
        assert len(catalog.load_table(("telgate", "cdr")).metadata.snapshots) == 1
    finally:
        catalog.close()


def test_scan_filters_and_projects(lake: IcebergLake) -> None:
    lake.append("cdr", cdr_table(range(1, 6)))
    lake.append("cdr", records_to_table([cdr(6, caller=None, callee="sub_abc"), cdr(7, caller="sub_zzz")], CDR_SCHEMA))

    by_subject = lake.scan("cdr", "caller == 'sub_abc' or callee == 'sub_abc'", ["dedupe_key", "caller"])
    assert by_subject.schema == pa.schema([CDR_SCHEMA.field("dedupe_key"), CDR_SCHEMA.field("caller")])
    assert sorted(by_subject.column("dedupe_key").to_pylist()) == [f"cdr-{n:06d}" for n in range(1, 7)]

    by_call = lake.scan("cdr", EqualTo(term=Reference("call_id"), value=literal("1709251200.7")))
    assert by_call.column("caller").to_pylist() == ["sub_zzz"]

    since = lake.scan("cdr", "start_at >= '2024-03-01T00:05:00+00:00'", ["dedupe_key"])
    assert sorted(since.column("dedupe_key").to_pylist()) == ["cdr-000005", "cdr-000006", "cdr-000007"]
    assert lake.scan("cdr", limit=2).num_rows == 2

    with pytest.raises(ValueError, match="malformed"):
        lake.scan("cdr", "caller ==")
    with pytest.raises(ValueError, match="does not fit"):
        lake.scan("cdr", "phone_number == 'x'")
    with pytest.raises(ValueError, match="unknown"):
        lake.scan("cdr", None, ["caller", "phone_number"])


def test_contains_dedupe_keys(lake: IcebergLake) -> None:
    assert lake.contains_dedupe_keys("cdr", ["cdr-000001"]) == set()
    lake.append("cdr", cdr_table(range(10)))
    lake.append("cdr", records_to_table([cdr(10, start_at=DAY + timedelta(days=3))], CDR_SCHEMA))
    asked = ["cdr-000001", "cdr-000009", "cdr-000010", "cdr-999999", "cdr-000001"]
    assert lake.contains_dedupe_keys("cdr", asked) == {"cdr-000001", "cdr-000009", "cdr-000010"}
    assert lake.contains_dedupe_keys("cdr", asked, since=DAY + timedelta(days=2)) == {"cdr-000010"}
    assert lake.contains_dedupe_keys("acd_event", asked) == set()
    assert lake.contains_dedupe_keys("cdr", []) == set()


def test_staging_marker_round_trips_per_table(lake: IcebergLake) -> None:
    assert lake.last_committed_marker("cdr") is None
    lake.append("cdr", cdr_table(range(2)), marker=41)
    lake.append("cdr", cdr_table(range(2, 4)), marker=42)
    assert lake.last_committed_marker("cdr") == 42
    lake.append("cdr", cdr_table(range(4, 6)))  # no marker: the previous one still holds
    assert lake.last_committed_marker("cdr") == 42
    assert lake.last_committed_marker("acd_event") is None
    lake.append("cdr", cdr_table([]), marker=99)  # nothing to write, nothing committed
    assert lake.last_committed_marker("cdr") == 42
    with pytest.raises(ValueError, match="marker"):
        lake.append("cdr", cdr_table([7]), marker=-1)


def test_maintain_compacts_small_files_and_expires_old_snapshots(lake: IcebergLake, tmp_path: Path) -> None:
    for batch in range(30):  # 30 commits of 2 rows over 2 days
        day = DAY + timedelta(days=batch % 2)
        lake.append(
            "cdr",
            records_to_table([cdr(batch * 2, start_at=day), cdr(batch * 2 + 1, start_at=day)], CDR_SCHEMA),
            marker=batch,
        )
    lake.append("acd_event", records_to_table([acd_event(0, data=["x"])], ACD_EVENT_SCHEMA))
    before = lake.scan("cdr").sort_by("dedupe_key")
    assert len(lake.data_files("cdr")) == 30

    # a long retention compacts but keeps every snapshot
    now = datetime.now(UTC)
    report = lake.maintain(now, timedelta(days=7), 1, 1024 * 1024)
    cdr_report = report.tables[0]
    assert (cdr_report.table, cdr_report.data_files_before, cdr_report.data_files_after) == ("cdr", 30, 2)
    assert cdr_report.files_compacted == 30
    assert cdr_report.snapshots_expired == 0
    assert report.tables[1].data_files_after == 1
    assert lake.scan("cdr").sort_by("dedupe_key").equals(before)
    assert {f.day.isoformat(): f.record_count for f in lake.data_files("cdr")} == {"2024-03-01": 30, "2024-03-02": 30}
    assert lake.last_committed_marker("cdr") == 29  # carried by the compaction snapshot
    assert len(parquet_files_on_disk(tmp_path)) == 30 + 2 + 1  # old files still needed by old snapshots

    # once the snapshots are past the retention they go, and so do files only they referenced
    report = lake.maintain(now + timedelta(days=8), timedelta(days=7), 1, 1024 * 1024)
    assert report.tables[0].snapshots_expired == 30  # 30 appends + 1 compaction, the newest kept
    assert report.tables[0].files_compacted == 0
    assert report.tables[0].data_files_after == 2
    assert report.tables[0].files_deleted >= 30 + 30  # small data files, their manifests and lists
    assert parquet_files_on_disk(tmp_path) == {f.path for f in lake.data_files("cdr") + lake.data_files("acd_event")}
    assert lake.scan("cdr").sort_by("dedupe_key").equals(before)
    assert lake.last_committed_marker("cdr") == 29


def test_compaction_retries_when_pyiceberg_misses_a_file_to_delete(
    lake: IcebergLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyiceberg 0.12 shares one manifest evaluator between threads and may skip a manifest, then refuses
    # the commit ("Missing required files to delete"); the rewrite must try again, not fail maintenance.
    for n in range(3):
        lake.append("cdr", cdr_table([n]))
    real = snapshot_module._OverwriteFiles._validate_required_deletes
    calls = []

    def flaky(self: object, deleted_entries: list[object]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValidationException("Missing required files to delete: (simulated race)")
        real(self, deleted_entries)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_module._OverwriteFiles, "_validate_required_deletes", flaky)
    report = lake.maintain(datetime.now(UTC), timedelta(days=7), 1, 1024 * 1024)
    assert len(calls) == 2
    assert report.tables[0].data_files_after == 1
    assert lake.scan("cdr").num_rows == 3


def test_maintain_refuses_bad_knobs(lake: IcebergLake) -> None:
    with pytest.raises(ValueError, match="timezone"):
        lake.maintain(datetime(2024, 1, 1), timedelta(days=1), 1, 1024)  # noqa: DTZ001
    with pytest.raises(ValueError, match="min_snapshots"):
        lake.maintain(datetime(2024, 1, 1, tzinfo=UTC), timedelta(days=1), 0, 1024)


def test_purge_removes_exactly_the_matching_rows_from_storage(lake: IcebergLake, tmp_path: Path) -> None:
    lake.append("cdr", cdr_table(range(6)), marker=1)  # caller sub_abc
    withheld = [cdr(n, caller=None, callee="1002") for n in range(6, 9)]
    lake.append("cdr", records_to_table(withheld, CDR_SCHEMA), marker=2)
    other_day = [cdr(9, caller="sub_xyz", start_at=DAY + timedelta(days=1)), cdr(10, start_at=DAY + timedelta(days=1))]
    lake.append("cdr", records_to_table(other_day, CDR_SCHEMA), marker=3)
    old_files = {f.path for f in lake.data_files("cdr")}

    removed = lake.purge("cdr", "caller == 'sub_abc' or callee == 'sub_abc'")

    assert removed == 7
    remaining = sorted(lake.scan("cdr").column("dedupe_key").to_pylist())
    assert remaining == ["cdr-000006", "cdr-000007", "cdr-000008", "cdr-000009"]  # null callers kept
    assert lake.scan("cdr", "caller == 'sub_abc'").num_rows == 0
    assert lake.last_committed_marker("cdr") == 3
    on_disk = parquet_files_on_disk(tmp_path)
    assert on_disk == {f.path for f in lake.data_files("cdr")}
    assert not (old_files - {f.path for f in lake.data_files("cdr")}) & on_disk
    for path in on_disk:
        callers = pq.read_table(path.removeprefix("file://"), columns=["caller"]).column("caller").to_pylist()
        assert "sub_abc" not in callers
    assert lake.purge("cdr", "caller == 'sub_abc'") == 0


def test_purge_with_no_match_still_drops_history(lake: IcebergLake, tmp_path: Path) -> None:
    for n in range(3):
        lake.append("cdr", cdr_table([n]))
    lake.maintain(datetime.now(UTC), timedelta(days=7), 1, 1024 * 1024)  # compacts, keeps old snapshots
    assert len(parquet_files_on_disk(tmp_path)) == 4
    assert lake.purge("cdr", "caller == 'sub_nobody'") == 0
    assert parquet_files_on_disk(tmp_path) == {f.path for f in lake.data_files("cdr")}
    assert lake.scan("cdr").num_rows == 3


def test_rewrite_rebases_over_appends_but_never_over_a_rewrite_of_its_files(lake: IcebergLake) -> None:
    lake.append("cdr", cdr_table(range(3)))
    lake.append("cdr", cdr_table(range(3, 6)))
    layout = lake_module._LAYOUTS["cdr"]

    def stale_compaction() -> tuple[Table, list[DataFile], list[DataFile]]:
        base = lake._load("cdr")
        tasks = list(base.scan().plan_files())
        rows = lake_module._read_tasks(base, tasks)
        written = lake_module._write_partitions(base, layout, [(int(tasks[0].file.partition[0]), rows)])
        return base, [task.file for task in tasks], written

    base, replaced, written = stale_compaction()
    lake.append("cdr", cdr_table([6]))  # a concurrent append does not conflict
    lake._commit_rewrite("cdr", base, replaced, written, "compact")
    assert sorted(lake.scan("cdr").column("dedupe_key").to_pylist()) == [f"cdr-{n:06d}" for n in range(7)]
    assert len(lake.data_files("cdr")) == 2

    base, replaced, written = stale_compaction()
    assert lake.purge("cdr", "dedupe_key == 'cdr-000001'") == 1  # a concurrent rewrite of the same files
    with pytest.raises(lake_module._RewriteConflictError):
        lake._commit_rewrite("cdr", base, replaced, written, "compact")
    assert lake.scan("cdr", "dedupe_key == 'cdr-000001'").num_rows == 0  # the purged row stays purged
    assert lake.scan("cdr").num_rows == 6
    assert not any(Path(f.file_path.removeprefix("file://")).exists() for f in written)


def test_bad_catalog_uri_raises_lake_error(tmp_path: Path) -> None:
    with pytest.raises(LakeError) as raised:
        IcebergLake.open("nosuchdb://catalog", f"file://{tmp_path}/warehouse")
    assert raised.value.code == "ingest.lake_unavailable"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(LakeError):
        IcebergLake.open(f"sqlite:///{blocker}/catalog.sqlite", f"file://{tmp_path}/warehouse")


def test_broken_storage_raises_lake_error_not_third_party(lake: IcebergLake, tmp_path: Path) -> None:
    lake.append("cdr", cdr_table(range(2)))
    for metadata_file in (tmp_path / "lake" / "warehouse").rglob("*.metadata.json"):
        metadata_file.unlink()
    with pytest.raises(LakeError) as raised:
        lake.scan("cdr")
    assert raised.value.__cause__ is not None
    with pytest.raises(LakeError):
        lake.append("cdr", cdr_table(range(2, 4)))


def test_marker_lives_in_the_snapshot_summary(lake: IcebergLake, tmp_path: Path) -> None:
    lake.append("acd_event", records_to_table([acd_event(1, data=[])], ACD_EVENT_SCHEMA), marker=7)
    catalog = SqlCatalog("telgate", uri=lake_locations(tmp_path)[0], warehouse=lake_locations(tmp_path)[1])
    try:
        snapshot = catalog.load_table(("telgate", "acd_event")).current_snapshot()
        assert snapshot is not None
        assert snapshot.summary is not None
        assert snapshot.summary[MARKER_PROPERTY] == "7"
        assert snapshot.summary["added-records"] == "1"
    finally:
        catalog.close()


def test_round_trip_on_postgresql_catalog(postgres_url: str | None, tmp_path: Path) -> None:
    if postgres_url is None:
        pytest.skip("PostgreSQL binaries not installed and TELGATE_TEST_POSTGRES_URL not set")
    warehouse = f"file://{tmp_path}/warehouse"
    with IcebergLake.open(postgres_url, warehouse) as lake:
        lake.append("cdr", cdr_table(range(3)), marker=5)
    with IcebergLake.open(postgres_url, warehouse) as lake:
        assert lake.scan("cdr").num_rows == 3
        assert lake.last_committed_marker("cdr") == 5
        assert lake.purge("cdr", "dedupe_key == 'cdr-000001'") == 1
        assert lake.scan("cdr").num_rows == 2


def test_timezone_of_input_does_not_shift_the_partition(lake: IcebergLake) -> None:
    paris = timezone(timedelta(hours=1))
    after_midnight_in_paris = datetime(2024, 3, 2, 0, 30, tzinfo=paris)  # 23:30 UTC on 1 March
    lake.append("cdr", records_to_table([cdr(1, start_at=after_midnight_in_paris)], CDR_SCHEMA))
    (data_file,) = lake.data_files("cdr")
    assert data_file.day.isoformat() == "2024-03-01"
    assert lake.scan("cdr").column("start_at")[0].as_py() == after_midnight_in_paris

"""Staged payloads: the shortcuts of ``records_table`` and ``encode_table`` give the same table and bytes.

References are the code before the shortcuts: one ``pa.array`` per column, and the IPC stream writer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta

import pyarrow as pa
import pytest

from gateway.staging import SCHEMAS, Record, decode_records, encode_records, encode_table, records_table
from ingest.records import AcdEventRecord, CdrRecord
from tests.gateway.test_staging_contract import T0, cdr


def reference_table(records: Sequence[Record], kind: str) -> pa.Table:
    schema = SCHEMAS[kind]
    columns = [[getattr(record, name) for record in records] for name in schema.names]
    return pa.Table.from_arrays(
        [pa.array(column, type=f.type) for column, f in zip(columns, schema, strict=True)], schema=schema
    )


def reference_payload(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    compressed = table.num_rows >= 1000
    options = pa.ipc.IpcWriteOptions(compression="zstd") if compressed else pa.ipc.IpcWriteOptions()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def event(n: int) -> AcdEventRecord:
    return AcdEventRecord(
        tenant="acme", pbx="pbx1", source_format="queue-log", dedupe_key=f"{n:064x}", event_at=T0, call_id=f"c{n}",
        queue="support", agent=None if n % 2 else "PJSIP/601", event="CONNECT", caller=None, caller_kind="none",
        position=n, original_position=None, wait_s=n * 3, hold_s=None, talk_s=None, ring_ms=2**40 + n,
        agent_call_id=None, data=[] if n % 3 else ["1", "", "x"], ingested_at=T0,
    )  # fmt: skip


def varied_cdrs(count: int) -> list[CdrRecord]:
    out = []
    for n in range(count):
        record = cdr(n, T0 + timedelta(seconds=n))
        if n % 2:
            record = dataclasses.replace(
                record, linked_id="x" * n, sequence=n, answer_at=T0, hangup_cause=16, extra_json='{"é":"ü"}'
            )
        out.append(record)
    return out


@pytest.mark.parametrize("count", [1, 2, 7, 999, 1000, 1500])
def test_cdr_tables_and_payloads_are_what_the_column_writer_made(count: int) -> None:
    records = varied_cdrs(count)
    table = records_table(records, "cdr")
    expected = reference_table(records, "cdr")
    assert table.equals(expected, check_metadata=True)
    assert encode_table(table) == reference_payload(expected)
    assert encode_records(records) == reference_payload(expected)
    assert decode_records("cdr", encode_records(records)) == records


@pytest.mark.parametrize("count", [1, 5, 1200])
def test_acd_tables_and_payloads_are_what_the_column_writer_made(count: int) -> None:
    records = [event(n) for n in range(count)]
    table = records_table(records, "acd_event")
    expected = reference_table(records, "acd_event")
    assert table.equals(expected, check_metadata=True)
    assert encode_table(table) == reference_payload(expected)
    assert decode_records("acd_event", encode_records(records)) == records


def test_empty_and_multi_batch_tables() -> None:
    assert records_table([], "cdr").equals(reference_table([], "cdr"), check_metadata=True)
    two = pa.concat_tables([records_table(varied_cdrs(3), "cdr"), records_table(varied_cdrs(2), "cdr")])
    assert encode_table(two) == reference_payload(two)
    other = pa.table({"a": [1, 2]})
    assert encode_table(other) == reference_payload(other)

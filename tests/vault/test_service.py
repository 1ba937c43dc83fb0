"""RecordingVault over its real ports: local blobs, local keyring, the SQL catalog (SQLite and PostgreSQL).

The envelope's own properties (bit flips, truncation, splicing...) are tested in test_envelope.py;
here: what the service adds (metadata, duplicates, limits, the key store, shred, rotate, retire, verify).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import AuditTrail
from gateway.db import Database, PostgresDatabase, SqliteDatabase, migrate
from gateway.recordings import SqlRecordingCatalog
from gateway.wiring import COMPONENT_MIGRATIONS
from tests.fakes import FakeClock
from vault.blobs import LocalBlobStore
from vault.errors import CorruptRecordingError, KeyNotFoundError
from vault.keyring import LocalKeyring
from vault.ports import WrappedKey
from vault.service import (
    KeyInUseError,
    RecordingConflictError,
    RecordingNotFoundError,
    RecordingShreddedError,
    RecordingTooLargeError,
    RecordingVault,
    _EarlyWriteback,
)

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

CHUNK = 4096
AUDIT_KEY = b"k" * 32


@dataclass
class Parts:
    """A vault and the parts it was built from."""

    vault: RecordingVault
    db: Database
    catalog: SqlRecordingCatalog
    blobs: LocalBlobStore
    keyring: LocalKeyring
    audit: AuditTrail
    clock: FakeClock
    root: Path


def _database(kind: str, root: Path, postgres_url: str | None) -> Database:
    if kind == "sqlite":
        return SqliteDatabase(root / "meta.sqlite")
    if postgres_url is None:
        pytest.skip("PostgreSQL binaries not installed and TELGATE_TEST_POSTGRES_URL not set")
    database = PostgresDatabase(postgres_url)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with database.transaction() as tx:
        tx.execute(f"CREATE SCHEMA {schema}")
        tx.execute(f"SET search_path TO {schema}")
    return database


def _build(root: Path, db: Database, **limits: int) -> Parts:
    for component, migrations in COMPONENT_MIGRATIONS:
        migrate(db, component, migrations)
    clock = FakeClock()
    audit = AuditTrail(db, AUDIT_KEY, clock)
    catalog = SqlRecordingCatalog(db, audit)
    blobs = LocalBlobStore(root / "blobs")
    keyring = LocalKeyring.create(root / "keyring.json")
    vault = RecordingVault(
        blobs=blobs, keys=keyring, catalog=catalog, key_store=catalog, clock=clock, chunk_size=CHUNK, **limits
    )
    return Parts(vault, db, catalog, blobs, keyring, audit, clock, root)


@pytest.fixture(params=["sqlite", "postgresql"])
def parts(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> Iterator[Parts]:
    """A vault on each metadata backend."""
    db = _database(request.param, tmp_path, postgres_url)
    yield _build(tmp_path, db, max_recording_bytes=1024 * 1024, rewrap_batch_size=3)
    db.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Parts]:
    """A vault on SQLite only, for tests that inspect the files at rest."""
    db = SqliteDatabase(tmp_path / "meta.sqlite")
    yield _build(tmp_path, db, max_recording_bytes=1024 * 1024, rewrap_batch_size=3)
    db.close()


def store(parts: Parts, content: bytes, call_id: str = "1712345678.1", tenant: str = "acme") -> str:
    pieces = [content[i : i + 1000] for i in range(0, len(content), 1000)] or [b""]
    result = parts.vault.store(pieces, tenant=tenant, pbx="pbx1", call_id=call_id, content_type="audio/wav")
    return result.recording.recording_id


def read_all(parts: Parts, recording_id: str) -> bytes:
    with parts.vault.open_reader(recording_id) as reader:
        return reader.read_at(0, reader.size)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_store_records_metadata_and_reads_back(parts: Parts) -> None:
    content = bytes(range(256)) * 50  # several chunks and a partial one
    recording_id = store(parts, content)
    recording = parts.vault.get(recording_id)
    assert recording_id.startswith("rec_")
    assert (recording.tenant, recording.pbx, recording.call_id) == ("acme", "pbx1", "1712345678.1")
    assert recording.content_type == "audio/wav"
    assert recording.size == len(content)
    assert recording.sha256 == hashlib.sha256(content).hexdigest()
    assert recording.received_at == parts.clock.now()
    assert read_all(parts, recording_id) == content
    with parts.vault.open_reader(recording_id) as reader:
        assert reader.read_at(5000, 10) == content[5000:5010]
    entries = [e for e in parts.audit.entries() if e.action == "recording.store"]
    assert [(e.actor, e.role, e.object) for e in entries] == [("pbx1", "pbx", recording_id)]


def test_empty_recording(parts: Parts) -> None:
    recording_id = store(parts, b"")
    assert parts.vault.get(recording_id).size == 0
    assert read_all(parts, recording_id) == b""


def test_key_row_is_bound_to_its_recording(parts: Parts) -> None:
    """Acceptance 1 (service level): swapping two recordings' key rows makes both undecryptable."""
    first = store(parts, b"first recording " * 100, call_id="c-1")
    second = store(parts, b"second recording " * 100, call_id="c-2")
    key_1, key_2 = parts.catalog.wrapped_key(first), parts.catalog.wrapped_key(second)
    assert key_1 is not None
    assert key_2 is not None
    with parts.db.transaction() as tx:
        for recording_id, key in ((first, key_2), (second, key_1)):
            tx.execute(
                "UPDATE recording_keys SET key_version = ?, wrapped = ? WHERE recording_id = ?",
                (key.version, key.ciphertext, recording_id),
            )
    for recording_id in (first, second):
        with pytest.raises(CorruptRecordingError):
            parts.vault.open_reader(recording_id)
    report = parts.vault.verify()
    assert {d.recording_id for d in report.damaged} == {first, second}
    assert {d.problem for d in report.damaged} == {"key row failed authentication"}


def test_duplicate_upload_returns_the_existing_recording_and_discards_the_blob(parts: Parts) -> None:
    content = b"same audio" * 500
    first = parts.vault.store([content], tenant="acme", pbx="pbx1", call_id="dup", content_type="audio/wav")
    again = parts.vault.store([content[:7], content[7:]], tenant="acme", pbx="pbx1", call_id="dup",
                              content_type="audio/wav")  # fmt: skip
    assert first.created
    assert not again.created
    assert again.recording.recording_id == first.recording.recording_id
    assert list(parts.blobs.iter_ids()) == [first.recording.recording_id]
    with pytest.raises(RecordingConflictError):
        parts.vault.store([b"other audio"], tenant="acme", pbx="pbx1", call_id="dup", content_type="audio/wav")
    assert list(parts.blobs.iter_ids()) == [first.recording.recording_id]
    # The same call id in another tenant is another recording.
    other = parts.vault.store([content], tenant="globex", pbx="pbx9", call_id="dup", content_type="audio/wav")
    assert other.created


def test_too_large_leaves_nothing_behind(parts: Parts) -> None:
    with pytest.raises(RecordingTooLargeError):
        parts.vault.store([b"x" * 600_000, b"y" * 600_000], tenant="acme", pbx="p", call_id="big", content_type="a/b")
    assert files_under(parts.blobs.root) == []  # no blob, no temp file
    assert parts.vault.list_recordings(include_shredded=True) == []
    assert parts.catalog.counts() == {}


def test_aborted_upload_leaves_nothing_behind(parts: Parts) -> None:
    upload = parts.vault.begin_upload(tenant="acme", pbx="p", call_id="cut", content_type="a/b")
    upload.write(b"partial" * 1000)
    upload.abort()
    upload.abort()  # idempotent
    with pytest.raises(ValueError, match="finished"):
        upload.write(b"more")
    assert files_under(parts.blobs.root) == []
    assert parts.vault.list_recordings() == []


def test_shred_destroys_key_then_blob_and_audits_in_the_same_transaction(parts: Parts) -> None:
    recording_id = store(parts, b"to be destroyed " * 300)
    result = parts.vault.shred(recording_id, actor="dpo", role="dpo", reason="erasure request", source="127.0.0.1")
    assert result.shredded_now
    assert result.blob_deleted
    assert parts.catalog.wrapped_key(recording_id) is None
    assert not parts.blobs.exists(recording_id)
    tombstone = parts.vault.get(recording_id)
    assert tombstone.shredded_at == parts.clock.now()
    assert tombstone.shred_reason == "erasure request"
    assert parts.vault.list_recordings() == []
    assert [r.recording_id for r in parts.vault.list_recordings(include_shredded=True)] == [recording_id]
    with pytest.raises(RecordingShreddedError):
        parts.vault.open_reader(recording_id)
    shreds = [e for e in parts.audit.entries() if e.action == "recording.shred"]
    assert [(e.actor, e.object, e.reason, e.source) for e in shreds] == [
        ("dpo", recording_id, "erasure request", "127.0.0.1")
    ]
    assert parts.audit.verify().ok
    # Idempotent: a second shred writes nothing new.
    again = parts.vault.shred(recording_id, actor="dpo", role="dpo", reason="again", source="x")
    assert not again.shredded_now
    assert len([e for e in parts.audit.entries() if e.action == "recording.shred"]) == 1
    # The call id is free again for a new upload.
    assert store(parts, b"new take") != recording_id


def test_shred_of_unknown_recording(parts: Parts) -> None:
    with pytest.raises(RecordingNotFoundError):
        parts.vault.shred("rec_nope", actor="dpo", role="dpo", reason="r", source="s")
    with pytest.raises(ValueError, match="reason"):
        parts.vault.shred("rec_nope", actor="dpo", role="dpo", reason=" ", source="s")


def test_shred_key_commit_is_first_even_if_the_blob_delete_fails(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    recording_id = store(parts, b"abc" * 1000)

    def broken_delete(blob_id: str) -> bool:
        raise OSError("disk gone")

    monkeypatch.setattr(parts.blobs, "delete", broken_delete)
    result = parts.vault.shred(recording_id, actor="retention", role="system", reason="retention", source="retention")
    assert result.shredded_now
    assert not result.blob_deleted
    assert parts.catalog.wrapped_key(recording_id) is None  # the crypto-shred happened
    monkeypatch.undo()
    assert parts.vault.shred(recording_id, actor="retention", role="system", reason="retry", source="r").blob_deleted


def test_shredded_recording_is_unrecoverable_from_saved_blob_and_keyring(local: Parts) -> None:
    """Acceptance 4a: with a copy of the blob and the master keyring, nothing unwraps after shred."""
    content = b"MARKER-shred-me " * 400
    store(local, b"neighbour before", call_id="before")  # key rows sharing the page stay
    recording_id = store(local, content)
    store(local, b"neighbour after", call_id="after")
    wrapped = local.catalog.wrapped_key(recording_id)
    assert wrapped is not None
    saved_blob = local.blobs.path_of(recording_id).read_bytes()
    saved_keyring = (local.root / "keyring.json").read_bytes()
    local.vault.shred(recording_id, actor="dpo", role="dpo", reason="test", source="test")
    # The wrapped key is nowhere at rest any more: not in the blob, the database, its WAL, the keyring.
    assert wrapped.ciphertext not in saved_blob
    for path in files_under(local.root):
        assert wrapped.ciphertext not in path.read_bytes(), path
    assert saved_keyring == (local.root / "keyring.json").read_bytes()  # the master key is still there
    assert local.catalog.wrapped_key(recording_id) is None


def test_rotate_rewraps_every_row_in_batches_and_never_touches_blobs(parts: Parts) -> None:
    ids = [store(parts, f"recording {n} ".encode() * 100, call_id=f"c-{n}") for n in range(7)]
    blobs_before = {i: parts.blobs.path_of(i).read_bytes() for i in ids}
    seen: list[tuple[int, int]] = []
    report = parts.vault.rotate(lambda done, total: seen.append((done, total)))
    assert (report.version, report.previous_version, report.total, report.rewrapped) == (2, 1, 7, 7)
    assert report.failed == ()
    assert seen[0] == (0, 7)
    assert seen[-1] == (7, 7)
    assert len(seen) == 1 + 3  # batches of 3
    assert parts.catalog.counts() == {2: 7}
    assert {i: parts.blobs.path_of(i).read_bytes() for i in ids} == blobs_before
    parts.vault.retire(1)
    assert [(v.version, v.state, v.rows) for v in parts.vault.key_versions()] == [(2, "current", 7)]
    for n, recording_id in enumerate(ids):
        assert read_all(parts, recording_id) == f"recording {n} ".encode() * 100


def test_retire_is_refused_while_rows_use_the_version(parts: Parts) -> None:
    recording_id = store(parts, b"kept")
    with pytest.raises(KeyInUseError, match="current"):
        parts.vault.retire(1)
    parts.keyring.rotate()  # a new version without rewrapping: rows still use version 1
    with pytest.raises(KeyInUseError, match="1 key row"):
        parts.vault.retire(1)
    assert [(v.version, v.state, v.rows) for v in parts.vault.key_versions()] == [(1, "active", 1), (2, "current", 0)]
    with pytest.raises(KeyNotFoundError):
        parts.vault.retire(9)
    assert read_all(parts, recording_id) == b"kept"


def test_rotation_skips_rows_it_cannot_unwrap(parts: Parts) -> None:
    good = store(parts, b"good", call_id="good")
    bad = store(parts, b"bad", call_id="bad")
    with parts.db.transaction() as tx:
        tx.execute("UPDATE recording_keys SET wrapped = ? WHERE recording_id = ?", (b"\x00" * 60, bad))
    report = parts.vault.rotate()
    assert report.failed == (bad,)
    assert report.rewrapped == 1
    assert parts.catalog.counts() == {1: 1, 2: 1}
    assert read_all(parts, good) == b"good"


def test_rewrap_never_resurrects_a_row_shredded_meanwhile(parts: Parts) -> None:
    recording_id = store(parts, b"gone soon")
    wrapped = parts.catalog.wrapped_key(recording_id)
    assert wrapped is not None
    parts.vault.shred(recording_id, actor="dpo", role="dpo", reason="r", source="s")
    from vault.service import KeyReplacement

    new = WrappedKey(version=2, ciphertext=b"\x01" * 60)
    assert parts.catalog.replace([KeyReplacement(recording_id, wrapped, new)]) == 0
    assert parts.catalog.wrapped_key(recording_id) is None


def test_saved_key_store_is_useless_after_rotate_and_retire(local: Parts) -> None:
    """Acceptance 4b: a copy of the key store taken before rotation cannot unwrap once the version is retired."""
    recording_id = store(local, b"backed up " * 100)
    backup = local.root / "backup.sqlite"
    with sqlite3.connect(local.root / "meta.sqlite") as source, sqlite3.connect(backup) as target:
        source.backup(target)
    source.close()
    target.close()
    saved_blob = local.root / "saved-blob"
    shutil.copyfile(local.blobs.path_of(recording_id), saved_blob)
    local.vault.rotate()
    local.vault.shred(recording_id, actor="dpo", role="dpo", reason="erasure", source="test")
    local.vault.retire(1)
    with sqlite3.connect(backup) as conn:
        version, ciphertext = conn.execute(
            "SELECT key_version, wrapped FROM recording_keys WHERE recording_id = ?", (recording_id,)
        ).fetchone()
    conn.close()
    assert version == 1
    with pytest.raises(KeyNotFoundError):
        local.keyring.unwrap(WrappedKey(version, bytes(ciphertext)), recording_id.encode())
    with pytest.raises(KeyNotFoundError):
        LocalKeyring.load(local.root / "keyring.json").unwrap(WrappedKey(version, bytes(ciphertext)), b"")


def test_verify_reports_damaged_recordings_by_id(local: Parts) -> None:
    intact = store(local, b"intact " * 2000, call_id="ok")
    flipped = store(local, b"flipped " * 2000, call_id="flip")
    missing = store(local, b"missing " * 2000, call_id="gone")
    truncated = store(local, b"truncated " * 2000, call_id="cut")
    shredded = store(local, b"shredded", call_id="shred")
    local.vault.shred(shredded, actor="dpo", role="dpo", reason="r", source="s")
    path = local.blobs.path_of(flipped)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    local.blobs.path_of(missing).unlink()
    path = local.blobs.path_of(truncated)
    path.write_bytes(path.read_bytes()[:-100])
    seen: list[tuple[int, int]] = []
    report = local.vault.verify(lambda done, total: seen.append((done, total)))
    assert report.checked == 4
    assert not report.ok
    assert {d.recording_id: d.problem for d in report.damaged} == {
        flipped: "failed authentication",
        missing: "blob missing",
        truncated: "failed authentication",
    }
    assert intact not in {d.recording_id for d in report.damaged}
    assert seen[-1][0] == seen[-1][1] == report.bytes_checked


def test_verify_catches_a_catalog_that_lies_about_the_content(local: Parts) -> None:
    recording_id = store(local, b"content")
    with local.db.transaction() as tx:
        tx.execute("UPDATE recordings SET sha256 = ? WHERE id = ?", ("0" * 64, recording_id))
    assert [d.problem for d in local.vault.verify().damaged] == ["sha256 differs from the catalog"]


def test_writer_sees_the_pieces_it_is_given(local: Parts) -> None:
    upload = local.vault.begin_upload(tenant="acme", pbx="p", call_id="pieces", content_type="a/b")
    for size in (300_000, 1, 200_000):
        upload.write(b"z" * size)
    assert (upload.pieces, upload.largest_piece, upload.size) == (3, 300_000, 500_001)
    upload.abort()


def test_early_writeback_covers_the_whole_blob_written_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step drops everything written so far: written-back pages leave the cache, the newest start writing.

    Advising only the newest range (as before) hit dirty pages only, and every page of a recording
    stayed in the page cache.
    """
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    step = _EarlyWriteback.STEP
    with open(tmp_path / "blob", "wb") as out:
        writeback = _EarlyWriteback(out)
        for _ in range(5):  # 2.5 steps in half steps
            out.write(bytes(step // 2))
            writeback.advance()
    assert calls == [(0, step, os.POSIX_FADV_DONTNEED), (0, 2 * step, os.POSIX_FADV_DONTNEED)]

"""BlobStore contract (LocalBlobStore today; other backends join the ``blob_store`` fixture)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vault.blobs import LocalBlobStore
from vault.envelope import EnvelopeReader, EnvelopeWriter, new_data_key
from vault.errors import BlobExistsError, BlobNotFoundError
from vault.ports import BlobStore


@pytest.fixture(params=["local"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    assert request.param == "local"
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def umask_zero() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _put(store: BlobStore, blob_id: str, data: bytes) -> None:
    with store.open_writer(blob_id) as out:
        out.write(data)


def test_write_then_read(blob_store: BlobStore) -> None:
    _put(blob_store, "rec-1", b"hello world")
    assert blob_store.exists("rec-1")
    assert blob_store.size("rec-1") == 11
    with blob_store.open_reader("rec-1") as reader:
        reader.seek(6)
        assert reader.read() == b"world"
        assert reader.seekable()


def test_iter_ids_lists_committed_blobs(blob_store: BlobStore) -> None:
    ids = {f"rec_{i}" for i in range(20)}
    for blob_id in ids:
        _put(blob_store, blob_id, blob_id.encode())
    assert set(blob_store.iter_ids()) == ids


def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    _put(blob_store, "rec-1", b"x")
    assert blob_store.delete("rec-1") is True
    assert blob_store.delete("rec-1") is False
    assert not blob_store.exists("rec-1")
    assert list(blob_store.iter_ids()) == []


def test_missing_blob(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError) as info:
        blob_store.open_reader("nope")
    assert info.value.code == "vault.blob_not_found"
    with pytest.raises(BlobNotFoundError):
        blob_store.size("nope")
    assert not blob_store.exists("nope")


def test_writes_are_invisible_until_committed(blob_store: BlobStore) -> None:
    with blob_store.open_writer("rec-1") as out:
        out.write(b"partial")
        assert not blob_store.exists("rec-1")
        assert list(blob_store.iter_ids()) == []
    assert blob_store.exists("rec-1")


def test_failed_write_leaves_nothing(blob_store: BlobStore, tmp_path: Path) -> None:
    def interrupted_upload() -> None:
        with blob_store.open_writer("rec-1") as out:
            out.write(b"partial")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        interrupted_upload()
    assert not blob_store.exists("rec-1")
    assert list(blob_store.iter_ids()) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_blobs_are_write_once(blob_store: BlobStore, tmp_path: Path) -> None:
    _put(blob_store, "rec-1", b"first")
    with pytest.raises(BlobExistsError):
        _put(blob_store, "rec-1", b"second")
    with blob_store.open_reader("rec-1") as reader:
        assert reader.read() == b"first"
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1  # temp file cleaned up


@pytest.mark.parametrize(
    "blob_id", ["", ".", "..", "../x", "a/b", "a\\b", "a.b", "x" * 129, "é", "a\x00b", "a b", "/etc/passwd"]
)
def test_unsafe_ids_are_rejected(blob_store: BlobStore, blob_id: str) -> None:
    with pytest.raises(ValueError, match="blob id"):
        blob_store.open_writer(blob_id).__enter__()
    for operation in (blob_store.open_reader, blob_store.delete, blob_store.exists, blob_store.size):
        with pytest.raises(ValueError, match="blob id"):
            operation(blob_id)


def test_local_files_are_0600_and_directories_0700(tmp_path: Path, umask_zero: None) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    _put(store, "rec-1", b"x")
    path = store.path_of("rec-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, path.parent.parent, store.root):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert path.parent.parent.parent == store.root  # two shard levels


def test_local_sharding_spreads_ids(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    shards = {store.path_of(f"rec-{i}").parent for i in range(50)}
    assert len(shards) > 40


def test_local_ignores_foreign_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    _put(store, "rec-1", b"x")
    shard = store.path_of("rec-1").parent
    (shard / ".rec-2.abcd.tmp").write_bytes(b"left by a crash")
    (shard / "notes.txt").write_bytes(b"?")
    assert list(store.iter_ids()) == ["rec-1"]


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        LocalBlobStore(tmp_path / "file")


def test_envelope_through_the_blob_store(blob_store: BlobStore) -> None:
    key = new_data_key()
    plaintext = os.urandom(200_000)
    with blob_store.open_writer("rec-1") as out:
        writer = EnvelopeWriter(out, key, "rec-1")
        writer.write(plaintext)
        writer.close()
    with blob_store.open_reader("rec-1") as src:
        reader = EnvelopeReader(src, key, "rec-1")
        assert reader.read_at(70_000, 100_000) == plaintext[70_000:170_000]
        reader.verify()

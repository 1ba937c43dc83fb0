"""LocalKeyring: wrap/unwrap bound to a context, rotation, retirement, file safety, single-host warning."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import vault.keyring as keyring_module
from vault.errors import CorruptRecordingError, KeyNotFoundError, KeyringError
from vault.keyring import LocalKeyring, SingleHostKeyringWarning, rewrap
from vault.ports import KeyProvider, WrappedKey

pytestmark = pytest.mark.filterwarnings("ignore::vault.keyring.SingleHostKeyringWarning")

DATA_KEY = bytes(range(32))
CONTEXT = b"rec-0001"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keyring.json"


@pytest.fixture
def keyring(path: Path) -> LocalKeyring:
    return LocalKeyring.create(path)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with umask 0 so only the code's own modes protect the files."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _document(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def test_create_starts_at_version_one_with_mode_0600(path: Path, umask_zero: None) -> None:
    keyring = LocalKeyring.create(path)
    assert keyring.current_version == 1
    assert keyring.versions() == [1]
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_create_refuses_to_overwrite(path: Path) -> None:
    path.write_text("precious")
    path.chmod(0o600)
    with pytest.raises(KeyringError, match="already exists"):
        LocalKeyring.create(path)
    assert path.read_text() == "precious"


def test_wrap_unwrap_round_trip(keyring: LocalKeyring) -> None:
    wrapped = keyring.wrap(DATA_KEY, CONTEXT)
    assert wrapped.version == 1
    assert DATA_KEY not in wrapped.ciphertext
    assert keyring.unwrap(wrapped, CONTEXT) == DATA_KEY
    assert keyring.wrap(DATA_KEY, CONTEXT).ciphertext != wrapped.ciphertext  # random nonce
    assert "ciphertext" not in repr(wrapped)


def test_swapped_key_row_fails_to_unwrap(keyring: LocalKeyring) -> None:
    wrapped = keyring.wrap(DATA_KEY, CONTEXT)
    with pytest.raises(CorruptRecordingError):
        keyring.unwrap(wrapped, b"rec-0002")


def test_tampered_wrapped_key_fails(keyring: LocalKeyring) -> None:
    wrapped = keyring.wrap(DATA_KEY, CONTEXT)
    for position in range(len(wrapped.ciphertext)):
        tampered = bytearray(wrapped.ciphertext)
        tampered[position] ^= 0x80
        with pytest.raises(CorruptRecordingError):
            keyring.unwrap(WrappedKey(wrapped.version, bytes(tampered)), CONTEXT)
    with pytest.raises(CorruptRecordingError):
        keyring.unwrap(WrappedKey(wrapped.version, wrapped.ciphertext[:-1]), CONTEXT)


def test_relabelled_version_fails(keyring: LocalKeyring) -> None:
    wrapped = keyring.wrap(DATA_KEY, CONTEXT)
    keyring.rotate()
    with pytest.raises(CorruptRecordingError):
        keyring.unwrap(WrappedKey(2, wrapped.ciphertext), CONTEXT)


def test_wrap_rejects_misuse(keyring: LocalKeyring) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        keyring.wrap(b"short", CONTEXT)
    with pytest.raises(TypeError):
        keyring.wrap(DATA_KEY, "rec-0001")  # type: ignore[arg-type]


def test_rotate_then_old_rows_unwrap_and_rewrap_moves_them(keyring: LocalKeyring) -> None:
    old = keyring.wrap(DATA_KEY, CONTEXT)
    assert keyring.rotate() == 2
    assert keyring.current_version == 2
    assert keyring.versions() == [1, 2]
    assert keyring.unwrap(old, CONTEXT) == DATA_KEY
    new = keyring.wrap(DATA_KEY, CONTEXT)
    assert new.version == 2
    moved = rewrap(keyring, old, CONTEXT)
    assert moved.version == 2
    assert keyring.unwrap(moved, CONTEXT) == DATA_KEY
    assert rewrap(keyring, moved, CONTEXT) is moved


def test_retire_destroys_the_old_version(keyring: LocalKeyring, path: Path) -> None:
    old = keyring.wrap(DATA_KEY, CONTEXT)
    old_material = _document(path)["keys"]["1"]  # type: ignore[index]
    keyring.rotate()
    current = keyring.wrap(DATA_KEY, CONTEXT)
    keyring.retire(1)
    assert keyring.versions() == [2]
    with pytest.raises(KeyNotFoundError):
        keyring.unwrap(old, CONTEXT)
    assert keyring.unwrap(current, CONTEXT) == DATA_KEY
    document = _document(path)
    assert document["retired"] == [1]
    assert "1" not in document["keys"]  # type: ignore[operator]
    assert str(old_material) not in path.read_text()
    with pytest.raises(KeyNotFoundError):
        LocalKeyring.load(path).unwrap(old, CONTEXT)


def test_retire_refuses_current_and_unknown(keyring: LocalKeyring) -> None:
    with pytest.raises(KeyringError, match="current"):
        keyring.retire(1)
    with pytest.raises(KeyNotFoundError):
        keyring.retire(7)
    assert keyring.versions() == [1]


def test_unknown_version_is_key_not_found(keyring: LocalKeyring) -> None:
    with pytest.raises(KeyNotFoundError) as info:
        keyring.unwrap(WrappedKey(99, bytes(60)), CONTEXT)
    assert info.value.code == "vault.key_not_found"


def test_version_numbers_are_never_reused(keyring: LocalKeyring) -> None:
    keyring.rotate()
    keyring.retire(1)
    assert keyring.rotate() == 3
    keyring.retire(2)
    assert keyring.rotate() == 4
    assert keyring.versions() == [3, 4]


def test_modes_stay_0600_across_rotation_and_retirement(keyring: LocalKeyring, path: Path, umask_zero: None) -> None:
    keyring.rotate()
    assert _mode(path) == 0o600
    keyring.retire(1)
    assert _mode(path) == 0o600
    assert _mode(path.with_name(path.name + ".lock")) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]


def test_other_instances_see_rotation_and_retirement(keyring: LocalKeyring, path: Path) -> None:
    other = LocalKeyring.load(path)
    old = keyring.wrap(DATA_KEY, CONTEXT)
    other.rotate()
    assert keyring.current_version == 2
    fresh = other.wrap(DATA_KEY, CONTEXT)
    assert keyring.unwrap(fresh, CONTEXT) == DATA_KEY
    other.retire(1)
    with pytest.raises(KeyNotFoundError):
        keyring.unwrap(old, CONTEXT)


def test_concurrent_rotations_lose_no_version(path: Path) -> None:
    LocalKeyring.create(path)
    instances = [LocalKeyring.load(path) for _ in range(8)]
    results: list[int] = []
    threads = [threading.Thread(target=lambda k=k: results.append(k.rotate())) for k in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(2, 10))
    assert LocalKeyring.load(path).versions() == list(range(1, 10))


def test_group_or_world_readable_file_is_refused(keyring: LocalKeyring, path: Path) -> None:
    path.chmod(0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        LocalKeyring.load(path)


def test_missing_file_is_a_keyring_error(path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist") as info:
        LocalKeyring.load(path)
    assert info.value.code == "vault.keyring"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"format": "other"}',
        '{"format": "telgate-keyring", "format_version": 2}',
        '{"format": "telgate-keyring", "format_version": 1, "current_version": 1, "keys": {}, "retired": []}',
        '{"format": "telgate-keyring", "format_version": 1, "current_version": 1,'
        ' "keys": {"1": "c2hvcnQ="}, "retired": []}',
        '{"format": "telgate-keyring", "format_version": 1, "current_version": 1, "keys": {"1": "!!!"}, "retired": []}',
    ],
)
def test_malformed_file_is_a_keyring_error(path: Path, content: str) -> None:
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyringError):
        LocalKeyring.load(path)


def test_file_format_is_as_documented(keyring: LocalKeyring, path: Path) -> None:
    document = _document(path)
    assert document["format"] == "telgate-keyring"
    assert document["format_version"] == 1
    assert document["current_version"] == 1
    assert len(base64.b64decode(document["keys"]["1"])) == 32  # type: ignore[index]


def test_local_keyring_is_a_key_provider(keyring: LocalKeyring) -> None:
    provider: KeyProvider = keyring
    assert provider.current_version == 1


@pytest.mark.filterwarnings("default::vault.keyring.SingleHostKeyringWarning")
def test_warns_once_that_it_suits_a_single_host(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring_module, "_warned_single_host", False)
    with pytest.warns(SingleHostKeyringWarning, match="single-host"):
        LocalKeyring.create(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LocalKeyring.load(path)  # no second warning in the same process

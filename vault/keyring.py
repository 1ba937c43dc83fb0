"""``LocalKeyring``: versioned master keys in a local 0600 file, the embedded ``KeyProvider``.

Data flow::

    data_key --wrap(context)--> AES-256-GCM(master[current], nonce, aad) --> WrappedKey(version, nonce|ct)
    WrappedKey --unwrap(context)--> master[version] --> data_key     (KeyNotFoundError if retired)
    rotate(): new version becomes current; old rows still unwrap until rewrap() moves them
    retire(v): version v's key material is deleted from the file; its rows are gone for good

File (JSON, mode 0600, replaced atomically: temp file + fsync + rename + fsync of the directory)::

    {"format": "telgate-keyring", "format_version": 1, "current_version": 2,
     "keys": {"2": "<base64 32 bytes>", ...}, "retired": [1]}

Retired version numbers are remembered so a number is never reused. Mutations take an exclusive
``flock`` on ``<file>.lock`` and re-read the file first, so two CLI processes cannot lose an update;
readers pick up another process's rotation or retirement on their next call (the file's identity is
checked by ``stat``). Retiring rewrites the file without the key; like any file deletion it cannot
promise the old bytes are gone from the disk's blocks or from backups of the keyring file itself.
A local file protects keys only as well as the host does, and it cannot be shared between gateway
nodes: the constructor warns once that it suits a single host. Use a PKCS#11 HSM or a KMS provider for
anything larger.

Errors: ``KeyringError`` (file missing, malformed, group/world-accessible, unwritable, retiring the
current version), ``KeyNotFoundError`` (unknown or retired version), ``CorruptRecordingError`` (a wrapped
key that fails authentication, e.g. under another recording's context).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import struct
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: TID251

from vault.errors import CorruptRecordingError, KeyNotFoundError, KeyringError
from vault.ports import KeyProvider, WrappedKey

__all__ = ["LocalKeyring", "SingleHostKeyringWarning", "rewrap"]

_LOG = logging.getLogger(__name__)

_FORMAT: Final = "telgate-keyring"
_FORMAT_VERSION: Final = 1
_MASTER_KEY_SIZE: Final = 32
_DATA_KEY_SIZE: Final = 32
_NONCE_SIZE: Final = 12
_WRAPPED_SIZE: Final = _NONCE_SIZE + _DATA_KEY_SIZE + 16
_AAD_LABEL: Final = b"telgate/keyring/v1/wrap"
_AAD_VERSION: Final = struct.Struct(">I")

_warned_single_host = False
_warn_lock = threading.Lock()


class SingleHostKeyringWarning(UserWarning):
    """The local keyring keeps master keys in a file on one host: not for multi-node deployments."""


def rewrap(provider: KeyProvider, wrapped: WrappedKey, context: bytes) -> WrappedKey:
    """Re-encrypt a wrapped key under the provider's current version (no-op if already current)."""
    if wrapped.version == provider.current_version:
        return wrapped
    return provider.wrap(provider.unwrap(wrapped, context), context)


@dataclass(frozen=True)
class _State:
    current_version: int
    keys: dict[int, bytes]
    retired: frozenset[int]
    identity: tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size of the file read


class LocalKeyring:
    """Versioned master keys in a local 0600 JSON file; a single-host ``KeyProvider``."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._aeads: dict[int, AESGCM] = {}
        self._state = self._read()
        _warn_single_host(self._path)

    @classmethod
    def create(cls, path: Path) -> LocalKeyring:
        """Create a new keyring file with master-key version 1; refuses to overwrite any file."""
        path = Path(path)
        document = _document(current_version=1, keys={1: secrets.token_bytes(_MASTER_KEY_SIZE)}, retired=())
        _write_atomically(path, document, exclusive=True)
        _LOG.info("vault: created keyring %s with master-key version 1", path)
        return cls(path)

    @classmethod
    def load(cls, path: Path) -> LocalKeyring:
        """Open an existing keyring file."""
        return cls(path)

    @property
    def path(self) -> Path:
        """Location of the keyring file."""
        return self._path

    @property
    def current_version(self) -> int:
        """The master-key version new wraps use."""
        return self._fresh_state().current_version

    def versions(self) -> list[int]:
        """Master-key versions still present (not retired), ascending."""
        return sorted(self._fresh_state().keys)

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current version with ``context`` as associated data."""
        if not isinstance(data_key, bytes | bytearray) or not isinstance(context, bytes | bytearray):
            raise TypeError("data_key and context must be bytes")
        if len(data_key) != _DATA_KEY_SIZE:
            raise ValueError(f"data_key must be {_DATA_KEY_SIZE} bytes")
        state = self._fresh_state()
        version = state.current_version
        nonce = secrets.token_bytes(_NONCE_SIZE)
        sealed = self._aead(state, version).encrypt(nonce, bytes(data_key), _aad(version, context))
        return WrappedKey(version=version, ciphertext=nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Recover a data key; CorruptRecordingError if altered or ``context`` differs."""
        if not isinstance(context, bytes | bytearray):
            raise TypeError("context must be bytes")
        state = self._fresh_state()  # picks up another process's rotation or retirement
        if wrapped.version not in state.keys:
            retired = wrapped.version in state.retired
            _LOG.warning(
                "vault: unwrap with master-key version %d refused (%s)",
                wrapped.version,
                "retired" if retired else "unknown",
            )
            raise KeyNotFoundError(f"master key version {wrapped.version} is not available")
        if len(wrapped.ciphertext) != _WRAPPED_SIZE:
            _LOG.warning("vault: wrapped key of %d bytes refused", len(wrapped.ciphertext))
            raise CorruptRecordingError()
        nonce, sealed = wrapped.ciphertext[:_NONCE_SIZE], wrapped.ciphertext[_NONCE_SIZE:]
        try:
            return self._aead(state, wrapped.version).decrypt(nonce, sealed, _aad(wrapped.version, context))
        except InvalidTag:
            _LOG.warning(
                "vault: wrapped key failed authentication under master-key version %d "
                "(row altered or bound to another recording)",
                wrapped.version,
            )
            raise CorruptRecordingError() from None

    def rotate(self) -> int:
        """Add a new master-key version, make it current and return its number."""
        with self._exclusive():
            state = self._read()
            version = max([*state.keys, *state.retired]) + 1
            keys = {**state.keys, version: secrets.token_bytes(_MASTER_KEY_SIZE)}
            _write_atomically(self._path, _document(version, keys, state.retired), exclusive=False)
            self._install(self._read())
        _LOG.info("vault: keyring %s rotated to master-key version %d", self._path, version)
        return version

    def retire(self, version: int) -> None:
        """Delete a non-current version's key material from the file for good."""
        with self._exclusive():
            state = self._read()
            if version == state.current_version:
                raise KeyringError(f"cannot retire master key version {version}: it is current")
            if version not in state.keys:
                raise KeyNotFoundError(f"master key version {version} is not available")
            keys = {v: k for v, k in state.keys.items() if v != version}
            _write_atomically(
                self._path, _document(state.current_version, keys, state.retired | {version}), exclusive=False
            )
            self._install(self._read())
        _LOG.info("vault: keyring %s retired master-key version %d", self._path, version)

    def __repr__(self) -> str:
        return f"LocalKeyring({str(self._path)!r})"

    def _aead(self, state: _State, version: int) -> AESGCM:
        aead = self._aeads.get(version)
        if aead is None:
            aead = AESGCM(state.keys[version])
            self._aeads[version] = aead
        return aead

    def _fresh_state(self) -> _State:
        state = self._state
        try:
            identity = _identity(os.stat(self._path))
        except OSError as exc:
            raise KeyringError(f"keyring {self._path} is not readable: {exc.strerror}") from exc
        if identity != state.identity:
            state = self._reload()
        return state

    def _reload(self) -> _State:
        with self._lock:
            state = self._read()
            self._install_locked(state)
            return state

    def _install(self, state: _State) -> None:
        with self._lock:
            self._install_locked(state)

    def _install_locked(self, state: _State) -> None:
        self._aeads = {v: a for v, a in self._aeads.items() if v in state.keys}
        self._state = state

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KeyringError(f"cannot open keyring lock {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> _State:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyringError(f"keyring {self._path} does not exist (create it first)") from None
        except OSError as exc:
            raise KeyringError(f"keyring {self._path} is not readable: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyringError(f"keyring {self._path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyringError(
                    f"keyring {self._path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {self._path}"
                )
            raw = handle.read()
        return _parse(raw, self._path, _identity(info))


def _aad(version: int, context: bytes) -> bytes:
    return _AAD_LABEL + _AAD_VERSION.pack(version) + bytes(context)


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _document(current_version: int, keys: dict[int, bytes], retired: Iterable[int]) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "current_version": current_version,
        "keys": {str(v): base64.b64encode(k).decode("ascii") for v, k in sorted(keys.items())},
        "retired": sorted(retired),
    }


def _parse(raw: bytes, path: Path, identity: tuple[int, int, int, int]) -> _State:
    bad = KeyringError(f"keyring {path} is malformed")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad from None
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise bad
    format_version = document.get("format_version")
    if format_version != _FORMAT_VERSION:
        raise KeyringError(f"keyring {path} has unsupported format_version {format_version!r}")
    try:
        current = document["current_version"]
        keys = {int(v): base64.b64decode(k, validate=True) for v, k in document["keys"].items()}
        retired = frozenset(int(v) for v in document["retired"])
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        raise bad from None
    if (
        not isinstance(current, int)
        or current not in keys
        or any(len(k) != _MASTER_KEY_SIZE for k in keys.values())
        or any(v < 1 for v in keys)
        or retired & keys.keys()
    ):
        raise bad
    return _State(current_version=current, keys=keys, retired=retired, identity=identity)


def _write_atomically(path: Path, document: dict[str, Any], *, exclusive: bool) -> None:
    """Write ``document`` as ``path`` via a 0600 temp file, fsync, rename (or link) and directory fsync."""
    payload = json.dumps(document, indent=2).encode("ascii") + b"\n"
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyringError(f"cannot write keyring in {directory}: {exc.strerror}") from exc
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(temp, path)  # fails if the target exists, unlike rename
            except FileExistsError:
                raise KeyringError(f"keyring {path} already exists; refusing to overwrite it") from None
        else:
            os.replace(temp, path)
        _fsync_directory(directory)
    except OSError as exc:
        raise KeyringError(f"cannot write keyring {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the rename still happened
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _warn_single_host(path: Path) -> None:
    global _warned_single_host  # once per process by design
    with _warn_lock:
        if _warned_single_host:
            return
        _warned_single_host = True
    message = (
        f"local keyring {path} keeps master keys in a file on this host: it suits a single-host "
        "deployment only; use a PKCS#11 HSM or a KMS key provider for several gateway nodes"
    )
    _LOG.warning("vault: %s", message)
    warnings.warn(message, SingleHostKeyringWarning, stacklevel=3)


def _conforms(keyring: LocalKeyring) -> KeyProvider:
    """Static check (mypy): LocalKeyring satisfies the KeyProvider port."""
    return keyring

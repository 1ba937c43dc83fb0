"""The vault's error tree: every failure the vault reports, each with a stable ``code``.

::

    VaultError                       vault.error
    ├── CorruptRecordingError        vault.corrupt              authentication failed, truncated, bad header
    ├── UnsupportedVersionError      vault.unsupported_version  file format version this build cannot read
    ├── KeyNotFoundError             vault.key_not_found        master-key version unknown or retired
    ├── KeyringError                 vault.keyring              keyring file missing, unreadable, unsafe
    ├── BlobNotFoundError            vault.blob_not_found       no blob with that id
    └── BlobExistsError              vault.blob_exists          a blob with that id is already committed

``gateway/errors.py`` maps each ``code`` to an HTTP status, a CLI exit code and an SFTP status; the codes
never change once released. ``CorruptRecordingError`` deliberately carries no detail (like
``cryptography.exceptions.InvalidTag``): whether the header, a chunk, the size or the key was wrong is
logged by the vault, never told to the caller. Misuse by our own code (wrong key length, negative
offset) raises ``TypeError``/``ValueError`` instead, as the standard library does.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VaultError(Exception):
    """Base of every error the vault raises; ``code`` is stable and machine-readable."""

    code: ClassVar[str] = "vault.error"
    default_message: ClassVar[str] = "vault error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class CorruptRecordingError(VaultError):
    """A recording failed authentication (bit flip, truncation, splice, wrong key, bad header)."""

    code: ClassVar[str] = "vault.corrupt"
    default_message: ClassVar[str] = "recording failed authentication"

    def __init__(self) -> None:
        super().__init__(self.default_message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle without arguments, since ``__init__`` takes none."""
        return (type(self), ())


class UnsupportedVersionError(VaultError):
    """The file's format version is unknown to this build (newer, or a refused older one)."""

    code: ClassVar[str] = "vault.unsupported_version"
    default_message: ClassVar[str] = "unsupported vault file format version"


class KeyNotFoundError(VaultError):
    """The master-key version a wrapped key names is unknown or has been retired."""

    code: ClassVar[str] = "vault.key_not_found"
    default_message: ClassVar[str] = "master key version not available"


class KeyringError(VaultError):
    """The master keyring cannot be created, read or written safely."""

    code: ClassVar[str] = "vault.keyring"
    default_message: ClassVar[str] = "keyring error"


class BlobNotFoundError(VaultError):
    """No blob is stored under the requested id."""

    code: ClassVar[str] = "vault.blob_not_found"
    default_message: ClassVar[str] = "blob not found"


class BlobExistsError(VaultError):
    """A blob is already committed under that id; blobs are write-once."""

    code: ClassVar[str] = "vault.blob_exists"
    default_message: ClassVar[str] = "blob already exists"

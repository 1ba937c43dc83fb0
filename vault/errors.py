"""The vault's error tree: every failure the vault reports, each with a stable ``code``.

::

    VaultError                       vault.error
    ├── CorruptRecordingError        vault.corrupt              authentication failed, truncated, bad header
    ├── UnsupportedVersionError      vault.unsupported_version  file format version this build cannot read
    ├── KeyNotFoundError             vault.key_not_found        master-key version unknown or retired
    ├── KeyringError                 vault.keyring              keyring file missing, unreadable, unsafe
    ├── BlobNotFoundError            vault.blob_not_found       no blob with that id
    ├── BlobExistsError              vault.blob_exists          a blob with that id is already committed
    ├── RecordingNotFoundError       vault.recording_not_found  no recording with that id
    │   └── RecordingShreddedError   vault.recording_shredded   destroyed: its key is gone for good
    ├── RecordingConflictError       vault.recording_conflict   same call id, different content
    ├── RecordingTooLargeError       vault.recording_too_large  over vault.max_recording_bytes
    └── KeyInUseError                vault.key_in_use           a key version still wraps data keys

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



class RecordingNotFoundError(VaultError):
    """No recording has that id."""

    code: ClassVar[str] = "vault.recording_not_found"
    default_message: ClassVar[str] = "no such recording"


class RecordingShreddedError(RecordingNotFoundError):
    """The recording was destroyed: its key is gone and it can never be read again."""

    code: ClassVar[str] = "vault.recording_shredded"
    default_message: ClassVar[str] = "the recording was shredded"


class RecordingConflictError(VaultError):
    """A live recording with the same call id and different content already exists."""

    code: ClassVar[str] = "vault.recording_conflict"
    default_message: ClassVar[str] = "a different recording with this call id already exists"


class RecordingTooLargeError(VaultError):
    """The recording exceeds the configured maximum size."""

    code: ClassVar[str] = "vault.recording_too_large"
    default_message: ClassVar[str] = "the recording exceeds the maximum size"


class KeyInUseError(VaultError):
    """A master-key version cannot be retired: it is current or key rows still use it."""

    code: ClassVar[str] = "vault.key_in_use"
    default_message: ClassVar[str] = "master key version still in use"

"""Ports the vault needs from the outside world; ``gateway/wiring.py`` supplies the implementations.

Data flow of an upload::

    PBX body --EnvelopeWriter(data_key)--> BlobStore.open_writer(blob_id)   (committed atomically)
    data_key --KeyProvider.wrap(context=recording id)--> WrappedKey --> key-store row

Implementations: ``vault.blobs.LocalBlobStore``, ``vault.keyring.LocalKeyring``; tests use fakes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Protocol


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under one master-key version; what the key store persists."""

    version: int
    ciphertext: bytes = field(repr=False)


class BlobStore(Protocol):
    """Write-once storage of opaque blobs (encrypted recordings) addressed by a safe string id."""

    def open_writer(self, blob_id: str) -> AbstractContextManager[BinaryIO]:
        """Return a context manager whose file is committed atomically on clean exit, discarded on error."""
        ...

    def open_reader(self, blob_id: str) -> BinaryIO:
        """Open a committed blob for seekable binary reading; the caller closes it."""
        ...

    def delete(self, blob_id: str) -> bool:
        """Remove a blob; True if it existed, False if it was already gone (idempotent)."""
        ...

    def exists(self, blob_id: str) -> bool:
        """Tell whether a committed blob exists under ``blob_id``."""
        ...

    def size(self, blob_id: str) -> int:
        """Return the stored size in bytes of a committed blob."""
        ...

    def iter_ids(self) -> Iterator[str]:
        """Yield the id of every committed blob (order unspecified), e.g. for orphan sweeps."""
        ...


class KeyProvider(Protocol):
    """Versioned master keys that wrap and unwrap per-recording data keys."""

    @property
    def current_version(self) -> int:
        """The master-key version new wraps use."""
        ...

    def versions(self) -> list[int]:
        """The master-key versions still able to unwrap, ascending."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current version, bound to ``context`` (the recording id)."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Recover a data key; the same ``context`` as at wrap time is required."""
        ...

    def rotate(self) -> int:
        """Add a new master-key version, make it current and return it."""
        ...

    def retire(self, version: int) -> None:
        """Destroy a non-current master-key version for good; its wrapped keys become unreadable."""
        ...


class Clock(Protocol):
    """Source of the current time, injected so expiry and retention are testable."""

    def now(self) -> datetime:
        """Return the current time as a timezone-aware UTC datetime."""
        ...

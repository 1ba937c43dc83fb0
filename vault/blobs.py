"""``LocalBlobStore``: write-once blobs (encrypted recordings) in a local directory tree.

Layout::

    <root>/                    0700
      <h0h1>/<h2h3>/           0700; h = SHA-256 hex of the blob id, spreads ids evenly
        <blob_id>              0600; the committed blob
        .<blob_id>.<rand>.tmp  0600; a write in progress (never listed, never readable as a blob)

A writer streams into the temp file; on a clean exit of its ``with`` block the file is fsynced, linked
into place (``link`` refuses an existing id, so blobs are write-once: ``BlobExistsError``) and the
directory is fsynced; on an exception the temp file is removed. ``delete`` is idempotent and returns
whether a blob was removed, so an interrupted destroy can simply be retried. Deleting does not overwrite
the bytes: the recording is already unreadable once its wrapped key is shredded.

Blob ids are opaque, case-sensitive strings of 1 to 128 characters from ``[A-Za-z0-9_-]``; anything else
(``..``, ``/``, empty) raises ``ValueError`` before touching the filesystem. Use a case-sensitive
filesystem for the root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from vault.errors import BlobExistsError, BlobNotFoundError
from vault.ports import BlobStore

__all__ = ["LocalBlobStore", "validate_blob_id"]

_LOG = logging.getLogger(__name__)

_BLOB_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600


def validate_blob_id(blob_id: str) -> str:
    """Return ``blob_id`` if it is a safe opaque id, else raise ``ValueError``."""
    if not isinstance(blob_id, str) or _BLOB_ID.fullmatch(blob_id) is None:
        raise ValueError("blob id must be 1 to 128 characters from [A-Za-z0-9_-]")
    return blob_id


class LocalBlobStore:
    """A ``BlobStore`` on a local directory: sharded, 0700/0600, atomic write-once commits."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        if not self._root.exists():
            self._root.mkdir(mode=_DIR_MODE, parents=True)
        elif not self._root.is_dir():
            raise NotADirectoryError(f"blob store root {self._root} is not a directory")

    @property
    def root(self) -> Path:
        """The directory holding the blobs."""
        return self._root

    def path_of(self, blob_id: str) -> Path:
        """Return where a blob lives (whether or not it exists); for diagnostics and tests."""
        digest = hashlib.sha256(validate_blob_id(blob_id).encode("ascii")).hexdigest()
        return self._root / digest[0:2] / digest[2:4] / blob_id

    @contextlib.contextmanager
    def open_writer(self, blob_id: str) -> Iterator[BinaryIO]:
        """Yield a file that becomes blob ``blob_id`` atomically when the ``with`` block succeeds."""
        final = self.path_of(blob_id)
        directory = final.parent
        self._make_dirs(directory)
        temp = directory / f".{blob_id}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        handle = os.fdopen(fd, "wb")
        committed = False
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            self._commit(temp, final)
            committed = True
        finally:
            handle.close()
            if not committed:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()

    def open_reader(self, blob_id: str) -> BinaryIO:
        """Open a committed blob for seekable binary reading; the caller closes it."""
        path = self.path_of(blob_id)
        try:
            return open(path, "rb")  # the caller closes it
        except FileNotFoundError:
            raise BlobNotFoundError() from None

    def delete(self, blob_id: str) -> bool:
        """Unlink a blob and fsync its directory; True if it existed, False if already gone."""
        path = self.path_of(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(path.parent)
        return True

    def exists(self, blob_id: str) -> bool:
        """Tell whether a committed blob exists under ``blob_id``."""
        return self.path_of(blob_id).is_file()

    def size(self, blob_id: str) -> int:
        """Return the stored size in bytes of a committed blob."""
        try:
            return self.path_of(blob_id).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError() from None

    def iter_ids(self) -> Iterator[str]:
        """Yield every committed blob id (temp files of unfinished writes are skipped)."""
        for level1 in sorted(_scandir(self._root)):
            for level2 in sorted(_scandir(self._root / level1)):
                for name in sorted(_scandir(self._root / level1 / level2, directories=False)):
                    if _BLOB_ID.fullmatch(name):
                        yield name

    def _make_dirs(self, directory: Path) -> None:
        for level in (directory.parent, directory):
            try:
                level.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                pass
            else:
                _fsync_directory(level.parent)

    def _commit(self, temp: Path, final: Path) -> None:
        try:
            os.link(temp, final)  # unlike rename, refuses to replace an existing blob
        except FileExistsError:
            raise BlobExistsError(f"blob {final.name} already exists") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # filesystem without hard links: check, then rename (not race-free, but ids are random)
            if final.exists():
                raise BlobExistsError(f"blob {final.name} already exists") from None
            os.rename(temp, final)
        else:
            temp.unlink()
        _fsync_directory(final.parent)


def _scandir(directory: Path, *, directories: bool = True) -> Iterator[str]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) == directories:
            yield entry.name


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
        _LOG.debug("vault: directory fsync unsupported for %s", directory)
    finally:
        os.close(fd)


def _conforms(store: LocalBlobStore) -> BlobStore:
    """Static check (mypy): LocalBlobStore satisfies the BlobStore port."""
    return store

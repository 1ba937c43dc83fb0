"""The data directory: its layout, and ``telgate init`` (idempotent; never overwrites a key).

::

    var/                      0700
      telgate.sqlite          0600  metadata store (operators, audit, tokens, staging, key rows, ...)
      secrets/                0700
        audit.key             0600  HMAC key of the audit chain
        pepper.key            0600  HMAC key for subject-token lookups
        sealing.key           0600  seals subjects' numbers and quarantined records
        ssh_host_ecdsa_key    0600  SFTP host key
      lake/                   0700  Iceberg catalog and warehouse
      vault/                  0700  encrypted recordings
        keyring.json          0600  master keys (versioned) wrapping the recordings' data keys
        recordings/           0700  encrypted recording blobs
      run/metrics/            0700  HTTP workers' Prometheus counters (emptied when the node starts)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from vault.keyring import LocalKeyring

SECRET_FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True)
class DataLayout:
    """Paths inside one data directory."""

    root: Path

    @property
    def secrets(self) -> Path:
        """Directory of key files."""
        return self.root / "secrets"

    @property
    def audit_key(self) -> Path:
        """HMAC key of the audit chain."""
        return self.secrets / "audit.key"

    @property
    def pepper(self) -> Path:
        """HMAC key for number lookups."""
        return self.secrets / "pepper.key"

    @property
    def sealing_key(self) -> Path:
        """Key sealing subjects' numbers (for DSAR and audited search) and quarantined records."""
        return self.secrets / "sealing.key"

    @property
    def host_key(self) -> Path:
        """The SFTP server's persistent host key."""
        return self.secrets / "ssh_host_ecdsa_key"

    @property
    def lake(self) -> Path:
        """Iceberg catalog and warehouse."""
        return self.root / "lake"

    @property
    def vault(self) -> Path:
        """Encrypted recordings and the master keyring."""
        return self.root / "vault"

    @property
    def keyring(self) -> Path:
        """The local master keyring (0600; a single-host key provider)."""
        return self.vault / "keyring.json"

    @property
    def recordings(self) -> Path:
        """The blob store of encrypted recordings."""
        return self.vault / "recordings"

    @property
    def metrics(self) -> Path:
        """Where HTTP worker processes keep their Prometheus values (``/metrics`` adds them up)."""
        return self.root / "run" / "metrics"

    @property
    def database(self) -> Path:
        """The default SQLite metadata store."""
        return self.root / "telgate.sqlite"


@dataclass
class InitReport:
    """What ``init`` created (empty on a second run)."""

    created: list[str] = field(default_factory=list)


def ensure_dir(path: Path) -> bool:
    """Create a 0700 directory (and parents); True if it was created."""
    if path.is_dir():
        return False
    path.mkdir(parents=True, mode=DIR_MODE)
    path.chmod(DIR_MODE)
    return True


def write_new_secret(path: Path, content: bytes) -> bool:
    """Write ``content`` to a new 0600 file; never overwrites. True if written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def read_secret(path: Path) -> bytes:
    """Read a key file, refusing one that others can read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_bytes()


def init_layout(layout: DataLayout) -> InitReport:
    """Create directories and key files that are missing; leave existing ones untouched."""
    report = InitReport()
    for directory in (layout.root, layout.secrets, layout.lake, layout.vault):
        if ensure_dir(directory):
            report.created.append(str(directory))
    for path in (layout.audit_key, layout.pepper, layout.sealing_key):
        if write_new_secret(path, secrets.token_bytes(32)):
            report.created.append(str(path))
    if not layout.host_key.exists():
        key = paramiko.ECDSAKey.generate(bits=256)
        buffer = _key_text(key)
        if write_new_secret(layout.host_key, buffer.encode()):
            report.created.append(str(layout.host_key))
    if not layout.keyring.exists():
        LocalKeyring.create(layout.keyring)  # never overwrites: refuses an existing file
        report.created.append(str(layout.keyring))
    return report


def _key_text(key: paramiko.PKey) -> str:
    import io

    out = io.StringIO()
    key.write_private_key(out)
    return out.getvalue()


def load_host_key(layout: DataLayout) -> paramiko.PKey:
    """The persistent SFTP host key."""
    read_secret(layout.host_key)  # mode check
    return paramiko.ECDSAKey.from_private_key_file(str(layout.host_key))

"""The Iceberg lake, opened on first use.

``telgate serve`` runs HTTP workers that ingest and take uploads but never read the lake unless an
operator searches it; the supervisor's flusher is what writes it. Opening the lake imports pyiceberg,
SQLAlchemy and pydantic (about 60 MB resident), so each process pays that only once it needs the lake.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.lake import IcebergLake


class LakeHandle:
    """Opens the lake at the first ``get`` (thread-safe) and closes it if it was opened."""

    def __init__(self, data_dir: Path, catalog_url: str = "", warehouse: str = "") -> None:
        """Empty ``catalog_url`` or ``warehouse``: the defaults under ``data_dir`` (``lake_locations``)."""
        self._data_dir = data_dir
        self._catalog_url = catalog_url
        self._warehouse = warehouse
        self._lock = threading.Lock()
        self._lake: IcebergLake | None = None

    @property
    def is_open(self) -> bool:
        """Whether this process has opened the lake."""
        return self._lake is not None

    def get(self) -> IcebergLake:
        """The open lake (opened now if this is the first use)."""
        lake = self._lake
        if lake is not None:
            return lake
        with self._lock:
            if self._lake is None:
                from ingest.lake import IcebergLake, lake_locations

                default_catalog, default_warehouse = lake_locations(self._data_dir)
                self._lake = IcebergLake.open(
                    self._catalog_url or default_catalog, self._warehouse or default_warehouse
                )
            return self._lake

    def close(self) -> None:
        """Close the lake if it was opened."""
        with self._lock:
            if self._lake is not None:
                self._lake.close()
                self._lake = None


class LakeWriterLock:
    """One lake writer at a time among the processes of a host: an exclusive ``flock`` on a file.

    Appends, compaction and reconciliation read the staging marker and then commit; two processes
    doing that at once (the supervisor's flusher and a worker answering ``POST /v1/admin/ingest/flush``)
    could append the same staged batch twice. The lock is released by the kernel if its holder dies.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.Lock()  # flock is per open file; threads of one process queue here

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the duration of the block (blocks until it is free)."""
        with self._local:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock

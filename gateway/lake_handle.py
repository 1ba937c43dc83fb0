"""The Iceberg lake, opened on first use.

``telgate serve`` runs HTTP workers that ingest and take uploads but never read the lake unless an
operator searches it; the supervisor's flusher is what writes it. Opening the lake imports pyiceberg,
SQLAlchemy and pydantic (about 60 MB resident), so each process pays that only once it needs the lake.
"""

from __future__ import annotations

import threading
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


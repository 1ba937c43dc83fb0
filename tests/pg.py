"""A throwaway PostgreSQL cluster for contract tests (``TELGATE_TEST_POSTGRES_URL`` wins if set)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@contextmanager
def postgres_cluster() -> Iterator[str | None]:
    """Yield a URL of an empty database, or None (with the reason printed) when none can be had."""
    explicit = os.environ.get("TELGATE_TEST_POSTGRES_URL")
    if explicit:
        yield explicit
        return
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl or (os.geteuid() == 0 and not shutil.which("runuser")):
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="telgate-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "telgate", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-k {root} -c listen_addresses='' -p {port} -c fsync=off"
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-o", options, "-w", "-t", "60", "-l", str(root / "log"), "start"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"postgresql://telgate@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)

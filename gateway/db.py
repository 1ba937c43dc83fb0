"""The metadata database: one small port, a SQLite implementation, versioned migrations.

Repositories (operators, sessions, audit, throttle, later PBXs, key rows, releases) are written once
against ``Database`` in portable SQL with ``?`` placeholders; each backend adapts placeholders and DDL.
The backend is picked by URL scheme (``open_database``). Every method is blocking: the aiohttp side
calls repositories through ``asyncio.to_thread``; paramiko threads call them directly.

Backends: ``SqliteDatabase`` (``sqlite:///PATH``, the embedded default) and ``PostgresDatabase``
(``postgresql://...``, for many nodes). Portable SQL: ``?`` placeholders, ``INSERT ... ON CONFLICT``,
``INTEGER`` (BIGINT in PostgreSQL), ``BLOB`` (BYTEA), timestamps as fixed-width UTC text.

Errors: any driver error leaves this module as ``BackendUnavailableError`` (or ``ConflictError`` for a
uniqueness violation), so no third-party exception escapes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import BackendUnavailableError, ConfigError, ConflictError

log = logging.getLogger("telgate.db")

Row = dict[str, Any]
Params = Sequence[Any]


class Transaction(Protocol):
    """Statements run inside one database transaction."""

    dialect: str

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows changed."""

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """Run a query and return its first row, or None."""

    def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a query and return every row."""


class Database(Protocol):
    """The metadata store's port: transactions plus one-shot reads."""

    dialect: str

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A context manager yielding a ``Transaction``; commits on success, rolls back on error."""

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the lock ``name`` for the block, against every process and node using this store."""

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """Run a read-only query outside an explicit transaction; first row or None."""

    def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a read-only query outside an explicit transaction; every row."""

    def close(self) -> None:
        """Release connections."""


def utc_text(moment: datetime) -> str:
    """A timestamp as fixed-width UTC text, so that text order is time order in every backend."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    """Inverse of ``utc_text``."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class _SqliteTransaction:
    dialect = "sqlite"

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Params = ()) -> int:
        self._cursor.execute(sql, tuple(params))
        return self._cursor.rowcount

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        self._cursor.execute(sql, tuple(params))
        row = self._cursor.fetchone()
        return dict(row) if row is not None else None

    def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        self._cursor.execute(sql, tuple(params))
        return [dict(row) for row in self._cursor.fetchall()]


class SqliteDatabase:
    """SQLite in WAL mode with synchronous=FULL: a committed transaction survives a crash."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # Create the file 0600 before SQLite does, so it is never world-readable.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._lock = threading.RLock()
        # Writers of every process queue on this file lock before BEGIN IMMEDIATE: the kernel wakes the
        # next one as soon as the lock is free, where SQLite's own busy handler sleeps and polls (1, 2, 5,
        # 10 ms...), which under several HTTP workers' group commits cost more than the commits.
        self._write_lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
            # Deleted rows (shredded key rows, erased subjects) must not survive in the file's free pages.
            self._conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
            raise BackendUnavailableError(f"cannot open SQLite database {path}") from exc
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                side.chmod(0o600)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One IMMEDIATE transaction (takes the write lock up front, so no upgrade deadlocks)."""
        with self._lock:
            cursor = self._conn.cursor()
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
            try:
                cursor.execute("BEGIN IMMEDIATE")
                yield _SqliteTransaction(cursor)
                cursor.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._rollback(cursor)
                raise ConflictError("the object already exists or is still referenced") from exc
            except sqlite3.Error as exc:
                self._rollback(cursor)
                raise BackendUnavailableError("metadata store error") from exc
            except BaseException:
                self._rollback(cursor)
                raise
            finally:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)
                cursor.close()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """An exclusive ``flock`` on ``<database>.<name>.lock``: every process of this host, released on death."""
        fd = os.open(f"{self.path}.{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _rollback(self, cursor: sqlite3.Cursor) -> None:
        if self._conn.in_transaction:
            try:
                cursor.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """Run a read outside a transaction."""
        with self._lock:
            try:
                row = self._conn.execute(sql, tuple(params)).fetchone()
            except sqlite3.Error as exc:
                raise BackendUnavailableError("metadata store error") from exc
            return dict(row) if row is not None else None

    def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a read outside a transaction."""
        with self._lock:
            try:
                return [dict(row) for row in self._conn.execute(sql, tuple(params)).fetchall()]
            except sqlite3.Error as exc:
                raise BackendUnavailableError("metadata store error") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
            if self._write_lock >= 0:  # close() may be called twice
                os.close(self._write_lock)
                self._write_lock = -1


# Versioned migrations per component: (version, statements). Never edit a released one; append a new
# version. Each domain module (operators/audit here; pbx, vault, ingest, releases in their own modules)
# owns its component's list, so parallel work never edits the same list.
Migrations = list[tuple[int, list[str]]]

CORE_MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE operators (
                name TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                disabled INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE sessions (
                token_hash TEXT PRIMARY KEY,
                operator TEXT NOT NULL REFERENCES operators(name),
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                source TEXT NOT NULL
            )""",
            "CREATE INDEX sessions_operator ON sessions(operator)",
            """CREATE TABLE audit (
                seq INTEGER PRIMARY KEY,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                role TEXT NOT NULL,
                action TEXT NOT NULL,
                object TEXT NOT NULL,
                reason TEXT NOT NULL,
                outcome TEXT NOT NULL,
                source TEXT NOT NULL,
                details TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX audit_at ON audit(at)",
            """CREATE TABLE audit_head (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL,
                hash TEXT NOT NULL,
                mac TEXT NOT NULL
            )""",
            """CREATE TABLE login_failures (
                scope TEXT NOT NULL,
                source TEXT NOT NULL,
                failures INTEGER NOT NULL,
                window_start TEXT NOT NULL,
                banned_until TEXT,
                PRIMARY KEY (scope, source)
            )""",
        ],
    ),
]


def migrate(db: Database, component: str = "core", migrations: Migrations = CORE_MIGRATIONS) -> int:
    """Apply every migration of ``component`` newer than the database's; returns the resulting version."""
    with db.transaction() as tx:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (component TEXT NOT NULL, version INTEGER NOT NULL,"
            " PRIMARY KEY (component, version))"
        )
        row = tx.fetch_one("SELECT MAX(version) AS v FROM schema_version WHERE component = ?", (component,))
        current = int(row["v"]) if row and row["v"] is not None else 0
        for version, statements in migrations:
            if version <= current:
                continue
            for statement in statements:
                tx.execute(statement)
            tx.execute("INSERT INTO schema_version (component, version) VALUES (?, ?)", (component, version))
            current = version
    return current


def _postgres_sql(sql: str) -> str:
    """Adapt portable SQL (``?`` placeholders, SQLite type names) to PostgreSQL."""
    adapted = sql.replace("?", "%s")
    adapted = re.sub(r"\bBLOB\b", "BYTEA", adapted)
    return re.sub(r"\bINTEGER\b", "BIGINT", adapted)


class _PostgresTransaction:
    dialect = "postgresql"

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Params = ()) -> int:
        self._cursor.execute(_postgres_sql(sql), tuple(params))
        return int(self._cursor.rowcount)

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        self._cursor.execute(_postgres_sql(sql), tuple(params))
        row = self._cursor.fetchone()
        return _pg_row(row) if row is not None else None

    def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        self._cursor.execute(_postgres_sql(sql), tuple(params))
        return [_pg_row(row) for row in self._cursor.fetchall()]


def _pg_row(row: dict[str, Any]) -> Row:
    # BYTEA comes back as memoryview; the repositories expect bytes, as from SQLite.
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}


class PostgresDatabase:
    """PostgreSQL through psycopg 3, for many gateway nodes sharing one metadata store."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise ConfigError(
                "the PostgreSQL backend needs the 'postgres' extra: pip install telgate[postgres]"
            ) from exc
        self._psycopg = psycopg
        self._url = url
        self._lock = threading.RLock()
        try:
            self._conn = psycopg.connect(url, row_factory=dict_row, autocommit=True)
        except psycopg.Error as exc:
            raise BackendUnavailableError("cannot connect to the PostgreSQL metadata store") from exc

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction on the node's connection."""
        psycopg = self._psycopg
        with self._lock:
            try:
                with self._conn.transaction(), self._conn.cursor() as cursor:
                    yield _PostgresTransaction(cursor)
            except psycopg.errors.UniqueViolation as exc:
                raise ConflictError("the object already exists or is still referenced") from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                raise ConflictError("the object is still referenced") from exc
            except psycopg.Error as exc:
                raise BackendUnavailableError("metadata store error") from exc

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session advisory lock on a connection of its own: every node, released if the holder dies."""
        psycopg = self._psycopg
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        try:
            connection = psycopg.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise BackendUnavailableError("cannot connect to the PostgreSQL metadata store") from exc
        try:
            try:
                connection.execute("SELECT pg_advisory_lock(%s)", (key,))
            except psycopg.Error as exc:
                raise BackendUnavailableError("metadata store error") from exc
            yield
        finally:
            connection.close()  # ending the session releases its advisory locks

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """Run a read outside an explicit transaction."""
        with self.transaction() as tx:
            return tx.fetch_one(sql, params)

    def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a read outside an explicit transaction."""
        with self.transaction() as tx:
            return tx.fetch_all(sql, params)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def open_database(url: str) -> SqliteDatabase | PostgresDatabase:
    """Open the metadata database named by ``url`` (``gateway.wiring`` migrates it)."""
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        if not rest.startswith("///"):
            raise ConfigError(f"metadata URL must look like sqlite:///PATH, got {url!r}")
        return SqliteDatabase(Path(rest[3:]))
    if scheme in {"postgresql", "postgres"}:
        return PostgresDatabase(url)
    raise ConfigError(f"unknown metadata URL scheme {scheme!r}")

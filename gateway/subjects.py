"""Subject tokens: the only link between the pseudonymised lake and a real phone number.

Each distinct E.164 number of a tenant maps to a random token (``sub_`` + 128 random bits). The row
holds ``HMAC(pepper, number)`` for lookup and the number sealed with the vault's envelope recipe for
re-identification (DSAR export, audited search). Erasure deletes the row: every lake row carrying the
token becomes unlinkable without rewriting Parquet files. Restriction flags the subject: kept, but
excluded from exports and releases.

This is the ``ingest.ports.SubjectTokens`` implementation. A small in-process cache keeps ingest off
the database for numbers it has seen; erasure on this node evicts it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.audit import Clock
from gateway.db import Database, Migrations, Transaction, utc_text
from gateway.errors import NotFoundError
from vault.envelope import decrypt_bytes, encrypt_bytes

MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE subjects (
                token TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                lookup TEXT NOT NULL,
                sealed BLOB NOT NULL,
                restricted INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                UNIQUE (tenant, lookup)
            )""",
            "CREATE INDEX subjects_lookup ON subjects(lookup)",
        ],
    ),
]

_CACHE_SIZE = 200_000
_CHUNK = 500  # numbers per statement (5 parameters each: well within SQLite's and PostgreSQL's limits)


@dataclass(frozen=True, slots=True)
class Subject:
    """A subject token of one tenant and its flags (never the number itself)."""

    token: str
    tenant: str
    restricted: bool


class SqlSubjectTokens:
    """Subject tokens in the metadata store, with a bounded in-process cache."""

    def __init__(self, db: Database, pepper: bytes, sealing_key: bytes, clock: Clock) -> None:
        if len(pepper) < 32 or len(sealing_key) != 32:
            raise ValueError("pepper must be >= 32 bytes and the sealing key exactly 32 bytes")
        self._db = db
        self._pepper = pepper
        self._sealing_key = sealing_key
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def lookup_hash(self, e164: str) -> str:
        """The keyed hash that finds a number's rows without storing it in the clear."""
        return hmac.new(self._pepper, e164.encode(), hashlib.sha256).hexdigest()

    def token_for(self, tenant: str, e164: str) -> str:
        """The token of ``e164`` for ``tenant``, created on first sight."""
        return self.tokens_for(tenant, [e164])[e164]

    def tokens_for(self, tenant: str, numbers: Iterable[str]) -> dict[str, str]:
        """Tokens for many numbers at once: one transaction for all the new ones."""
        found: dict[str, str] = {}
        missing: list[str] = []
        with self._lock:
            for number in set(numbers):
                token = self._cache.get((tenant, number))
                if token is None:
                    missing.append(number)
                else:
                    self._cache.move_to_end((tenant, number))
                    found[number] = token
        if missing:
            found.update(self._load_or_create(tenant, missing))
        return found

    def cached_tokens(self, tenant: str, numbers: Iterable[str]) -> dict[str, str]:
        """The tokens of ``numbers`` this node has cached (missing ones are left out); never blocks on I/O."""
        found: dict[str, str] = {}
        with self._lock:
            for number in set(numbers):
                token = self._cache.get((tenant, number))
                if token is not None:
                    self._cache.move_to_end((tenant, number))
                    found[number] = token
        return found

    def _load_or_create(self, tenant: str, numbers: list[str]) -> dict[str, str]:
        """Tokens of uncached numbers: one lookup per chunk, the new ones inserted together, then cached.

        Another node may create the same number meanwhile: ``ON CONFLICT DO NOTHING`` keeps its row,
        and the rows a chunk did not insert are read back, so every node answers with the stored token.
        """
        sealing_key = self._sealing_key
        lookups = {self.lookup_hash(number): number for number in numbers}
        result: dict[str, str] = {}
        # Numbers stored before (by another worker process, or before a restart) are read without a write
        # transaction: its lock is the one every writer of the node queues on, staging's group commits too.
        self._take_stored(self._db, tenant, lookups, result)
        if not lookups:
            return self._remember(tenant, result)
        now = utc_text(self._clock.now())
        # New rows are sealed before the write transaction too (tens of microseconds a number).
        tokens = {lookup: "sub_" + secrets.token_hex(16) for lookup in lookups}
        sealed = {
            lookup: encrypt_bytes(number.encode(), sealing_key, tokens[lookup]) for lookup, number in lookups.items()
        }
        with self._db.transaction() as tx:
            self._take_stored(tx, tenant, lookups, result)  # stored meanwhile by another process
            new = list(lookups.items())
            for first in range(0, len(new), _CHUNK):
                batch = new[first : first + _CHUNK]
                created = {lookup: tokens[lookup] for lookup, _ in batch}
                params: list[object] = []
                for lookup, _number in batch:
                    params += [created[lookup], tenant, lookup, sealed[lookup], now]
                rows = ", ".join(["(?, ?, ?, ?, 0, ?)"] * len(batch))
                inserted = tx.execute(
                    "INSERT INTO subjects (token, tenant, lookup, sealed, restricted, created_at)"  # noqa: S608
                    f" VALUES {rows} ON CONFLICT (tenant, lookup) DO NOTHING",
                    params,
                )
                if inserted != len(batch):  # another node created some of them first: take its tokens
                    created = self._stored(tx, tenant, [lookup for lookup, _ in batch])
                for lookup, number in batch:
                    result[number] = created[lookup]
        return self._remember(tenant, result)

    def _remember(self, tenant: str, tokens: dict[str, str]) -> dict[str, str]:
        with self._lock:
            for number, token in tokens.items():
                self._cache[(tenant, number)] = token
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return tokens

    @classmethod
    def _take_stored(
        cls, store: Transaction | Database, tenant: str, lookups: dict[str, str], result: dict[str, str]
    ) -> None:
        """Move the stored ones of ``lookups`` (lookup hash -> number) into ``result`` (number -> token)."""
        pending = list(lookups)
        for first in range(0, len(pending), _CHUNK):
            for lookup, token in cls._stored(store, tenant, pending[first : first + _CHUNK]).items():
                result[lookups.pop(lookup)] = token

    @staticmethod
    def _stored(store: Transaction | Database, tenant: str, lookups: list[str]) -> dict[str, str]:
        """Stored tokens of some lookup hashes (at most ``_CHUNK``), by lookup hash."""
        placeholders = ", ".join("?" * len(lookups))
        rows = store.fetch_all(
            f"SELECT lookup, token FROM subjects WHERE tenant = ? AND lookup IN ({placeholders})",  # noqa: S608
            [tenant, *lookups],
        )
        return {str(row["lookup"]): str(row["token"]) for row in rows}

    def find(self, e164: str, tenant: str | None = None) -> list[Subject]:
        """Every tenant's token for a number (or one tenant's); empty when unknown or erased."""
        sql = "SELECT token, tenant, restricted FROM subjects WHERE lookup = ?"
        params: list[str] = [self.lookup_hash(e164)]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        rows = self._db.fetch_all(sql + " ORDER BY tenant", params)
        return [Subject(str(r["token"]), str(r["tenant"]), bool(r["restricted"])) for r in rows]

    def reveal(self, token: str) -> str:
        """The number behind a token (callers audit this)."""
        row = self._db.fetch_one("SELECT sealed FROM subjects WHERE token = ?", (token,))
        if row is None:
            raise NotFoundError("no such subject (erased or never seen)")
        return decrypt_bytes(bytes(row["sealed"]), self._sealing_key, token).decode()

    def set_restricted(self, tx: Transaction, e164: str, restricted: bool) -> int:
        """Mark every token of a number restricted (or not); returns how many."""
        return tx.execute(
            "UPDATE subjects SET restricted = ? WHERE lookup = ?", (1 if restricted else 0, self.lookup_hash(e164))
        )

    def erase(self, tx: Transaction, e164: str, tenant: str | None = None) -> list[str]:
        """Delete the tokens of a number (unlinking its lake rows); returns the erased tokens."""
        erased = [subject.token for subject in self.find(e164, tenant)]
        for token in erased:
            tx.execute("DELETE FROM subjects WHERE token = ?", (token,))
        with self._lock:
            for key in [k for k, v in self._cache.items() if v in set(erased)]:
                del self._cache[key]
        return erased

    def created_since(self, moment: datetime) -> int:
        """How many subjects appeared since ``moment`` (metrics)."""
        row = self._db.fetch_one("SELECT COUNT(*) AS n FROM subjects WHERE created_at >= ?", (utc_text(moment),))
        return int(row["n"]) if row else 0

"""Customers (tenants) and PBX principals.

A PBX authenticates with ``Authorization: Bearer <token>`` or HTTP Basic with its name and token as
the password (what FreeSWITCH's ``cred=user:pass`` sends). Only the token's SHA-256 is stored. A PBX
writes only its own tenant; its time zone, country and Asterisk CSV column profile shape parsing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.db import Database, Migrations, Transaction, parse_utc, utc_text
from gateway.errors import BadRequestError, ConflictError, NotFoundError
from gateway.operators import validate_name
from gateway.security import new_token, token_digest
from ingest.formats.asterisk_csv import BASE_COLUMNS, PROFILES_BY_FIELD_COUNT

MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE customers (
                tenant TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE pbxs (
                name TEXT PRIMARY KEY,
                tenant TEXT NOT NULL REFERENCES customers(tenant),
                token_hash TEXT NOT NULL UNIQUE,
                timezone TEXT NOT NULL,
                country TEXT NOT NULL,
                csv_columns TEXT,
                revoked INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL
            )""",
        ],
    ),
]

# Every Asterisk cdr_csv column name, in Master.csv order (the 21-column profile).
ASTERISK_COLUMNS = PROFILES_BY_FIELD_COUNT[21]


@dataclass(frozen=True, slots=True)
class Customer:
    """A business customer: the tenant its PBXs write to and its releases belong to."""

    tenant: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Pbx:
    """A PBX principal and its parsing profile."""

    name: str
    tenant: str
    timezone: str
    country: str
    csv_columns: tuple[str, ...] | None  # None: detect the Asterisk profile from the field count
    revoked: bool
    created_at: datetime


def parse_csv_columns(spec: str | None) -> tuple[str, ...] | None:
    """``auto`` (or nothing) or a comma-separated list of Asterisk column names, validated."""
    if spec is None or spec.strip().lower() in {"", "auto"}:
        return None
    columns = tuple(part.strip().lower() for part in spec.split(",") if part.strip())
    unknown = [c for c in columns if c not in ASTERISK_COLUMNS]
    if unknown:
        raise BadRequestError(f"unknown Asterisk CSV column(s): {', '.join(unknown)}")
    if columns[:16] != BASE_COLUMNS:
        raise BadRequestError("the first 16 columns are fixed by cdr_csv: accountcode ... amaflags")
    return columns


def _pbx(row: dict[str, object]) -> Pbx:
    columns = str(row["csv_columns"]) if row["csv_columns"] else None
    return Pbx(
        name=str(row["name"]),
        tenant=str(row["tenant"]),
        timezone=str(row["timezone"]),
        country=str(row["country"]),
        csv_columns=tuple(columns.split(",")) if columns else None,
        revoked=bool(row["revoked"]),
        created_at=parse_utc(str(row["created_at"])),
    )


class PrincipalStore:
    """Customers and PBXs in the metadata store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_customer(self, tx: Transaction, tenant: str, name: str, now: datetime) -> Customer:
        """Register a customer tenant."""
        validate_name(tenant, "tenant")
        if not name.strip():
            raise BadRequestError("a customer needs a name")
        if tx.fetch_one("SELECT tenant FROM customers WHERE tenant = ?", (tenant,)):
            raise ConflictError(f"customer {tenant} already exists")
        tx.execute("INSERT INTO customers (tenant, name, created_at) VALUES (?, ?, ?)", (tenant, name, utc_text(now)))
        return Customer(tenant, name, now)

    def customers(self) -> list[Customer]:
        """Every customer."""
        rows = self._db.fetch_all("SELECT * FROM customers ORDER BY tenant")
        return [Customer(str(r["tenant"]), str(r["name"]), parse_utc(str(r["created_at"]))) for r in rows]

    def customer(self, tenant: str) -> Customer:
        """One customer by tenant."""
        row = self._db.fetch_one("SELECT * FROM customers WHERE tenant = ?", (tenant,))
        if row is None:
            raise NotFoundError(f"no customer with tenant {tenant}")
        return Customer(str(row["tenant"]), str(row["name"]), parse_utc(str(row["created_at"])))

    def add_pbx(
        self,
        tx: Transaction,
        name: str,
        tenant: str,
        timezone: str,
        country: str,
        csv_columns: tuple[str, ...] | None,
        now: datetime,
    ) -> str:
        """Register a PBX; returns its token (shown once)."""
        validate_name(name, "PBX name")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise BadRequestError(f"unknown IANA time zone {timezone!r}") from exc
        if len(country) != 2 or not country.isalpha():
            raise BadRequestError("country must be an ISO 3166 alpha-2 code such as GB")
        if tx.fetch_one("SELECT tenant FROM customers WHERE tenant = ?", (tenant,)) is None:
            raise NotFoundError(f"no customer with tenant {tenant}: add it with `telgate customer add`")
        if tx.fetch_one("SELECT name FROM pbxs WHERE name = ?", (name,)):
            raise ConflictError(f"PBX {name} already exists")
        token = new_token("tgp")
        tx.execute(
            "INSERT INTO pbxs (name, tenant, token_hash, timezone, country, csv_columns, revoked, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            (
                name,
                tenant,
                token_digest(token),
                timezone,
                country.upper(),
                ",".join(csv_columns) if csv_columns else None,
                utc_text(now),
            ),
        )
        return token

    def pbxs(self) -> list[Pbx]:
        """Every PBX."""
        return [_pbx(row) for row in self._db.fetch_all("SELECT * FROM pbxs ORDER BY name")]

    def revoke_pbx(self, tx: Transaction, name: str) -> None:
        """Revoke a PBX's token for good."""
        if tx.execute("UPDATE pbxs SET revoked = 1 WHERE name = ?", (name,)) == 0:
            raise NotFoundError(f"no PBX named {name}")

    def authenticate_pbx(self, authorization: str | None) -> Pbx | None:
        """The PBX behind a Bearer or Basic ``Authorization`` header, or None."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        claimed_name: str | None = None
        if scheme.lower() == "bearer":
            token = value
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            claimed_name, _, token = decoded.partition(":")
        else:
            return None
        row = self._db.fetch_one("SELECT * FROM pbxs WHERE token_hash = ? AND revoked = 0", (token_digest(token),))
        if row is None:
            return None
        if claimed_name is not None and not hmac.compare_digest(claimed_name, str(row["name"])):
            return None
        return _pbx(row)

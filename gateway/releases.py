"""Releases: recordings handed to one customer over SFTP with a single-use credential.

Data flow::

    operator --admin API--> ReleaseStore.create(tenant, recordings | since/until, ttl)
        live recordings of that tenant only --> a file name each (call time, call id, extension)
        --> releases row + release_items + release_credentials (argon2id hash; the password is
            returned once and never stored) + audit entry, in one transaction
    customer --SFTP--> vault.sftp.SftpServer --> SqlReleaseGate.authenticate(username, password, address)
        argon2 verify, always (against a dummy hash for an unknown user)
        --> claim: UPDATE ... WHERE claimed_by IS NULL binds the credential to the first address that
            logs in (atomic across nodes, since every node shares the metadata store)
        --> list_files / open_file: the release's uncollected, live recordings, decrypted on read
        --> file_completed: RecordingVault.shred (key row, blob, its audit entry), then the item is
            marked collected with an audit entry saying who took what, when and from where

What a login meets, checked in this order; each refusal is audited with its reason and scored
against the source address (``LoginThrottle`` scope ``sftp``), and the client sees the same SSH
authentication failure for all of them::

    banned          the address failed release.max_failures times within release.failure_window
    unknown-user    no credential has that username
    wrong-password  the password does not match
    revoked         the release was revoked, or this credential was replaced by ``reissue``
    consumed        nothing is left to collect, or strict mode and the one session was used
    expired         the credential's expiry (injected clock) has passed
    wrong-address   the credential is bound to another address

A credential is dead once every recording is collected, on expiry and on revocation. ``reissue``
replaces the credential of a release that still has recordings to collect (a broken session, an
expired credential, a customer on a new address): the old one is revoked, the new one unclaimed.

Recording time in file names: the call's start time when a CDR of the call is known, staged or in
the lake (its ``call_id`` or ``linked_id`` equals the recording's call id), else the time the
recording was received. Restricted subjects: recordings carry no subject link of their own; the link
is the CDR of the same call, whose parties are subject tokens. A recording whose call has a restricted
party is refused (409), at ``create`` and again at ``reissue``. A recording whose CDR was never sent
cannot be checked, and is released.

Tables (component ``releases``)::

    releases             one per release: tenant, creator, current credential's username, revocation
    release_credentials  one per issued credential; reissue adds one and revokes the previous
    release_items        one per recording in a release: its file name; collected_at/by once taken
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from gateway.audit import AuditTrail, Clock
from gateway.db import Database, Migrations, Row, Transaction, parse_utc, utc_text
from gateway.errors import BadRequestError, ConflictError, NotFoundError
from gateway.security import LoginThrottle, PasswordHashing, new_password
from gateway.settings import ReleaseSettings
from gateway.staging import StagingStore
from vault.errors import RecordingNotFoundError
from vault.service import Recording, RecordingVault
from vault.sftp import RecordingReader, ReleasedFile, ReleaseGate

if TYPE_CHECKING:
    from ingest.lake import IcebergLake

log = logging.getLogger("telgate.releases")

MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE releases (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL REFERENCES customers(tenant),
                username TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at TEXT NOT NULL,
                revoked_at TEXT,
                revoked_by TEXT
            )""",
            "CREATE INDEX releases_tenant ON releases(tenant, created_at)",
            """CREATE TABLE release_credentials (
                username TEXT PRIMARY KEY,
                release_id TEXT NOT NULL REFERENCES releases(id),
                password_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                claimed_by TEXT,
                claimed_at TEXT,
                sessions INTEGER NOT NULL DEFAULT 0,
                revoked_at TEXT
            )""",
            "CREATE INDEX release_credentials_release ON release_credentials(release_id)",
            """CREATE TABLE release_items (
                release_id TEXT NOT NULL REFERENCES releases(id),
                recording_id TEXT NOT NULL REFERENCES recordings(id),
                file_name TEXT NOT NULL,
                collected_at TEXT,
                collected_by TEXT,
                PRIMARY KEY (release_id, recording_id),
                UNIQUE (release_id, file_name)
            )""",
            "CREATE INDEX release_items_recording ON release_items(recording_id)",
        ],
    ),
]

SFTP_SCOPE: Final = "sftp"
CUSTOMER_ROLE: Final = "customer"
COLLECTED_REASON: Final = "collected by customer"
MAX_RECORDINGS: Final = 10_000
RELEASE_ID_PREFIX: Final = "rls_"
USERNAME_PREFIX: Final = "rel-"

# Refusal reasons, as the audit trail records them.
BANNED: Final = "banned"
UNKNOWN_USER: Final = "unknown-user"
WRONG_PASSWORD: Final = "wrong-password"  # noqa: S105 - a refusal reason, not a password
REVOKED: Final = "revoked"
CONSUMED: Final = "consumed"
EXPIRED: Final = "expired"
WRONG_ADDRESS: Final = "wrong-address"

_EXTENSIONS: Final = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._@+-]")
_MAX_CALL_ID_IN_NAME = 100
_USERNAME_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
_CALL_LOOKUP_BATCH = 500


# --- names and small parsers -----------------------------------------------------------------------


def file_extension(content_type: str) -> str:
    """``wav`` for audio/wav, ``mp3`` for audio/mpeg, ``bin`` for anything else."""
    return _EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower(), "bin")


def release_file_name(recording: Recording, call_time: datetime | None = None) -> str:
    """``20250304T140509Z_<call id>.<ext>``: the call's time (else receipt), the call id made file-safe."""
    moment = (call_time or recording.received_at).astimezone(UTC)
    call = _UNSAFE_IN_NAME.sub("_", recording.call_id)[:_MAX_CALL_ID_IN_NAME].strip("._") or recording.recording_id
    return f"{moment:%Y%m%dT%H%M%SZ}_{call}.{file_extension(recording.content_type)}"


def parse_moment(text: str, name: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time with an offset; BadRequestError naming ``name``."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequestError(f"{name} must be a date (2026-03-01) or an ISO time with offset: {text!r}") from exc
    if moment.tzinfo is None:
        if len(text) == 10:
            return moment.replace(tzinfo=UTC)
        raise BadRequestError(f"{name} needs a time zone offset (e.g. 2026-03-01T00:00:00+00:00) or a date")
    return moment


def _new_username() -> str:
    return USERNAME_PREFIX + "".join(secrets.choice(_USERNAME_ALPHABET) for _ in range(12))


def _printable(text: str, limit: int = 64) -> str:
    """A client-chosen string made safe for the audit trail and logs."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the CDRs say about one call: when it started, and whether a party is restricted."""

    start_at: datetime | None
    restricted: bool


class CallDirectory(Protocol):
    """Facts about calls by call id, from wherever the gateway keeps CDRs."""

    def calls(self, tenant: str, call_ids: Sequence[str]) -> dict[str, CallFacts]:
        """The facts known for each call id (absent ids are unknown calls)."""


class NoCallDirectory:
    """A directory that knows no call: names use receipt times and restriction cannot be checked."""

    def calls(self, tenant: str, call_ids: Sequence[str]) -> dict[str, CallFacts]:
        """Nothing is known."""
        return {}


class CdrCallDirectory:
    """Call facts from the CDRs, staged and in the lake: the earliest start of the call's legs, and
    restricted parties. A CDR counts from its 202 on, not only once the flusher has moved it."""

    def __init__(self, lake: Callable[[], IcebergLake], staging: StagingStore, db: Database) -> None:
        """``lake`` opens the lake when first called (``LakeHandle.get``)."""
        self._lake = lake
        self._staging = staging
        self._db = db

    def calls(self, tenant: str, call_ids: Sequence[str]) -> dict[str, CallFacts]:
        """Facts for the call ids that CDRs are known for (by ``call_id`` or ``linked_id``)."""
        from pyiceberg.expressions import And, EqualTo, In, Or, Reference  # with the lake, on first use
        from pyiceberg.expressions.literals import literal

        wanted = list(dict.fromkeys(call_ids))
        if not wanted:
            return {}
        wanted_set = set(wanted)
        columns = ["call_id", "linked_id", "start_at", "caller", "caller_kind", "callee", "callee_kind"]
        # Staging first, then the lake: a batch the flusher moves meanwhile is in one or the other.
        wanted_array = pa.array(wanted, pa.string())

        def of_these_calls(table: pa.Table) -> pa.Array:
            of_call = pc.is_in(table["call_id"], value_set=wanted_array)
            return pc.or_(of_call, pc.is_in(table["linked_id"], value_set=wanted_array))

        rows = self._staging.scan("cdr", of_these_calls, tenant).select(columns).to_pylist()
        for first in range(0, len(wanted), _CALL_LOOKUP_BATCH):
            batch = {literal(call_id) for call_id in wanted[first : first + _CALL_LOOKUP_BATCH]}
            condition = And(
                EqualTo(term=Reference("tenant"), value=literal(tenant)),
                Or(In(term=Reference("call_id"), values=batch), In(term=Reference("linked_id"), values=batch)),
            )
            rows += self._lake().scan("cdr", condition, columns).to_pylist()
        starts: dict[str, datetime] = {}
        parties: dict[str, set[str]] = {}
        for row in rows:
            for call_id in {row["call_id"], row["linked_id"]} - {None}:
                start = row["start_at"]
                starts[call_id] = min(starts.get(call_id, start), start)
                tokens = parties.setdefault(call_id, set())
                for party in ("caller", "callee"):
                    if row[f"{party}_kind"] == "subject" and row[party]:
                        tokens.add(str(row[party]))
        restricted = self._restricted({token for tokens in parties.values() for token in tokens})
        return {
            call_id: CallFacts(start_at=starts[call_id], restricted=bool(parties.get(call_id, set()) & restricted))
            for call_id in starts
            if call_id in wanted_set
        }

    def _restricted(self, tokens: set[str]) -> set[str]:
        found: set[str] = set()
        ordered = sorted(tokens)
        for first in range(0, len(ordered), _CALL_LOOKUP_BATCH):
            batch = ordered[first : first + _CALL_LOOKUP_BATCH]
            marks = ", ".join("?" for _ in batch)
            rows = self._db.fetch_all(f"SELECT token FROM subjects WHERE restricted = 1 AND token IN ({marks})", batch)  # noqa: S608 - placeholders only
            found.update(str(row["token"]) for row in rows)
        return found


@dataclass(frozen=True, slots=True)
class ReleaseItem:
    """One recording of a release, as the customer will see it."""

    recording_id: str
    name: str
    size: int
    collected_at: datetime | None = None
    collected_by: str | None = None
    shredded: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """A release and its current credential's state (never the password or its hash)."""

    release_id: str
    tenant: str
    username: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    sessions: int
    revoked_at: datetime | None
    revoked_by: str | None
    total: int
    collected: int
    pending: int
    items: tuple[ReleaseItem, ...] = ()

    def state(self, now: datetime) -> str:
        """``revoked``, ``collected`` (nothing left), ``expired``, ``claimed`` or ``open``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.pending == 0:
            return "collected"
        if now >= self.expires_at:
            return "expired"
        return "claimed" if self.claimed_by else "open"


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A new credential: the only time its password exists outside the customer's hands."""

    release_id: str
    tenant: str
    username: str
    password: str = field(repr=False)
    expires_at: datetime
    items: tuple[ReleaseItem, ...]


@dataclass(frozen=True, slots=True)
class GateSession:
    """An accepted SFTP login: the vault.sftp ``ReleaseSession`` of this gate."""

    release_id: str
    username: str
    source_address: str
    tenant: str


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """What ``ReleaseStore.claim`` decided for a login whose password matched: a session, or why not."""

    session: GateSession | None
    reason: str
    release_id: str
    sessions: int = 0


# --- the store -----------------------------------------------------------------------------------

_RELEASE_SELECT = """
    SELECT r.id, r.tenant, r.username, r.created_by, r.created_at, r.revoked_at, r.revoked_by,
           c.expires_at, c.claimed_by, c.claimed_at, c.sessions,
           (SELECT COUNT(*) FROM release_items i WHERE i.release_id = r.id) AS total,
           (SELECT COUNT(*) FROM release_items i
             WHERE i.release_id = r.id AND i.collected_at IS NOT NULL) AS collected,
           (SELECT COUNT(*) FROM release_items i JOIN recordings g ON g.id = i.recording_id
             WHERE i.release_id = r.id AND i.collected_at IS NULL AND g.shredded_at IS NULL) AS pending
      FROM releases r JOIN release_credentials c ON c.username = r.username
"""

_PENDING_COUNT = """
    SELECT COUNT(*) AS n FROM release_items i JOIN recordings g ON g.id = i.recording_id
     WHERE i.release_id = ? AND i.collected_at IS NULL AND g.shredded_at IS NULL
"""


def _release(row: Row, items: Sequence[ReleaseItem] = ()) -> Release:
    return Release(
        release_id=str(row["id"]),
        tenant=str(row["tenant"]),
        username=str(row["username"]),
        created_by=str(row["created_by"]),
        created_at=parse_utc(str(row["created_at"])),
        expires_at=parse_utc(str(row["expires_at"])),
        claimed_by=str(row["claimed_by"]) if row["claimed_by"] else None,
        claimed_at=parse_utc(str(row["claimed_at"])) if row["claimed_at"] else None,
        sessions=int(row["sessions"]),
        revoked_at=parse_utc(str(row["revoked_at"])) if row["revoked_at"] else None,
        revoked_by=str(row["revoked_by"]) if row["revoked_by"] else None,
        total=int(row["total"]),
        collected=int(row["collected"]),
        pending=int(row["pending"]),
        items=tuple(items),
    )


class ReleaseStore:
    """Releases, their credentials and items in the metadata store; every change audited with it."""

    def __init__(
        self,
        db: Database,
        vault: RecordingVault,
        hashing: PasswordHashing,
        audit: AuditTrail,
        clock: Clock,
        settings: ReleaseSettings,
        calls: CallDirectory | None = None,
    ) -> None:
        self._db = db
        self._vault = vault
        self._hashing = hashing
        self._audit = audit
        self._clock = clock
        self.settings = settings
        self._calls = calls or NoCallDirectory()
        self.public_port: int | None = None  # the SFTP port customers connect to, once the server is bound

    # --- operator side ----------------------------------------------------------------------------

    def ttl(self, ttl: timedelta | None) -> timedelta:
        """``ttl`` checked against ``release.max_ttl``, or the default."""
        if ttl is None:
            return self.settings.default_ttl
        if ttl <= timedelta(0):
            raise BadRequestError("ttl must be positive")
        if ttl > self.settings.max_ttl:
            raise BadRequestError(f"ttl must be at most release.max_ttl ({self.settings.max_ttl})")
        return ttl

    def create(
        self,
        *,
        tenant: str,
        recording_ids: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        ttl: timedelta | None = None,
        actor: str,
        role: str,
        source: str,
    ) -> IssuedCredential:
        """Release recordings of ``tenant`` (by id, or received in [since, until)); the password once."""
        lifetime = self.ttl(ttl)
        if self._db.fetch_one("SELECT tenant FROM customers WHERE tenant = ?", (tenant,)) is None:
            raise NotFoundError(f"no customer with tenant {tenant}")
        recordings = self._select(tenant, recording_ids, since, until)
        items = self._name(tenant, recordings)
        release_id = RELEASE_ID_PREFIX + secrets.token_hex(8)
        username, password = _new_username(), new_password()
        password_hash = self._hashing.hash(password)
        now = self._clock.now()
        expires_at = now + lifetime
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO releases (id, tenant, username, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
                (release_id, tenant, username, actor, utc_text(now)),
            )
            self._insert_credential(tx, username, release_id, password_hash, now, expires_at)
            for item in items:
                tx.execute(
                    "INSERT INTO release_items (release_id, recording_id, file_name) VALUES (?, ?, ?)",
                    (release_id, item.recording_id, item.name),
                )
            self._audit.append(
                actor=actor, role=role, action="release.create", object=release_id, source=source,
                details={"tenant": tenant, "username": username, "recordings": len(items),
                         "expires_at": expires_at.isoformat()},
                tx=tx,
            )  # fmt: skip
        log.info("release %s for %s: %d recording(s), credential %s", release_id, tenant, len(items), username)
        return IssuedCredential(release_id, tenant, username, password, expires_at, tuple(items))

    def _select(
        self, tenant: str, recording_ids: Sequence[str], since: datetime | None, until: datetime | None
    ) -> list[Recording]:
        if recording_ids and (since is not None or until is not None):
            raise BadRequestError("give either recording ids or a since/until period, not both")
        if recording_ids:
            if len(set(recording_ids)) > MAX_RECORDINGS:
                raise BadRequestError(f"a release holds at most {MAX_RECORDINGS} recordings")
            chosen: list[Recording] = []
            for recording_id in dict.fromkeys(recording_ids):
                try:
                    recording = self._vault.get(recording_id)
                except RecordingNotFoundError:
                    recording = None
                if recording is None or recording.tenant != tenant:
                    raise NotFoundError(f"no recording {recording_id} of tenant {tenant}")
                if recording.shredded:
                    raise ConflictError(f"recording {recording_id} was shredded and cannot be released")
                chosen.append(recording)
            return chosen
        if since is None or until is None:
            raise BadRequestError("give recording ids, or both since and until")
        if until <= since:
            raise BadRequestError("until must be after since")
        found = [r for r in self._vault.list_recordings(tenant=tenant, since=since) if r.received_at < until]
        if not found:
            raise NotFoundError(f"tenant {tenant} has no live recordings received in that period")
        if len(found) > MAX_RECORDINGS:
            raise BadRequestError(f"{len(found)} recordings in that period; a release holds at most {MAX_RECORDINGS}")
        return found

    def _name(self, tenant: str, recordings: Sequence[Recording]) -> list[ReleaseItem]:
        """File names for the recordings, refusing restricted calls, unique within the release."""
        facts = self._refuse_restricted(tenant, recordings)
        items: list[ReleaseItem] = []
        taken: set[str] = set()
        for recording in recordings:
            known = facts.get(recording.call_id)
            name = release_file_name(recording, known.start_at if known else None)
            if name in taken:  # two call ids that sanitise alike
                stem, _, ext = name.rpartition(".")
                name = f"{stem}_{recording.recording_id.removeprefix('rec_')[:8]}.{ext}"
            taken.add(name)
            items.append(ReleaseItem(recording.recording_id, name, recording.size))
        return items

    def _refuse_restricted(self, tenant: str, recordings: Sequence[Recording]) -> dict[str, CallFacts]:
        """The calls' facts, or ConflictError naming the recordings whose call has a restricted party."""
        facts = self._calls.calls(tenant, [r.call_id for r in recordings])
        restricted = [r.recording_id for r in recordings if r.call_id in facts and facts[r.call_id].restricted]
        if restricted:
            raise ConflictError(
                f"{len(restricted)} recording(s) involve a restricted subject and cannot be released",
                details={"recordings": restricted[:100]},
            )
        return facts

    def _insert_credential(
        self, tx: Transaction, username: str, release_id: str, password_hash: str, now: datetime, expires_at: datetime
    ) -> None:
        tx.execute(
            "INSERT INTO release_credentials (username, release_id, password_hash, created_at, expires_at, sessions)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            (username, release_id, password_hash, utc_text(now), utc_text(expires_at)),
        )

    def releases(self, tenant: str | None = None) -> list[Release]:
        """Every release (of one tenant), newest first, with counts."""
        sql = _RELEASE_SELECT
        params: list[Any] = []
        if tenant is not None:
            sql += " WHERE r.tenant = ?"
            params.append(tenant)
        return [_release(row) for row in self._db.fetch_all(sql + " ORDER BY r.created_at DESC, r.id", params)]

    def release(self, release_id: str) -> Release:
        """One release with its items; NotFoundError if unknown."""
        row = self._db.fetch_one(_RELEASE_SELECT + " WHERE r.id = ?", (release_id,))
        if row is None:
            raise NotFoundError(f"no release {release_id}")
        rows = self._db.fetch_all(
            "SELECT i.recording_id, i.file_name, i.collected_at, i.collected_by, g.size, g.shredded_at"
            " FROM release_items i JOIN recordings g ON g.id = i.recording_id"
            " WHERE i.release_id = ? ORDER BY i.file_name",
            (release_id,),
        )
        items = [
            ReleaseItem(
                recording_id=str(r["recording_id"]),
                name=str(r["file_name"]),
                size=int(r["size"]),
                collected_at=parse_utc(str(r["collected_at"])) if r["collected_at"] else None,
                collected_by=str(r["collected_by"]) if r["collected_by"] else None,
                shredded=r["shredded_at"] is not None,
            )
            for r in rows
        ]
        return _release(row, items)

    def revoke(self, release_id: str, *, actor: str, role: str, source: str) -> Release:
        """Kill the release's credential for good (idempotent: a second revoke changes nothing)."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            row = tx.fetch_one("SELECT revoked_at FROM releases WHERE id = ?", (release_id,))
            if row is None:
                raise NotFoundError(f"no release {release_id}")
            if row["revoked_at"] is None:
                tx.execute(
                    "UPDATE releases SET revoked_at = ?, revoked_by = ? WHERE id = ?",
                    (utc_text(now), actor, release_id),
                )
                tx.execute(
                    "UPDATE release_credentials SET revoked_at = ? WHERE release_id = ? AND revoked_at IS NULL",
                    (utc_text(now), release_id),
                )
                self._audit.append(
                    actor=actor, role=role, action="release.revoke", object=release_id, source=source, tx=tx
                )
        return self.release(release_id)

    def reissue(
        self, release_id: str, *, ttl: timedelta | None = None, actor: str, role: str, source: str
    ) -> IssuedCredential:
        """A new credential for what is left to collect; the previous credential is dead.

        The restriction check of ``create`` runs again: a subject may have been restricted since.
        """
        lifetime = self.ttl(ttl)
        before = self.release(release_id)
        uncollected = [self._vault.get(item.recording_id) for item in before.items if not item.collected_at]
        self._refuse_restricted(before.tenant, [r for r in uncollected if not r.shredded])
        username, password = _new_username(), new_password()
        password_hash = self._hashing.hash(password)
        now = self._clock.now()
        expires_at = now + lifetime
        with self._db.transaction() as tx:
            row = tx.fetch_one("SELECT tenant, username, revoked_at FROM releases WHERE id = ?", (release_id,))
            if row is None:
                raise NotFoundError(f"no release {release_id}")
            if row["revoked_at"] is not None:
                raise ConflictError(f"release {release_id} was revoked: create a new release instead")
            pending_row = tx.fetch_one(_PENDING_COUNT, (release_id,))
            pending = int(pending_row["n"]) if pending_row else 0
            if pending == 0:
                raise ConflictError(f"release {release_id} has nothing left to collect")
            tx.execute(
                "UPDATE release_credentials SET revoked_at = ? WHERE release_id = ? AND revoked_at IS NULL",
                (utc_text(now), release_id),
            )
            self._insert_credential(tx, username, release_id, password_hash, now, expires_at)
            tx.execute("UPDATE releases SET username = ? WHERE id = ?", (username, release_id))
            self._audit.append(
                actor=actor, role=role, action="release.reissue", object=release_id, source=source,
                details={"tenant": row["tenant"], "previous_username": row["username"], "username": username,
                         "recordings": pending, "expires_at": expires_at.isoformat()},
                tx=tx,
            )  # fmt: skip
        tenant = str(row["tenant"])
        left = self.release(release_id).items
        items = tuple(item for item in left if item.collected_at is None and not item.shredded)
        log.info("release %s reissued: credential %s replaces %s", release_id, username, row["username"])
        return IssuedCredential(release_id, tenant, username, password, expires_at, items)

    # --- gate side (called on paramiko threads) -----------------------------------------------------

    def password_hash(self, username: str) -> str | None:
        """The stored hash of a credential, or None for an unknown username."""
        row = self._db.fetch_one("SELECT password_hash FROM release_credentials WHERE username = ?", (username,))
        return str(row["password_hash"]) if row else None

    def claim(self, username: str, source: str, now: datetime, *, strict: bool) -> ClaimOutcome:
        """Accept a login whose password matched, binding the credential to ``source`` on first use."""
        with self._db.transaction() as tx:
            row = tx.fetch_one(
                "SELECT c.release_id, c.expires_at, c.claimed_by, c.sessions, c.revoked_at,"
                " r.tenant, r.revoked_at AS release_revoked_at"
                " FROM release_credentials c JOIN releases r ON r.id = c.release_id WHERE c.username = ?",
                (username,),
            )
            if row is None:
                return ClaimOutcome(None, UNKNOWN_USER, "")
            release_id = str(row["release_id"])
            if row["revoked_at"] is not None or row["release_revoked_at"] is not None:
                return ClaimOutcome(None, REVOKED, release_id)
            pending = tx.fetch_one(_PENDING_COUNT, (release_id,))
            if pending is None or int(pending["n"]) == 0:
                return ClaimOutcome(None, CONSUMED, release_id)
            if now >= parse_utc(str(row["expires_at"])):
                return ClaimOutcome(None, EXPIRED, release_id)
            session = GateSession(release_id, username, source, str(row["tenant"]))
            if row["claimed_by"] is None:
                # The claim itself: whichever login gets here first wins, on every node.
                won = tx.execute(
                    "UPDATE release_credentials SET claimed_by = ?, claimed_at = ?, sessions = 1"
                    " WHERE username = ? AND claimed_by IS NULL AND revoked_at IS NULL",
                    (source, utc_text(now), username),
                )
                if won == 1:
                    return ClaimOutcome(session, "", release_id, 1)
                row = tx.fetch_one(
                    "SELECT claimed_by, sessions FROM release_credentials WHERE username = ?", (username,)
                )
                assert row is not None
            if row["claimed_by"] != source:
                return ClaimOutcome(None, WRONG_ADDRESS, release_id)
            if strict:
                return ClaimOutcome(None, CONSUMED, release_id)
            tx.execute(
                "UPDATE release_credentials SET sessions = sessions + 1 WHERE username = ? AND claimed_by = ?",
                (username, source),
            )
            return ClaimOutcome(session, "", release_id, int(row["sessions"]) + 1)

    def usable(self, username: str, now: datetime) -> bool:
        """Whether an established session's credential still serves files (not revoked, not expired)."""
        row = self._db.fetch_one(
            "SELECT c.expires_at, c.revoked_at, r.revoked_at AS release_revoked_at"
            " FROM release_credentials c JOIN releases r ON r.id = c.release_id WHERE c.username = ?",
            (username,),
        )
        return (
            row is not None
            and row["revoked_at"] is None
            and row["release_revoked_at"] is None
            and now < parse_utc(str(row["expires_at"]))
        )

    def pending_files(self, release_id: str) -> list[tuple[ReleaseItem, datetime]]:
        """The release's uncollected live recordings and their receipt times, by file name."""
        rows = self._db.fetch_all(
            "SELECT i.recording_id, i.file_name, g.size, g.received_at"
            " FROM release_items i JOIN recordings g ON g.id = i.recording_id"
            " WHERE i.release_id = ? AND i.collected_at IS NULL AND g.shredded_at IS NULL ORDER BY i.file_name",
            (release_id,),
        )
        return [
            (ReleaseItem(str(r["recording_id"]), str(r["file_name"]), int(r["size"])), parse_utc(str(r["received_at"])))
            for r in rows
        ]

    def is_pending(self, release_id: str, recording_id: str) -> bool:
        """Whether the recording is in the release, not collected and not shredded."""
        row = self._db.fetch_one(
            "SELECT i.recording_id FROM release_items i JOIN recordings g ON g.id = i.recording_id"
            " WHERE i.release_id = ? AND i.recording_id = ? AND i.collected_at IS NULL AND g.shredded_at IS NULL",
            (release_id, recording_id),
        )
        return row is not None

    def mark_collected(self, session: GateSession, recording_id: str, now: datetime) -> int | None:
        """Record that the session's client took the recording; how many remain (None: already marked)."""
        with self._db.transaction() as tx:
            changed = tx.execute(
                "UPDATE release_items SET collected_at = ?, collected_by = ?"
                " WHERE release_id = ? AND recording_id = ? AND collected_at IS NULL",
                (utc_text(now), session.source_address, session.release_id, recording_id),
            )
            if changed == 0:
                return None
            item = tx.fetch_one(
                "SELECT i.file_name, g.size, g.sha256 FROM release_items i JOIN recordings g ON g.id = i.recording_id"
                " WHERE i.release_id = ? AND i.recording_id = ?",
                (session.release_id, recording_id),
            )
            left = tx.fetch_one(_PENDING_COUNT, (session.release_id,))
            remaining = int(left["n"]) if left else 0
            self._audit.append(
                actor=session.username, role=CUSTOMER_ROLE, action="release.collect", object=recording_id,
                source=session.source_address,
                details={"release_id": session.release_id, "tenant": session.tenant,
                         "file": item["file_name"] if item else None, "size": item["size"] if item else None,
                         "sha256": item["sha256"] if item else None, "remaining": remaining},
                tx=tx,
            )  # fmt: skip
        return remaining


# --- the gate ------------------------------------------------------------------------------------


class SqlReleaseGate:
    """``vault.sftp.ReleaseGate`` over the release store: logins, listings, reads and destruction.

    Runs on paramiko's threads and calls the blocking store, throttle, audit trail and vault directly.
    """

    def __init__(
        self,
        store: ReleaseStore,
        vault: RecordingVault,
        hashing: PasswordHashing,
        throttle: LoginThrottle,
        audit: AuditTrail,
        clock: Clock,
    ) -> None:
        self._store = store
        self._vault = vault
        self._hashing = hashing
        self._throttle = throttle
        self._audit = audit
        self._clock = clock

    def authenticate(self, username: str, password: str, source_address: str) -> GateSession | None:
        """The session for a valid login; None, identically, for every kind of failure."""
        now = self._clock.now()
        stored = self._store.password_hash(username)
        matches = self._hashing.verify(stored, password)  # always the full argon2 work, unknown user or not
        release_id = ""
        if self._throttle.state(SFTP_SCOPE, source_address).banned(now):
            reason = BANNED
        elif stored is None:
            reason = UNKNOWN_USER
        elif not matches:
            reason = WRONG_PASSWORD
        else:
            claim = self._store.claim(username, source_address, now, strict=self._store.settings.strict_single_session)
            release_id = claim.release_id
            if claim.session is not None:
                self._throttle.record_success(SFTP_SCOPE, source_address)
                self._audit.append(
                    actor=username, role=CUSTOMER_ROLE, action="release.login", object=release_id,
                    source=source_address, details={"session": claim.sessions},
                )  # fmt: skip
                return claim.session
            reason = claim.reason
        details: dict[str, Any] = {}
        if reason != BANNED:  # a banned address is not scored again, so its ban is not prolonged
            state = self._throttle.record_failure(SFTP_SCOPE, source_address, now)
            details = {"failures": state.failures, "banned": state.banned(now)}
        actor = _printable(username)
        self._audit.append(
            actor=actor, role=CUSTOMER_ROLE, action="release.login", object=release_id, reason=reason,
            outcome="refused", source=source_address, details=details,
        )  # fmt: skip
        log.warning("sftp login refused for %r from %s: %s", actor, source_address, reason)
        return None

    def list_files(self, session: GateSession) -> list[ReleasedFile]:
        """The release's recordings still to collect; nothing once the credential is revoked or expired."""
        if not self._store.usable(session.username, self._clock.now()):
            return []
        return [
            ReleasedFile(item.name, item.recording_id, item.size, received_at)
            for item, received_at in self._store.pending_files(session.release_id)
        ]

    def open_file(self, session: GateSession, recording_id: str) -> RecordingReader:
        """Decrypt-on-read access to one released recording still to collect."""
        if not self._store.usable(session.username, self._clock.now()) or not self._store.is_pending(
            session.release_id, recording_id
        ):
            raise NotFoundError(f"recording {recording_id} is not released to {session.username}")
        return self._vault.open_reader(recording_id)

    def file_completed(self, session: GateSession, recording_id: str) -> None:
        """Every byte went to the client: shred the recording, mark it collected, audit."""
        self._vault.shred(
            recording_id,
            actor=session.username,
            role=CUSTOMER_ROLE,
            reason=COLLECTED_REASON,
            source=session.source_address,
        )
        remaining = self._store.mark_collected(session, recording_id, self._clock.now())
        if remaining == 0:
            log.info("release %s fully collected by %s: credential %s is dead", session.release_id,
                     session.source_address, session.username)  # fmt: skip

    def session_closed(self, session: GateSession) -> None:
        """Nothing to release: sessions hold no state in the store."""
        log.info("sftp session of %s from %s ended", session.username, session.source_address)


def _conforms(gate: SqlReleaseGate) -> ReleaseGate[GateSession]:
    """Static check (mypy): SqlReleaseGate satisfies the SFTP server's port."""
    return gate

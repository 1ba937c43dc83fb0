"""Access governance: requests for one recording, four-eyes decisions, one-time grants, break-glass.

Flow (every step is one audit entry, written in the same transaction as the change)::

    requester (manager, tech_manager, dpo)  --request(recording, reason)-->  pending       access.request
    a DPO other than the requester          --approve / deny(reason)----->  approved      access.approve
                                                                            denied        access.deny
    the requester's next ``access list``    --first view--> password issued (shown once)  access.grant.issue
    the requester                           --fetch(password)--> claimed, then streamed   access.fetch
    nobody, in time                         --grant_ttl passes--> expired                 access.expire

Rules, all enforced here on the server (the CLI only asks):

- A request names one live recording and a reason of at least ``MIN_REASON_LENGTH`` characters. A
  reason must not contain a phone number (it goes into the audit trail, which never holds one).
- Only a DPO decides, and never on a request of their own (four eyes). With a single DPO, their own
  requests stay pending; break-glass (``recordings get --reason``) is the audited way out.
- Approval starts the grant's lifetime (``access.grant_ttl``) but creates no password. The password is
  generated when the requester first lists their requests after approval: it exists only in that one
  response; only its argon2id hash is stored. It is never shown to the approving DPO, never written to
  a log or to the audit trail, and never shown twice. (A requester who loses it asks again.)
- A fetch needs the requester's own session and the password. A wrong password, another operator's
  session, or a request that has no password yet all fail alike (403, ``forbidden``), and count as
  failures of the source address in the ``grant`` throttle scope. The right password on a spent or
  expired grant answers 410 (``access.grant_used`` / ``access.grant_expired``).
- The grant is claimed atomically (``UPDATE ... WHERE spent_at IS NULL``) after the recording was
  opened and before its first byte is sent. A claimed grant is spent even if the transfer then fails:
  the content may have partly left the gateway, so a retry needs a new request and a new approval.
- Expiry is audited lazily, once, when an expired unused grant is first listed or fetched.

Errors: ``GrantExpiredError`` and ``GrantUsedError`` (410); otherwise the gateway's own tree
(``BadRequestError``, ``NotFoundError``, ``PermissionDeniedError``, ``ConflictError``,
``RateLimitedError``) and the vault's ``RecordingNotFoundError`` / ``RecordingShreddedError``.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from gateway.audit import SYSTEM_ACTOR, AuditTrail, Clock
from gateway.db import Database, Migrations, Transaction, parse_utc, utc_text
from gateway.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    TelgateError,
)
from gateway.operators import Operator
from gateway.rbac import Role
from gateway.security import LoginThrottle, PasswordHashing, new_password
from vault.errors import RecordingShreddedError
from vault.service import Recording

log = logging.getLogger("telgate.access")

MIGRATIONS: Migrations = [
    (
        1,
        [
            """CREATE TABLE access_requests (
                id TEXT PRIMARY KEY,
                recording_id TEXT NOT NULL,
                requester TEXT NOT NULL,
                requester_role TEXT NOT NULL,
                reason TEXT NOT NULL,
                requested_at TEXT NOT NULL,
                decision TEXT NOT NULL,
                decided_by TEXT,
                decided_at TEXT,
                decision_reason TEXT,
                expires_at TEXT,
                password_hash TEXT,
                password_issued_at TEXT,
                spent_at TEXT,
                expiry_audited_at TEXT
            )""",
            "CREATE INDEX access_requests_requester ON access_requests(requester, requested_at)",
            "CREATE INDEX access_requests_decision ON access_requests(decision, requested_at)",
        ],
    ),
]

GRANT_SCOPE: Final = "grant"  # LoginThrottle scope of wrong grant passwords
MIN_REASON_LENGTH: Final = 10
MAX_REASON_LENGTH: Final = 500
MAX_ID_LENGTH: Final = 128
REQUEST_ID_PREFIX: Final = "req_"

PENDING: Final = "pending"
APPROVED: Final = "approved"
DENIED: Final = "denied"
USED: Final = "used"
EXPIRED: Final = "expired"

# One message for every way a fetch can be refused before the password is known to be right.
FETCH_REFUSED: Final = "no grant matches this request and password"

# A run of digits, with the separators people type in phone numbers, standing on its own (not part of
# a word such as a recording id or ticket reference like INC0012345). Dates and times are set aside first.
_NUMBER_LIKE = re.compile(r"(?<![\w+])\+?\d[\d \-.()]{5,}\d(?!\w)")
_DATE_OR_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}\.\d{1,2}\.\d{4}\b|\b\d{1,2}:\d{2}(?::\d{2})?\b")
_MIN_NUMBER_DIGITS: Final = 7


class RecordingLookup(Protocol):
    """What the rules need of the vault: a recording's metadata (``RecordingVault`` is one)."""

    def get(self, recording_id: str) -> Recording:
        """A recording or its tombstone; ``RecordingNotFoundError`` when unknown."""
        ...


class GrantExpiredError(TelgateError):
    """The grant's lifetime is over; the requester must ask again."""

    code = "access.grant_expired"


class GrantUsedError(TelgateError):
    """The grant was already used (one fetch per grant)."""

    code = "access.grant_used"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """One request for one recording, its decision and its grant (never the password)."""

    request_id: str
    recording_id: str
    requester: str
    requester_role: str
    reason: str
    requested_at: datetime
    decision: str
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    expires_at: datetime | None
    password_issued_at: datetime | None
    spent_at: datetime | None

    def status_at(self, now: datetime) -> str:
        """pending, denied, approved (usable), used or expired."""
        if self.decision != APPROVED:
            return self.decision
        if self.spent_at is not None:
            return USED
        if self.expires_at is not None and now >= self.expires_at:
            return EXPIRED
        return APPROVED

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The request as the API shows it."""
        return {
            "request_id": self.request_id,
            "recording_id": self.recording_id,
            "requester": self.requester,
            "requester_role": self.requester_role,
            "reason": self.reason,
            "status": self.status_at(now),
            "requested_at": self.requested_at.isoformat(),
            "decided_by": self.decided_by,
            "decided_at": _iso(self.decided_at),
            "decision_reason": self.decision_reason,
            "expires_at": _iso(self.expires_at),
            "password_issued": self.password_issued_at is not None,
            "used_at": _iso(self.spent_at),
        }


@dataclass(frozen=True, slots=True)
class Listed:
    """A request as listed to one operator; ``password`` is set once, for the requester only."""

    request: AccessRequest
    password: str | None = None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _time(value: Any) -> datetime | None:
    return parse_utc(str(value)) if value else None


def _request(row: dict[str, Any]) -> AccessRequest:
    return AccessRequest(
        request_id=str(row["id"]),
        recording_id=str(row["recording_id"]),
        requester=str(row["requester"]),
        requester_role=str(row["requester_role"]),
        reason=str(row["reason"]),
        requested_at=parse_utc(str(row["requested_at"])),
        decision=str(row["decision"]),
        decided_by=str(row["decided_by"]) if row["decided_by"] is not None else None,
        decided_at=_time(row["decided_at"]),
        decision_reason=str(row["decision_reason"]) if row["decision_reason"] is not None else None,
        expires_at=_time(row["expires_at"]),
        password_issued_at=_time(row["password_issued_at"]),
        spent_at=_time(row["spent_at"]),
    )


def validate_reason(text: object, what: str = "reason", minimum: int = MIN_REASON_LENGTH) -> str:
    """A reason fit for the audit trail: long enough to mean something, printable, no phone number."""
    if not isinstance(text, str):
        raise BadRequestError(f"{what} is required and must be a string")
    reason = " ".join(text.split())
    if len(reason) < minimum:
        raise BadRequestError(
            f"{what} is mandatory: at least {minimum} characters saying why"
            if minimum > 1
            else f"{what} must not be empty",
            details={"minimum_length": minimum},
        )
    if len(reason) > MAX_REASON_LENGTH:
        raise BadRequestError(f"{what} must be at most {MAX_REASON_LENGTH} characters")
    if not reason.isprintable():
        raise BadRequestError(f"{what} must be printable text")
    for match in _NUMBER_LIKE.finditer(_DATE_OR_TIME.sub(" ; ", reason)):
        if sum(ch.isdigit() for ch in match.group(0)) >= _MIN_NUMBER_DIGITS:
            raise BadRequestError(
                f"{what} seems to contain a phone number; the audit trail never holds one: refer to the call "
                "by its recording id or a ticket reference (e.g. INC0012345)"
            )
    return reason


def validate_id(value: str, what: str) -> str:
    """An id from a URL: short and printable, so it is safe in the audit trail."""
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise BadRequestError(f"{what} must be 1 to {MAX_ID_LENGTH} printable characters")
    return value


def new_request_id() -> str:
    """A fresh access-request id: ``req_`` and 64 random bits."""
    return REQUEST_ID_PREFIX + secrets.token_hex(8)


class AccessRequests:
    """The access-request store and its rules (blocking; the HTTP side calls it through threads)."""

    def __init__(
        self,
        db: Database,
        audit: AuditTrail,
        hashing: PasswordHashing,
        throttle: LoginThrottle,
        recordings: RecordingLookup,
        clock: Clock,
        grant_ttl: timedelta,
    ) -> None:
        self._db = db
        self._audit = audit
        self._hashing = hashing
        self._throttle = throttle
        self._recordings = recordings
        self._clock = clock
        self.grant_ttl = grant_ttl

    # --- reads -------------------------------------------------------------------------------------

    def get(self, request_id: str, tx: Transaction | None = None) -> AccessRequest:
        """One request, or NotFoundError."""
        sql, params = "SELECT * FROM access_requests WHERE id = ?", (request_id,)
        row = tx.fetch_one(sql, params) if tx is not None else self._db.fetch_one(sql, params)
        if row is None:
            raise NotFoundError(f"no access request {request_id}")
        return _request(row)

    def _live_recording(self, recording_id: str) -> Recording:
        recording = self._recordings.get(recording_id)
        if recording.shredded:
            raise RecordingShreddedError(f"recording {recording_id} was shredded")
        return recording

    # --- request -----------------------------------------------------------------------------------

    def request(self, operator: Operator, recording_id: str, reason: str, source: str) -> AccessRequest:
        """File a request for one live recording; refused while the same requester has one open."""
        validate_id(recording_id, "recording id")
        reason = validate_reason(reason)
        recording = self._live_recording(recording_id)
        now = self._clock.now()
        with self._db.transaction() as tx:
            for row in tx.fetch_all(
                "SELECT * FROM access_requests WHERE requester = ? AND recording_id = ? AND decision IN (?, ?)"
                " AND spent_at IS NULL",
                (operator.name, recording_id, PENDING, APPROVED),
            ):
                existing = _request(row)
                if existing.status_at(now) in (PENDING, APPROVED):
                    raise ConflictError(
                        f"you already have request {existing.request_id} for this recording "
                        f"({existing.status_at(now)})",
                        details={"request_id": existing.request_id},
                    )
            request_id = new_request_id()
            tx.execute(
                "INSERT INTO access_requests (id, recording_id, requester, requester_role, reason, requested_at,"
                " decision) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, recording_id, operator.name, operator.role.value, reason, utc_text(now), PENDING),
            )
            self._audit.append(
                actor=operator.name,
                role=operator.role,
                action="access.request",
                object=request_id,
                reason=reason,
                source=source,
                details={"recording_id": recording_id, "tenant": recording.tenant},
                tx=tx,
            )
            return self.get(request_id, tx)

    # --- list (and the one-time password) ----------------------------------------------------------

    def list(self, operator: Operator, *, pending_only: bool, source: str, limit: int = 1000) -> list[Listed]:
        """The newest ``limit`` requests, oldest first: a DPO sees all, anyone else their own.

        Listing is how a requester collects the password of a new grant (see the module docstring).
        """
        sql = "SELECT * FROM access_requests"
        params: list[Any] = []
        clauses = []
        if operator.role != Role.DPO:
            clauses.append("requester = ?")
            params.append(operator.name)
        if pending_only:
            clauses.append("decision = ?")
            params.append(PENDING)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY requested_at DESC, id DESC LIMIT ?"
        params.append(limit)
        now = self._clock.now()
        listed: list[Listed] = []
        for row in reversed(self._db.fetch_all(sql, params)):
            request = _request(row)
            status = request.status_at(now)
            if status == EXPIRED and row["expiry_audited_at"] is None:
                self._audit_expiry(request, now)
            password = None
            if status == APPROVED and request.requester == operator.name and request.password_issued_at is None:
                request, password = self._issue_password(operator, request, now, source)
            listed.append(Listed(request, password))
        return listed

    def _issue_password(
        self, operator: Operator, request: AccessRequest, now: datetime, source: str
    ) -> tuple[AccessRequest, str | None]:
        """Generate the grant's password once; only its hash is stored, the password is returned."""
        password = new_password()
        digest = self._hashing.hash(password)
        with self._db.transaction() as tx:
            claimed = tx.execute(
                "UPDATE access_requests SET password_hash = ?, password_issued_at = ? WHERE id = ?"
                " AND decision = ? AND requester = ? AND password_hash IS NULL AND spent_at IS NULL"
                " AND expires_at > ?",
                (digest, utc_text(now), request.request_id, APPROVED, operator.name, utc_text(now)),
            )
            if claimed != 1:  # another listing issued it a moment ago: never show it twice
                return self.get(request.request_id, tx), None
            self._audit.append(
                actor=operator.name,
                role=operator.role,
                action="access.grant.issue",
                object=request.request_id,
                reason=request.reason,
                source=source,
                details={"recording_id": request.recording_id, "expires_at": _iso(request.expires_at)},
                tx=tx,
            )
            return self.get(request.request_id, tx), password

    def _audit_expiry(self, request: AccessRequest, now: datetime) -> None:
        """Record, once, that an approved grant expired unused."""
        with self._db.transaction() as tx:
            if (
                tx.execute(
                    "UPDATE access_requests SET expiry_audited_at = ? WHERE id = ? AND expiry_audited_at IS NULL",
                    (utc_text(now), request.request_id),
                )
                != 1
            ):
                return
            self._audit.append(
                actor=SYSTEM_ACTOR,
                role=SYSTEM_ACTOR,
                action="access.expire",
                object=request.request_id,
                reason="grant expired unused",
                details={
                    "recording_id": request.recording_id,
                    "requester": request.requester,
                    "expires_at": _iso(request.expires_at),
                },
                tx=tx,
            )

    # --- decisions ---------------------------------------------------------------------------------

    def _decidable(self, operator: Operator, request_id: str, tx: Transaction) -> AccessRequest:
        request = self.get(request_id, tx)
        if request.requester == operator.name:
            raise PermissionDeniedError(
                "four eyes: you cannot decide on your own access request; another DPO must. "
                "If no other DPO exists, break-glass access is audited: "
                "`telgate recordings get RECORDING --reason TEXT --out FILE`",
                details={"request_id": request_id},
            )
        if request.decision != PENDING:
            raise ConflictError(
                f"request {request_id} was already {request.decision} by {request.decided_by}",
                details={"request_id": request_id, "decision": request.decision},
            )
        return request

    def approve(self, operator: Operator, request_id: str, note: str | None, source: str) -> AccessRequest:
        """Approve a pending request of someone else; the grant lives ``grant_ttl`` from now."""
        note = validate_reason(note, "note", minimum=1) if note else None
        self._live_recording(self.get(request_id).recording_id)
        now = self._clock.now()
        with self._db.transaction() as tx:
            request = self._decidable(operator, request_id, tx)
            expires_at = now + self.grant_ttl
            if (
                tx.execute(
                    "UPDATE access_requests SET decision = ?, decided_by = ?, decided_at = ?, decision_reason = ?,"
                    " expires_at = ? WHERE id = ? AND decision = ?",
                    (APPROVED, operator.name, utc_text(now), note, utc_text(expires_at), request_id, PENDING),
                )
                != 1
            ):
                raise ConflictError(f"request {request_id} was decided meanwhile")
            self._audit.append(
                actor=operator.name,
                role=operator.role,
                action="access.approve",
                object=request_id,
                reason=request.reason,
                source=source,
                details={
                    "recording_id": request.recording_id,
                    "requester": request.requester,
                    "expires_at": _iso(expires_at),
                    "note": note,
                },
                tx=tx,
            )
            return self.get(request_id, tx)

    def deny(self, operator: Operator, request_id: str, reason: str, source: str) -> AccessRequest:
        """Deny a pending request of someone else, with a reason the requester will see."""
        reason = validate_reason(reason, "reason", minimum=1)
        now = self._clock.now()
        with self._db.transaction() as tx:
            request = self._decidable(operator, request_id, tx)
            if (
                tx.execute(
                    "UPDATE access_requests SET decision = ?, decided_by = ?, decided_at = ?, decision_reason = ?"
                    " WHERE id = ? AND decision = ?",
                    (DENIED, operator.name, utc_text(now), reason, request_id, PENDING),
                )
                != 1
            ):
                raise ConflictError(f"request {request_id} was decided meanwhile")
            self._audit.append(
                actor=operator.name,
                role=operator.role,
                action="access.deny",
                object=request_id,
                reason=reason,
                source=source,
                details={
                    "recording_id": request.recording_id,
                    "requester": request.requester,
                    "request_reason": request.reason,
                },
                tx=tx,
            )
            return self.get(request_id, tx)

    # --- fetch -------------------------------------------------------------------------------------

    def authorise_fetch(self, operator: Operator, request_id: str, password: str, source: str) -> AccessRequest:
        """Check session, password and grant state (nothing is claimed yet); throttled per source."""
        now = self._clock.now()
        state = self._throttle.state(GRANT_SCOPE, source)
        if state.banned(now):
            assert state.banned_until is not None
            self._refused(operator, request_id, "refused-banned", source)
            raise RateLimitedError(
                "too many wrong grant passwords from this address; try later",
                retry_after=max(1, int((state.banned_until - now).total_seconds())),
            )
        row = self._db.fetch_one("SELECT * FROM access_requests WHERE id = ?", (request_id,))
        mine = row is not None and row["requester"] == operator.name
        stored = str(row["password_hash"]) if row is not None and mine and row["password_hash"] else None
        matches = self._hashing.verify(stored, password)  # the same work whether or not there is a hash
        if row is None or not matches:
            state = self._throttle.record_failure(GRANT_SCOPE, source, now)
            outcome = "unknown-request" if row is None else "refused"
            self._refused(operator, request_id, outcome, source, failures=state.failures)
            log.warning(
                "grant fetch refused: %s by %s from %s (%s; mine=%s; failures=%d)",
                request_id,
                operator.name,
                source,
                outcome,
                mine,
                state.failures,
            )
            if row is None:
                raise NotFoundError(f"no access request {request_id}")
            raise PermissionDeniedError(FETCH_REFUSED)
        self._throttle.record_success(GRANT_SCOPE, source)
        request = _request(row)
        status = request.status_at(now)
        if status == USED:
            self._refused(operator, request_id, "refused-used", source)
            raise GrantUsedError(
                f"the grant of {request_id} was already used at {_iso(request.spent_at)}; "
                "file a new request if you need the recording again",
                details={"request_id": request_id, "used_at": _iso(request.spent_at)},
            )
        if status == EXPIRED:
            if row["expiry_audited_at"] is None:
                self._audit_expiry(request, now)
            self._refused(operator, request_id, "refused-expired", source)
            raise GrantExpiredError(
                f"the grant of {request_id} expired at {_iso(request.expires_at)}; file a new request",
                details={"request_id": request_id, "expires_at": _iso(request.expires_at)},
            )
        return request

    def _refused(self, operator: Operator, request_id: str, outcome: str, source: str, failures: int = 0) -> None:
        details: dict[str, Any] = {"failures": failures} if failures else {}
        self._audit.append(
            actor=operator.name,
            role=operator.role,
            action="access.fetch",
            object=request_id,
            outcome=outcome,
            source=source,
            details=details,
        )

    def claim(self, operator: Operator, request: AccessRequest, source: str) -> AccessRequest:
        """Spend the grant atomically (one fetch wins); from here on it is spent whatever happens."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            if (
                tx.execute(
                    "UPDATE access_requests SET spent_at = ? WHERE id = ? AND requester = ? AND decision = ?"
                    " AND spent_at IS NULL AND expires_at > ?",
                    (utc_text(now), request.request_id, operator.name, APPROVED, utc_text(now)),
                )
                != 1
            ):
                raise GrantUsedError(
                    f"the grant of {request.request_id} was used or expired meanwhile",
                    details={"request_id": request.request_id},
                )
            self._audit.append(
                actor=operator.name,
                role=operator.role,
                action="access.fetch",
                object=request.request_id,
                reason=request.reason,
                outcome="started",
                source=source,
                details={"recording_id": request.recording_id, "approved_by": request.decided_by},
                tx=tx,
            )
            return self.get(request.request_id, tx)

    def fetch_finished(
        self, operator: Operator, request: AccessRequest, sent: int, size: int, source: str
    ) -> None:
        """Record how the transfer of a claimed grant ended (the grant stays spent either way)."""
        self._audit.append(
            actor=operator.name,
            role=operator.role,
            action="access.fetch",
            object=request.request_id,
            reason=request.reason,
            outcome="completed" if sent == size else "incomplete",
            source=source,
            details={"recording_id": request.recording_id, "bytes_sent": sent, "size": size},
        )

    # --- break-glass -------------------------------------------------------------------------------

    def break_glass(self, operator: Operator, recording_id: str, reason: str, source: str) -> Recording:
        """Audit a DPO's direct access (before any byte leaves); the reason is mandatory."""
        validate_id(recording_id, "recording id")
        reason = validate_reason(reason)
        recording = self._live_recording(recording_id)
        self._audit.append(
            actor=operator.name,
            role=operator.role,
            action="recording.break_glass",
            object=recording_id,
            reason=reason,
            outcome="started",
            source=source,
            details={"tenant": recording.tenant, "call_id": recording.call_id},
        )
        log.warning("break-glass access to %s by %s from %s", recording_id, operator.name, source)
        return recording

    def break_glass_finished(
        self,
        operator: Operator,
        recording_id: str,
        reason: str,
        sent: int,
        size: int,
        source: str,
        outcome: str | None = None,
    ) -> None:
        """Record how a break-glass transfer ended (``outcome`` overrides completed/incomplete)."""
        self._audit.append(
            actor=operator.name,
            role=operator.role,
            action="recording.break_glass",
            object=recording_id,
            reason=reason,
            outcome=outcome or ("completed" if sent == size else "incomplete"),
            source=source,
            details={"bytes_sent": sent, "size": size},
        )

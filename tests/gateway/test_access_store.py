"""``gateway.access.AccessRequests`` behaves the same on every metadata backend (SQLite always;
PostgreSQL when its binaries are installed or ``TELGATE_TEST_POSTGRES_URL`` is set): the one-time
password is issued once, a grant is claimed by exactly one of two racing fetches, and expiry is
audited once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from gateway.access import AccessRequests, GrantExpiredError, GrantUsedError
from gateway.audit import AuditTrail
from gateway.db import Database
from gateway.errors import ConflictError, NotFoundError, PermissionDeniedError
from gateway.operators import Operator
from gateway.rbac import Role
from gateway.security import LoginThrottle, PasswordHashing
from tests.fakes import FakeClock
from vault.errors import RecordingNotFoundError
from vault.service import Recording

REASON = "complaint INC0012345: check the call"
RECORDING = Recording(
    recording_id="rec_" + "ab" * 16,
    tenant="acme",
    pbx="pbx1",
    call_id="1712345678.42",
    content_type="audio/wav",
    size=10,
    sha256="00" * 32,
    received_at=datetime(2026, 3, 4, tzinfo=UTC),
    blob_id="rec_" + "ab" * 16,
)


class OneRecording:
    """A recording lookup that knows one recording."""

    def get(self, recording_id: str) -> Recording:
        if recording_id != RECORDING.recording_id:
            raise RecordingNotFoundError(f"no recording {recording_id}")
        return RECORDING


def operator(name: str, role: Role) -> Operator:
    return Operator(name=name, role=role, disabled=False, created_at=datetime(2026, 1, 1, tzinfo=UTC), created_by="t")


ALICE = operator("alice", Role.MANAGER)
DPO = operator("dpo", Role.DPO)


@pytest.fixture
def db(metadata_db: Database) -> Database:
    """The metadata store on each backend (see tests/conftest.py)."""
    return metadata_db


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def audit(db: Database, clock: FakeClock) -> AuditTrail:
    return AuditTrail(db, b"k" * 32, clock)


@pytest.fixture
def store(db: Database, audit: AuditTrail, clock: FakeClock) -> AccessRequests:
    throttle = LoginThrottle(db, max_failures=5, window=timedelta(minutes=15), ban=timedelta(minutes=15))
    hashing = PasswordHashing(time_cost=1, memory_kib=1024, parallelism=1)
    return AccessRequests(db, audit, hashing, throttle, OneRecording(), clock, timedelta(hours=24))


def granted(store: AccessRequests) -> tuple[str, str]:
    """A request of alice's, approved by the DPO, and its password as alice first lists it."""
    request = store.request(ALICE, RECORDING.recording_id, REASON, "test")
    store.approve(DPO, request.request_id, None, "test")
    [listed] = store.list(ALICE, pending_only=False, source="test")
    assert listed.password is not None
    return request.request_id, listed.password


def test_password_once_then_one_fetch(store: AccessRequests, audit: AuditTrail) -> None:
    request_id, password = granted(store)
    assert [entry.password for entry in store.list(ALICE, pending_only=False, source="test")] == [None]
    with pytest.raises(PermissionDeniedError):
        store.authorise_fetch(ALICE, request_id, "wrong", "test")
    with pytest.raises(PermissionDeniedError):
        store.authorise_fetch(DPO, request_id, password, "test")
    with pytest.raises(NotFoundError):
        store.authorise_fetch(ALICE, "req_unknown", password, "test")
    grant = store.authorise_fetch(ALICE, request_id, password, "test")
    store.claim(ALICE, grant, "test")
    with pytest.raises(GrantUsedError):
        store.claim(ALICE, grant, "test")
    with pytest.raises(GrantUsedError):
        store.authorise_fetch(ALICE, request_id, password, "test")
    assert audit.verify().ok
    assert password not in str([entry.to_json() for entry in audit.entries()])


def test_racing_claims_one_wins(store: AccessRequests) -> None:
    request_id, password = granted(store)
    grant = store.authorise_fetch(ALICE, request_id, password, "test")
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        try:
            store.claim(ALICE, grant, "test")
            outcomes.append("won")
        except GrantUsedError:
            outcomes.append("lost")

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]


def test_expiry_is_audited_once(store: AccessRequests, audit: AuditTrail, clock: FakeClock) -> None:
    request_id, password = granted(store)
    clock.advance(timedelta(hours=24))
    with pytest.raises(GrantExpiredError):
        store.authorise_fetch(ALICE, request_id, password, "test")
    assert [entry.request.status_at(clock.now()) for entry in store.list(DPO, pending_only=False, source="t")] == [
        "expired"
    ]
    assert [e.object for e in audit.entries() if e.action == "access.expire"] == [request_id]


def test_decisions(store: AccessRequests) -> None:
    own = store.request(DPO, RECORDING.recording_id, REASON, "test")
    with pytest.raises(PermissionDeniedError, match="four eyes"):
        store.approve(DPO, own.request_id, None, "test")
    other = store.request(ALICE, RECORDING.recording_id, REASON, "test")
    denied = store.deny(DPO, other.request_id, "no ticket", "test")
    assert (denied.decision, denied.decision_reason, denied.decided_by) == ("denied", "no ticket", "dpo")
    with pytest.raises(ConflictError):
        store.approve(DPO, other.request_id, None, "test")
    with pytest.raises(RecordingNotFoundError):
        store.request(ALICE, "rec_missing", REASON, "test")
    assert [r.request.request_id for r in store.list(DPO, pending_only=True, source="test")] == [own.request_id]

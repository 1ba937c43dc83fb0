"""Composition root: builds the real implementations from settings and hands them to the parts.

``initialise`` is ``telgate init``; ``build_gateway`` is what ``serve`` and the tests run. Nothing
else constructs backends.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import principals, recordings, releases, staging, subjects
from gateway.access import MIGRATIONS as ACCESS_MIGRATIONS
from gateway.access import AccessRequests
from gateway.audit import SYSTEM_ACTOR, AuditTrail, Clock
from gateway.clock import SystemClock
from gateway.datadir import DataLayout, InitReport, init_layout, read_secret
from gateway.db import CORE_MIGRATIONS, Database, Migrations, migrate, open_database
from gateway.errors import ConfigError
from gateway.ingest_service import Flusher, IngestService
from gateway.lake_handle import LakeHandle
from gateway.operators import OperatorStore
from gateway.principals import PrincipalStore
from gateway.rbac import Role
from gateway.recordings import SqlRecordingCatalog
from gateway.releases import CdrCallDirectory, ReleaseStore, SqlReleaseGate
from gateway.security import LoginThrottle, PasswordHashing
from gateway.settings import Settings
from gateway.staging import StagingStore, StagingWriter
from gateway.subjects import SqlSubjectTokens
from vault.blobs import LocalBlobStore
from vault.keyring import LocalKeyring
from vault.service import RecordingVault

if TYPE_CHECKING:
    from ingest.lake import IcebergLake

# Every component's schema, migrated in this order at start-up.
COMPONENT_MIGRATIONS: list[tuple[str, Migrations]] = [
    ("core", CORE_MIGRATIONS),
    ("principals", principals.MIGRATIONS),
    ("subjects", subjects.MIGRATIONS),
    ("vault", recordings.MIGRATIONS),
    ("staging", staging.MIGRATIONS),
    ("access", ACCESS_MIGRATIONS),
    ("releases", releases.MIGRATIONS),
]

FIRST_DPO = "dpo"


@dataclass
class Gateway:
    """Every service of one gateway node, wired."""

    settings: Settings
    clock: Clock
    layout: DataLayout
    db: Database
    hashing: PasswordHashing
    operators: OperatorStore
    audit: AuditTrail
    login_throttle: LoginThrottle
    principals: PrincipalStore
    subjects: SqlSubjectTokens
    vault: RecordingVault
    lake_handle: LakeHandle
    staging: StagingStore
    staging_writer: StagingWriter
    ingest: IngestService
    flusher: Flusher
    access: AccessRequests
    releases: ReleaseStore
    release_gate: SqlReleaseGate

    @property
    def lake(self) -> IcebergLake:
        """The lake, opened on first use (HTTP workers that never read it never import pyiceberg)."""
        return self.lake_handle.get()

    def close(self) -> None:
        """Release backends: finish queued staging commits first."""
        self.staging_writer.close()
        self.lake_handle.close()
        self.db.close()


def build_gateway(settings: Settings, clock: Clock | None = None) -> Gateway:
    """Open every backend of an initialised data directory."""
    clock = clock or SystemClock()
    layout = DataLayout(settings.data_dir)
    if not layout.audit_key.exists():
        raise ConfigError(f"data directory {layout.root} is not initialised: run `telgate init` first")
    db = open_database(settings.metadata_url)
    for component, migrations in COMPONENT_MIGRATIONS:
        migrate(db, component, migrations)
    security = settings.security
    hashing = PasswordHashing(security.argon2_time_cost, security.argon2_memory_kib, security.argon2_parallelism)
    audit = AuditTrail(db, read_secret(layout.audit_key), clock)
    subject_tokens = SqlSubjectTokens(db, read_secret(layout.pepper), read_secret(layout.sealing_key), clock)
    lake = LakeHandle(layout.root, settings.lake.catalog_url, settings.lake.warehouse)
    staging_store = StagingStore(db, read_secret(layout.sealing_key), clock)
    writer = StagingWriter(db, staging_store, clock, max_backlog=settings.ingest.max_staged_records)
    flusher = Flusher(
        staging_store,
        writer,
        lake.get,
        clock,
        writer_lock=functools.partial(db.exclusive, "lake-writer"),
        flush_records=settings.ingest.flush_records,
        flush_interval=settings.ingest.flush_interval,
        dedupe_window=settings.ingest.dedupe_window,
        quarantine_retention=settings.ingest.quarantine_retention,
        audit=audit,
    )
    vault = _build_vault(settings, layout, db, audit, clock)
    release_store = ReleaseStore(
        db, vault, hashing, audit, clock, settings.release, calls=CdrCallDirectory(lake.get, staging_store, db)
    )
    release_throttle = LoginThrottle(
        db, max_failures=settings.release.max_failures, window=settings.release.failure_window, ban=settings.release.ban
    )
    return Gateway(
        settings=settings,
        clock=clock,
        layout=layout,
        db=db,
        hashing=hashing,
        operators=OperatorStore(db, hashing),
        audit=audit,
        login_throttle=LoginThrottle(
            db,
            max_failures=security.login_max_failures,
            window=security.login_failure_window,
            ban=security.login_ban,
        ),
        principals=PrincipalStore(db),
        subjects=subject_tokens,
        vault=vault,
        lake_handle=lake,
        staging=staging_store,
        staging_writer=writer,
        ingest=IngestService(subject_tokens, writer, clock),
        flusher=flusher,
        access=AccessRequests(
            db,
            audit,
            hashing,
            LoginThrottle(  # wrong grant passwords (scope "grant"), scored like logins
                db,
                max_failures=security.login_max_failures,
                window=security.login_failure_window,
                ban=security.login_ban,
            ),
            vault,
            clock,
            settings.access.grant_ttl,
        ),
        releases=release_store,
        release_gate=SqlReleaseGate(release_store, vault, hashing, release_throttle, audit, clock),
    )


def _build_vault(
    settings: Settings, layout: DataLayout, db: Database, audit: AuditTrail, clock: Clock
) -> RecordingVault:
    """The recording vault: blob store and keyring in the data directory, catalog in the metadata store."""
    if not layout.keyring.exists():
        raise ConfigError(f"master keyring {layout.keyring} is missing: run `telgate init` to create it")
    catalog = SqlRecordingCatalog(db, audit)
    return RecordingVault(
        blobs=LocalBlobStore(layout.recordings),
        keys=LocalKeyring.load(layout.keyring),
        catalog=catalog,
        key_store=catalog,
        clock=clock,
        chunk_size=settings.vault.chunk_size,
        max_recording_bytes=settings.vault.max_recording_bytes,
        rewrap_batch_size=settings.vault.rewrap_batch_size,
    )


def initialise(settings: Settings, clock: Clock | None = None) -> tuple[InitReport, str | None]:
    """``telgate init``: create what is missing; the first DPO's password is returned only when new."""
    layout = DataLayout(settings.data_dir)
    database_existed = layout.database.exists()
    report = init_layout(layout)
    gateway = build_gateway(settings, clock)
    try:
        if not database_existed and layout.database.exists():
            report.created.append(str(layout.database))
        password = None
        if gateway.operators.count() == 0:
            with gateway.db.transaction() as tx:
                password = gateway.operators.add(tx, FIRST_DPO, Role.DPO, SYSTEM_ACTOR, gateway.clock.now())
                gateway.audit.append(
                    actor=SYSTEM_ACTOR,
                    role=SYSTEM_ACTOR,
                    action="operator.create",
                    object=FIRST_DPO,
                    reason="first DPO created by telgate init",
                    details={"role": Role.DPO.value},
                    tx=tx,
                )
            report.created.append(f"operator {FIRST_DPO}")
        return report, password
    finally:
        gateway.close()

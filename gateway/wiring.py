"""Composition root: builds the real implementations from settings and hands them to the parts.

``initialise`` is ``telgate init``; ``build_gateway`` is what ``serve`` and the tests run. Nothing
else constructs backends.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import principals, subjects
from gateway.audit import AuditTrail, Clock
from gateway.clock import SystemClock
from gateway.datadir import DataLayout, InitReport, init_layout, read_secret
from gateway.db import CORE_MIGRATIONS, Database, Migrations, migrate, open_database
from gateway.errors import ConfigError
from gateway.operators import OperatorStore
from gateway.principals import PrincipalStore
from gateway.rbac import Role
from gateway.security import LoginThrottle, PasswordHashing
from gateway.settings import Settings
from gateway.subjects import SqlSubjectTokens

# Every component's schema, migrated in this order at start-up.
COMPONENT_MIGRATIONS: list[tuple[str, Migrations]] = [
    ("core", CORE_MIGRATIONS),
    ("principals", principals.MIGRATIONS),
    ("subjects", subjects.MIGRATIONS),
]

FIRST_DPO = "dpo"
SYSTEM_ACTOR = "system"


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

    def close(self) -> None:
        """Release backends."""
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
    return Gateway(
        settings=settings,
        clock=clock,
        layout=layout,
        db=db,
        hashing=hashing,
        operators=OperatorStore(db, hashing),
        audit=AuditTrail(db, read_secret(layout.audit_key), clock),
        login_throttle=LoginThrottle(
            db,
            max_failures=security.login_max_failures,
            window=security.login_failure_window,
            ban=security.login_ban,
        ),
        principals=PrincipalStore(db),
        subjects=SqlSubjectTokens(db, read_secret(layout.pepper), read_secret(layout.subjects_key), clock),
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

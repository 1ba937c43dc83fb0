"""Roles and the one table of which role may do what.

Every admin endpoint names a permission from ``PERMISSIONS``; the check happens server-side in
``gateway.api`` before the handler runs. The CLI only ever asks the API.
"""

from __future__ import annotations

import enum
from typing import Final

from gateway.errors import PermissionDeniedError


class Role(enum.StrEnum):
    """Operator roles (people) and machine principals."""

    DPO = "dpo"
    TECH_MANAGER = "tech_manager"
    MANAGER = "manager"
    AUDITOR = "auditor"
    PBX = "pbx"
    CUSTOMER = "customer"


OPERATOR_ROLES: Final = frozenset({Role.DPO, Role.TECH_MANAGER, Role.MANAGER, Role.AUDITOR})

_ALL_OPERATORS = OPERATOR_ROLES
_GOVERNORS = frozenset({Role.DPO, Role.TECH_MANAGER})

PERMISSIONS: Final[dict[str, frozenset[Role]]] = {
    "session.whoami": _ALL_OPERATORS,
    "operator.create": frozenset({Role.DPO}),
    "operator.disable": frozenset({Role.DPO}),
    "operator.list": _GOVERNORS,
    "audit.read": frozenset({Role.DPO, Role.TECH_MANAGER, Role.AUDITOR}),
    "audit.verify": frozenset({Role.DPO, Role.TECH_MANAGER, Role.AUDITOR}),
    "settings.read": _GOVERNORS,
    "customer.manage": _GOVERNORS,
    "customer.list": _GOVERNORS,
    "pbx.manage": _GOVERNORS,
    "pbx.list": _GOVERNORS,
    "recordings.list": frozenset({Role.DPO, Role.TECH_MANAGER, Role.MANAGER}),
    "recordings.break_glass": frozenset({Role.DPO}),
    "access.request": frozenset({Role.DPO, Role.TECH_MANAGER, Role.MANAGER}),
    "access.list": frozenset({Role.DPO, Role.TECH_MANAGER, Role.MANAGER}),
    "access.decide": frozenset({Role.DPO}),
    "access.fetch": frozenset({Role.DPO, Role.TECH_MANAGER, Role.MANAGER}),
    "keys.rotate": _GOVERNORS,
    "keys.list": _GOVERNORS,
    "keys.retire": frozenset({Role.DPO}),
    "vault.verify": _GOVERNORS,
    "release.manage": _GOVERNORS,
    "release.list": _GOVERNORS,
    "cdr.search": _GOVERNORS,
    "quarantine.read": _GOVERNORS,
    "quarantine.replay": _GOVERNORS,
    "ingest.flush": _GOVERNORS,
    "ingest.status": _GOVERNORS,
}


def check(role: str, permission: str) -> None:
    """Raise ``PermissionDeniedError`` unless ``role`` holds ``permission``."""
    allowed = PERMISSIONS.get(permission)
    if allowed is None:
        raise KeyError(f"unknown permission {permission!r}")
    if role not in allowed:
        raise PermissionDeniedError(f"role {role} may not {permission.replace('.', ' ')}")

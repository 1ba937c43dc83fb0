"""Ingest operations for operators: how far behind the lake is, and a flush on demand.

``GET /v1/admin/ingest/status`` says what is staged and not yet in the lake (records, and how long the
oldest has waited), how many rejected records wait in quarantine, and when each PBX last posted: the
figures to watch when PBXs get 503s, the lake looks stale or a PBX has gone quiet. ``flush_overdue``
is true when a staged record has waited more than twice ``ingest.flush_interval``: the flusher is
failing (its errors are in the log) or falling behind.

``POST /v1/admin/ingest/flush`` moves everything staged to the lake now. The flusher normally runs by
size and age in the background; an explicit flush serves shutdown checklists, benchmarks and "is it in
the lake yet" questions. It waits for the flusher's lock, so it never runs alongside a background
flush, and answers ``{flushed, backlog}``: records moved by this call and records still staged
(arrived meanwhile). Audited.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.operators import Operator
from gateway.routing import GATEWAY, admin_route, source_of
from gateway.settings import IngestSettings
from gateway.staging import StagingStatus


def status_json(status: StagingStatus, now: datetime, settings: IngestSettings) -> dict[str, Any]:
    """The answer of ``GET /v1/admin/ingest/status``."""
    staged: dict[str, Any] = {}
    overdue = False
    for kind, state in status.kinds.items():
        age = state.waited(now)
        overdue = overdue or (age is not None and age > 2 * settings.flush_interval.total_seconds())
        staged[kind] = {
            "records": state.records,
            "payloads": state.payloads,
            "oldest_staged_at": state.oldest_staged_at.isoformat() if state.oldest_staged_at else None,
            "oldest_age_seconds": age,
        }
    return {
        "staged": staged,
        "backlog": status.backlog,
        "max_staged_records": settings.max_staged_records,
        "flush_records": settings.flush_records,
        "flush_interval_seconds": settings.flush_interval.total_seconds(),
        "flush_overdue": overdue,
        "quarantine": {"pending": status.quarantine_pending, "replayed": status.quarantine_replayed},
        "pbxs": {name: activity.to_json(now) for name, activity in sorted(status.pbxs.items())},
    }


@admin_route("GET", "/v1/admin/ingest/status", "ingest.status")
async def ingest_status(request: web.Request, operator: Operator) -> web.Response:
    """Staged records per kind and their age, and the quarantine's size (no personal data)."""
    gw = request.app[GATEWAY]
    status = await asyncio.to_thread(gw.staging.status)
    return web.json_response(status_json(status, gw.clock.now(), gw.settings.ingest))


@admin_route("POST", "/v1/admin/ingest/flush", "ingest.flush")
async def ingest_flush(request: web.Request, operator: Operator) -> web.Response:
    """Flush every staged record to the lake; how many moved and how many are still staged."""
    gw = request.app[GATEWAY]
    flushed = await gw.flusher.flush_now()
    backlog = gw.staging_writer.backlog
    await asyncio.to_thread(
        gw.audit.append,
        actor=operator.name,
        role=operator.role,
        action="ingest.flush",
        object="staging",
        source=source_of(request),
        details={"flushed": flushed, "backlog": backlog},
    )
    return web.json_response({"flushed": flushed, "backlog": backlog})


def setup(app: web.Application) -> None:
    """No non-admin routes here."""

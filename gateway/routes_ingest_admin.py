"""Ingest operations for operators: ``POST /v1/admin/ingest/flush`` moves everything staged to the lake now.

The flusher normally runs by size and age in the background; an explicit flush serves shutdown
checklists, benchmarks and "is it in the lake yet" questions. It waits for the flusher's lock, so it
never runs alongside a background flush, and answers ``{flushed, backlog}``: records moved by this
call and records still staged (arrived meanwhile). Audited.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.operators import Operator
from gateway.routing import GATEWAY, admin_route, source_of


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

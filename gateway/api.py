"""The HTTP API (aiohttp): one application assembled from the route modules.

Each ``gateway/routes_*.py`` module declares its admin routes with ``@admin_route`` (collected in
``gateway.routing.ADMIN_ROUTES``) and adds its other routes in ``setup(app)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import (
    routes_access,
    routes_core,
    routes_data,
    routes_ingest,
    routes_ingest_admin,
    routes_principals,
    routes_releases,
    routes_vault,
)
from gateway.routing import ADMIN_ROUTES, GATEWAY, METRICS, Metrics, admin_handler, error_middleware
from gateway.wiring import Gateway

__all__ = ["ADMIN_ROUTES", "create_app"]

ROUTE_MODULES = (
    routes_core,
    routes_principals,
    routes_vault,
    routes_ingest,
    routes_data,
    routes_ingest_admin,
    routes_releases,
    routes_access,
)


async def background_tasks(app: web.Application) -> AsyncIterator[None]:
    """Run the flusher until shutdown.

    Nothing waits for the lake at start-up: ingest needs staging only, so a node whose lake is down
    (its catalog database, its object store) starts and takes records; each flush first drops what the
    lake already holds (a crash between a lake commit and its staging delete), then appends.
    """
    gateway = app[GATEWAY]
    flusher = asyncio.create_task(gateway.flusher.run(gateway.settings.lake), name="telgate-flusher")
    yield
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher


def create_app(gateway: Gateway, *, run_flusher: bool = True) -> web.Application:
    """The aiohttp application of one gateway node; HTTP workers leave the flusher to their supervisor."""
    app = web.Application(middlewares=[error_middleware], client_max_size=gateway.settings.ingest.max_body_bytes)
    app[GATEWAY] = gateway
    app[METRICS] = Metrics()
    for module in ROUTE_MODULES:
        module.setup(app)
    for route in ADMIN_ROUTES:
        app.router.add_route(route.method, route.path, admin_handler(route))
    if run_flusher:
        app.cleanup_ctx.append(background_tasks)
    return app

"""Admin routes for customers (tenants) and PBX principals."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.errors import BadRequestError
from gateway.operators import Operator
from gateway.principals import Customer, Pbx, parse_csv_columns
from gateway.routing import GATEWAY, admin_route, read_json, source_of


def customer_json(customer: Customer) -> dict[str, Any]:
    """A customer as the API shows it."""
    return {"tenant": customer.tenant, "name": customer.name, "created_at": customer.created_at.isoformat()}


def pbx_json(pbx: Pbx) -> dict[str, Any]:
    """A PBX as the API shows it (never its token)."""
    return {
        "name": pbx.name,
        "tenant": pbx.tenant,
        "timezone": pbx.timezone,
        "country": pbx.country,
        "csv_columns": ",".join(pbx.csv_columns) if pbx.csv_columns else "auto",
        "revoked": pbx.revoked,
        "created_at": pbx.created_at.isoformat(),
    }


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise BadRequestError(f"{key} is required and must be a string")
    return value


@admin_route("POST", "/v1/admin/customers", "customer.manage")
async def add_customer(request: web.Request, operator: Operator) -> web.Response:
    """Register a customer tenant."""
    gw = request.app[GATEWAY]
    body = await read_json(request)
    tenant, name = _text(body, "tenant"), _text(body, "name")

    def add() -> Customer:
        with gw.db.transaction() as tx:
            customer = gw.principals.add_customer(tx, tenant, name, gw.clock.now())
            gw.audit.append(
                actor=operator.name, role=operator.role, action="customer.create", object=tenant,
                source=source_of(request), tx=tx,
            )  # fmt: skip
        return customer

    return web.json_response(customer_json(await asyncio.to_thread(add)), status=201)


@admin_route("GET", "/v1/admin/customers", "customer.list")
async def list_customers(request: web.Request, operator: Operator) -> web.Response:
    """Every customer."""
    gw = request.app[GATEWAY]
    customers = await asyncio.to_thread(gw.principals.customers)
    return web.json_response({"customers": [customer_json(c) for c in customers]})


@admin_route("POST", "/v1/admin/pbxs", "pbx.manage")
async def add_pbx(request: web.Request, operator: Operator) -> web.Response:
    """Register a PBX; the response carries its token once."""
    gw = request.app[GATEWAY]
    body = await read_json(request)
    name, tenant = _text(body, "name"), _text(body, "tenant")
    timezone = _text(body, "timezone", gw.settings.ingest.default_timezone)
    country = _text(body, "country", gw.settings.ingest.default_country).upper()
    columns = parse_csv_columns(body.get("csv_columns") if isinstance(body.get("csv_columns"), str) else None)

    def add() -> str:
        with gw.db.transaction() as tx:
            token = gw.principals.add_pbx(tx, name, tenant, timezone, country, columns, gw.clock.now())
            gw.audit.append(
                actor=operator.name, role=operator.role, action="pbx.create", object=name,
                source=source_of(request), details={"tenant": tenant}, tx=tx,
            )  # fmt: skip
        return token

    token = await asyncio.to_thread(add)
    return web.json_response({"name": name, "tenant": tenant, "token": token}, status=201)


@admin_route("GET", "/v1/admin/pbxs", "pbx.list")
async def list_pbxs(request: web.Request, operator: Operator) -> web.Response:
    """Every PBX, with what it has sent (``activity``: null before its first post)."""
    gw = request.app[GATEWAY]
    pbxs = await asyncio.to_thread(gw.principals.pbxs)
    activity = await asyncio.to_thread(gw.staging.pbx_activity)
    now = gw.clock.now()
    listed = [pbx_json(p) | {"activity": activity[p.name].to_json(now) if p.name in activity else None} for p in pbxs]
    return web.json_response({"pbxs": listed})


@admin_route("POST", "/v1/admin/pbxs/{name}/revoke", "pbx.manage")
async def revoke_pbx(request: web.Request, operator: Operator) -> web.Response:
    """Revoke a PBX's token."""
    gw = request.app[GATEWAY]
    name = request.match_info["name"]

    def revoke() -> None:
        with gw.db.transaction() as tx:
            gw.principals.revoke_pbx(tx, name)
            gw.audit.append(
                actor=operator.name, role=operator.role, action="pbx.revoke", object=name,
                source=source_of(request), tx=tx,
            )  # fmt: skip

    await asyncio.to_thread(revoke)
    return web.json_response({"name": name, "revoked": True})


def setup(app: web.Application) -> None:
    """No non-admin routes here."""

"""Core routes: health, readiness, metrics, operator sessions, operators, audit, settings."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import AuthenticationError, BadRequestError, RateLimitedError
from gateway.operators import Operator, validate_name
from gateway.routing import GATEWAY, METRICS, admin_route, bearer_token, current_operator, read_json, source_of
from gateway.settings import describe_settings

log = logging.getLogger("telgate.http")


# --- health --------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the metadata store answers."""
    gw = request.app[GATEWAY]
    await asyncio.to_thread(gw.db.fetch_one, "SELECT 1 AS ok")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition; the ingest gauges are read from the store first."""
    gw = request.app[GATEWAY]
    status = await asyncio.to_thread(gw.staging.status)
    app_metrics = request.app[METRICS]
    app_metrics.ingest.update(status, gw.clock.now())  # no await from here to the rendering
    payload = app_metrics.exposition()
    response = web.Response(body=payload)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


# --- sessions ------------------------------------------------------------------------------------

LOGIN_SCOPE = "operator-login"


def _safe_name(value: object) -> str:
    """A name fit for the audit trail: a valid operator name, or a placeholder (it may be a typo'd secret)."""
    try:
        return validate_name(str(value))
    except BadRequestError:
        return "<invalid name>"


async def login(request: web.Request) -> web.Response:
    """Exchange name and password for a session token; failures are scored per address and audited."""
    gw = request.app[GATEWAY]
    source = source_of(request)
    body = await read_json(request)
    name, password = body.get("user"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise BadRequestError('send {"user": ..., "password": ...}')
    now = gw.clock.now()
    state = await asyncio.to_thread(gw.login_throttle.state, LOGIN_SCOPE, source)
    if state.banned(now):
        assert state.banned_until is not None
        await asyncio.to_thread(
            gw.audit.append,
            actor=_safe_name(name),
            role="unknown",
            action="login",
            outcome="refused-banned",
            source=source,
        )
        request.app[METRICS].logins.labels("banned").inc()
        raise RateLimitedError(
            "too many failed logins from this address; try later",
            retry_after=max(1, int((state.banned_until - now).total_seconds())),
        )
    operator = await asyncio.to_thread(gw.operators.authenticate, name, password)
    if operator is None:
        state = await asyncio.to_thread(gw.login_throttle.record_failure, LOGIN_SCOPE, source, now)
        outcome = "failed-then-banned" if state.banned(now) else "failed"
        await asyncio.to_thread(
            gw.audit.append,
            actor=_safe_name(name),
            role="unknown",
            action="login",
            outcome=outcome,
            source=source,
            details={"failures": state.failures},
        )
        request.app[METRICS].logins.labels("failed").inc()
        log.warning("failed login for %s from %s (%d failures)", _safe_name(name), source, state.failures)
        raise AuthenticationError("invalid name or password")

    def open_session() -> str:
        gw.login_throttle.record_success(LOGIN_SCOPE, source)
        with gw.db.transaction() as tx:
            token = gw.operators.open_session(tx, operator.name, source, now, gw.settings.security.session_ttl)
            gw.audit.append(actor=operator.name, role=operator.role, action="login", source=source, tx=tx)
        return token

    token = await asyncio.to_thread(open_session)
    request.app[METRICS].logins.labels("ok").inc()
    expires_at = now + gw.settings.security.session_ttl
    return web.json_response(
        {"token": token, "user": operator.name, "role": operator.role, "expires_at": expires_at.isoformat()}
    )


async def logout(request: web.Request) -> web.Response:
    """End the caller's session."""
    gw = request.app[GATEWAY]
    operator = await current_operator(request)
    token = bearer_token(request)
    assert token is not None
    await asyncio.to_thread(gw.operators.close_session, token)
    await asyncio.to_thread(
        gw.audit.append, actor=operator.name, role=operator.role, action="logout", source=source_of(request)
    )
    return web.json_response({"status": "logged out"})


# --- operators -----------------------------------------------------------------------------------


def operator_json(operator: Operator) -> dict[str, Any]:
    """An operator as the API shows it (never the hash)."""
    return {
        "name": operator.name,
        "role": operator.role,
        "disabled": operator.disabled,
        "created_at": operator.created_at.isoformat(),
        "created_by": operator.created_by,
    }


@admin_route("GET", "/v1/admin/whoami", "session.whoami")
async def whoami(request: web.Request, operator: Operator) -> web.Response:
    """Who the session belongs to."""
    return web.json_response(operator_json(operator))


@admin_route("GET", "/v1/admin/operators", "operator.list")
async def list_operators(request: web.Request, operator: Operator) -> web.Response:
    """Every operator."""
    gw = request.app[GATEWAY]
    operators = await asyncio.to_thread(gw.operators.list)
    return web.json_response({"operators": [operator_json(o) for o in operators]})


@admin_route("POST", "/v1/admin/operators", "operator.create")
async def create_operator(request: web.Request, operator: Operator) -> web.Response:
    """Create an operator; the response carries their password once."""
    gw = request.app[GATEWAY]
    body = await read_json(request)
    name, role = body.get("name"), body.get("role")
    if not isinstance(name, str) or not isinstance(role, str):
        raise BadRequestError('send {"name": ..., "role": ...}')

    def create() -> str:
        with gw.db.transaction() as tx:
            password = gw.operators.add(tx, name, role, operator.name, gw.clock.now())
            gw.audit.append(
                actor=operator.name,
                role=operator.role,
                action="operator.create",
                object=name,
                source=source_of(request),
                details={"role": role},
                tx=tx,
            )
        return password

    password = await asyncio.to_thread(create)
    return web.json_response({"name": name, "role": role, "password": password}, status=201)


@admin_route("POST", "/v1/admin/operators/{name}/disable", "operator.disable")
async def disable_operator(request: web.Request, operator: Operator) -> web.Response:
    """Disable an operator and end their sessions."""
    gw = request.app[GATEWAY]
    name = request.match_info["name"]

    def disable() -> None:
        with gw.db.transaction() as tx:
            gw.operators.disable(tx, name)
            gw.audit.append(
                actor=operator.name,
                role=operator.role,
                action="operator.disable",
                object=name,
                source=source_of(request),
                tx=tx,
            )

    await asyncio.to_thread(disable)
    return web.json_response({"name": name, "disabled": True})


# --- audit ---------------------------------------------------------------------------------------


def _parse_since(request: web.Request) -> datetime | None:
    raw = request.query.get("since")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequestError(f"since must be an ISO 8601 date or time: {raw!r}") from exc
    if moment.tzinfo is None:
        raise BadRequestError("since needs a time zone offset (e.g. 2026-01-01T00:00:00+00:00) or a date")
    return moment


@admin_route("GET", "/v1/admin/audit", "audit.read")
async def audit_export(request: web.Request, operator: Operator) -> web.Response:
    """Audit entries from ``since`` on (this read is itself audited)."""
    gw = request.app[GATEWAY]
    since = _parse_since(request)

    def export() -> list[dict[str, Any]]:
        entries = [entry.to_json() for entry in gw.audit.entries(since=since)]
        gw.audit.append(
            actor=operator.name,
            role=operator.role,
            action="audit.export",
            source=source_of(request),
            details={"since": since.isoformat() if since else None, "entries": len(entries)},
        )
        return entries

    return web.json_response({"entries": await asyncio.to_thread(export)})


@admin_route("GET", "/v1/admin/audit/verify", "audit.verify")
async def audit_verify(request: web.Request, operator: Operator) -> web.Response:
    """Verify the whole hash chain; 200 with ok=false and the first bad entry when broken."""
    gw = request.app[GATEWAY]
    report = await asyncio.to_thread(gw.audit.verify)
    await asyncio.to_thread(
        gw.audit.append,
        actor=operator.name,
        role=operator.role,
        action="audit.verify",
        outcome="ok" if report.ok else "chain-broken",
        source=source_of(request),
        details={"first_bad_seq": report.first_bad_seq},
    )
    return web.json_response(
        {
            "ok": report.ok,
            "entries": report.entries,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
        }
    )


@admin_route("GET", "/v1/admin/settings", "settings.read")
async def show_settings(request: web.Request, operator: Operator) -> web.Response:
    """The node's effective settings, secrets redacted."""
    gw = request.app[GATEWAY]
    rows = describe_settings(gw.settings)
    return web.json_response({"settings": [{"name": n, "value": v, "help": h} for n, v, h in rows]})


def setup(app: web.Application) -> None:
    """Add the core routes that are not admin routes (admin routes register themselves)."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_post("/v1/auth/logout", logout)

"""The HTTP API (aiohttp): operator login, the admin API, health and metrics.

Every admin route is declared with ``@admin_route(method, path, permission)``; the wrapper
authenticates the bearer token and checks the role server-side before the handler runs.
``ADMIN_ROUTES`` lists them all so that a test can prove each refuses the roles it should.
Errors of any package become the one JSON shape ``{error: {code, message, details}}`` in
``error_middleware``, with the status from ``gateway.errors.ERROR_TABLE``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    TelgateError,
    describe,
    error_body,
    error_code,
)
from gateway.operators import Operator, validate_name
from gateway.rbac import check
from gateway.settings import describe_settings
from gateway.wiring import Gateway

log = logging.getLogger("telgate.http")

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", object)  # type: ignore[arg-type]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AdminHandler = Callable[[web.Request, Operator], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AdminRoute:
    """One admin endpoint and the permission it requires."""

    method: str
    path: str
    permission: str
    handler: AdminHandler


ADMIN_ROUTES: list[AdminRoute] = []


def admin_route(method: str, path: str, permission: str) -> Callable[[AdminHandler], AdminHandler]:
    """Register an admin endpoint that requires an operator session holding ``permission``."""

    def register(handler: AdminHandler) -> AdminHandler:
        ADMIN_ROUTES.append(AdminRoute(method, path, permission, handler))
        return handler

    return register


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "telgate_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "telgate_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.logins = Counter(
            "telgate_logins", "Operator logins by outcome", ["outcome"], registry=self.registry
        )


def source_of(request: web.Request) -> str:
    """The client's address as seen by this node."""
    return request.remote or "unknown"


def json_error(exc: BaseException) -> web.Response:
    """The one JSON error shape for ``exc``, with its mapped status."""
    code = error_code(exc)
    status = describe(exc).http_status
    if isinstance(exc, TelgateError):
        body = error_body(code, exc.message, exc.details)
    else:
        message = "internal error" if code == "internal" else str(exc) or code
        body = error_body(code, message)
    response = web.json_response(body, status=status)
    if isinstance(exc, RateLimitedError | OverloadedError):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, AuthenticationError):
        response.headers["WWW-Authenticate"] = 'Bearer realm="telgate"'
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to the JSON error shape and count the request."""
    metrics = request.app[METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    with metrics.latency.labels(route).time():
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                response = web.json_response(
                    error_body("bad_request" if exc.status < 500 else "internal", exc.reason),
                    status=exc.status,
                )
                if exc.status == 405:
                    response = web.json_response(error_body("method_not_allowed", exc.reason), status=405)
                elif exc.status == 404:
                    response = web.json_response(error_body("not_found", "no such endpoint"), status=404)
            else:
                raise
        except TelgateError as exc:
            response = json_error(exc)
        except Exception as exc:
            if error_code(exc) == "internal":
                log.exception("unhandled error on %s %s", request.method, request.path)
            response = json_error(exc)
    metrics.requests.labels(route, str(response.status)).inc()
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    if request.content_type != "application/json":
        raise BadRequestError("send a JSON object with Content-Type: application/json")
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequestError("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def current_operator(request: web.Request) -> Operator:
    """The operator behind the request's session token, or a 401."""
    gw = request.app[GATEWAY]
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError()
    operator = await asyncio.to_thread(gw.operators.resolve_session, token, gw.clock.now())
    if operator is None:
        raise AuthenticationError("session expired or invalid: run `telgate login`")
    return operator


def _admin_handler(route: AdminRoute) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        operator = await current_operator(request)
        check(operator.role, route.permission)
        return await route.handler(request, operator)

    return handle


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
    """Prometheus text exposition."""
    payload = generate_latest(request.app[METRICS].registry)
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
            token = gw.operators.open_session(
                tx, operator.name, source, now, gw.settings.security.session_ttl
            )
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


async def not_found(request: web.Request) -> web.Response:
    """Unknown paths under /v1 get the JSON error shape."""
    raise NotFoundError("no such endpoint")


def create_app(gateway: Gateway) -> web.Application:
    """The aiohttp application of one gateway node."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=gateway.settings.ingest.max_body_bytes
    )
    app[GATEWAY] = gateway
    app[METRICS] = Metrics()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_post("/v1/auth/logout", logout)
    for route in ADMIN_ROUTES:
        app.router.add_route(route.method, route.path, _admin_handler(route))
    return app

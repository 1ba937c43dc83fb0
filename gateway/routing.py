"""What every HTTP route module shares: app keys, the admin-route registry, auth and errors.

Every admin route is declared with ``@admin_route(method, path, permission)``; the wrapper
authenticates the bearer token and checks the role server-side before the handler runs.
``ADMIN_ROUTES`` lists them all so that a test can prove each refuses the roles it should.
Errors of any package become the one JSON shape ``{error: {code, message, details}}`` in
``error_middleware``, with the status from ``gateway.errors.ERROR_TABLE``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.errors import (
    AuthenticationError,
    BadRequestError,
    OverloadedError,
    RateLimitedError,
    TelgateError,
    describe,
    error_body,
    error_code,
)
from gateway.operators import Operator
from gateway.rbac import check
from gateway.staging import StagingStatus
from gateway.wiring import Gateway

log = logging.getLogger("telgate.http")

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)

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


class IngestGauges(Collector):
    """The staging backlog, the quarantine and each PBX's posts: a snapshot the ``/metrics`` handler takes
    from the store just before it renders (so every HTTP worker process answers the same)."""

    def __init__(self) -> None:
        self._status: StagingStatus | None = None
        self._now: datetime | None = None

    def update(self, status: StagingStatus, now: datetime) -> None:
        """The snapshot the next ``collect`` reports."""
        self._status, self._now = status, now

    def collect(self) -> Iterator[Metric]:
        """The gauges of the last snapshot (none before the first)."""
        status, now = self._status, self._now
        if status is None or now is None:
            return
        staged = GaugeMetricFamily(
            "telgate_ingest_staged_records", "Records staged and not yet in the lake", labels=["kind"]
        )
        age = GaugeMetricFamily(
            "telgate_ingest_oldest_staged_age_seconds",
            "How long the oldest staged record has waited for the lake (0 when none is staged)",
            labels=["kind"],
        )
        for kind, state in status.kinds.items():
            staged.add_metric([kind], state.records)
            age.add_metric([kind], state.waited(now) or 0.0)
        yield staged
        yield age
        yield GaugeMetricFamily(
            "telgate_ingest_quarantine_pending",
            "Rejected records kept in quarantine and not replayed",
            value=status.quarantine_pending,
        )
        last_post = GaugeMetricFamily(
            "telgate_ingest_pbx_last_post_timestamp_seconds", "When each PBX last posted records", labels=["pbx"]
        )
        records = CounterMetricFamily(
            "telgate_ingest_pbx_records", "Records each PBX has posted, by outcome", labels=["pbx", "outcome"]
        )
        for pbx, activity in sorted(status.pbxs.items()):
            last_post.add_metric([pbx], activity.last_at.timestamp())
            records.add_metric([pbx, "accepted"], activity.accepted)
            records.add_metric([pbx, "duplicate"], activity.duplicates)
            records.add_metric([pbx, "rejected"], activity.rejected)
        yield last_post
        yield records


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
        self.logins = Counter("telgate_logins", "Operator logins by outcome", ["outcome"], registry=self.registry)
        self.ingest = IngestGauges()
        self.registry.register(self.ingest)
        self._latency_by_route: dict[str, Histogram] = {}
        self._requests_by_outcome: dict[tuple[str, int], Counter] = {}

    def exposition(self) -> bytes:
        """The Prometheus text of this node: in an HTTP worker, every worker's counters added up."""
        if not getattr(values.ValueClass, "_multiprocess", False):
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)  # type: ignore[no-untyped-call]  # one file per process and type
        everyone.register(self.ingest)  # read from the store: the same in every process
        return generate_latest(everyone)

    def observe(self, route: str, seconds: float) -> None:
        """Record a request's latency, as ``Histogram.time()`` does.

        Labelled children are looked up once per route (and status, in ``count``): ``labels`` takes a
        lock and validates its values on every call.
        """
        latency = self._latency_by_route.get(route)
        if latency is None:
            latency = self._latency_by_route[route] = self.latency.labels(route)
        latency.observe(max(seconds, 0))

    def count(self, route: str, status: int) -> None:
        """Count an answered request by route and status."""
        requests = self._requests_by_outcome.get((route, status))
        if requests is None:
            requests = self._requests_by_outcome[(route, status)] = self.requests.labels(route, str(status))
        requests.inc()


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


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
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.perf_counter()  # the clock of Histogram.time()
    try:
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
    finally:
        metrics.observe(route, time.perf_counter() - started)
    metrics.count(route, response.status)
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


def admin_handler(route: AdminRoute) -> Handler:
    """The aiohttp handler that authenticates, checks the permission, then runs the route."""

    async def handle(request: web.Request) -> web.StreamResponse:
        operator = await current_operator(request)
        check(operator.role, route.permission)
        return await route.handler(request, operator)

    return handle

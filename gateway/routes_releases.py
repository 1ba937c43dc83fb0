"""Admin routes for releases: create (the password shown once), list, show, revoke, reissue.

``POST /v1/admin/releases`` takes ``{tenant, recordings: [id, ...]}`` or ``{tenant, since, until}``
(dates or ISO times with offset, ``until`` exclusive) and an optional ``ttl`` (``72h``); it answers
201 with ``{release_id, host, port, username, password, expires_at, recordings}``. ``reissue`` answers
the same shape for a new credential. The password appears in no other answer, log or audit entry.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.errors import BadRequestError
from gateway.operators import Operator
from gateway.releases import IssuedCredential, Release, ReleaseItem, parse_moment
from gateway.routing import GATEWAY, admin_route, read_json, source_of
from gateway.settings import parse_duration
from gateway.wiring import Gateway


def item_json(item: ReleaseItem) -> dict[str, Any]:
    """One released recording as the API shows it."""
    return {
        "recording_id": item.recording_id,
        "name": item.name,
        "size": item.size,
        "collected_at": item.collected_at.isoformat() if item.collected_at else None,
        "collected_by": item.collected_by,
        "shredded": item.shredded,
    }


def credential_json(gw: Gateway, issued: IssuedCredential) -> dict[str, Any]:
    """A new credential with where to use it; the only answer that carries a password."""
    return {
        "release_id": issued.release_id,
        "tenant": issued.tenant,
        "host": gw.settings.server.public_host,
        "port": gw.releases.public_port or gw.settings.server.sftp_port,
        "username": issued.username,
        "password": issued.password,
        "expires_at": issued.expires_at.isoformat(),
        "recordings": [{"recording_id": i.recording_id, "name": i.name, "size": i.size} for i in issued.items],
    }


def release_json(release: Release, now: datetime, *, with_items: bool = False) -> dict[str, Any]:
    """A release as the API shows it (never a password or hash)."""
    body: dict[str, Any] = {
        "release_id": release.release_id,
        "tenant": release.tenant,
        "state": release.state(now),
        "username": release.username,
        "created_by": release.created_by,
        "created_at": release.created_at.isoformat(),
        "expires_at": release.expires_at.isoformat(),
        "claimed_by": release.claimed_by,
        "claimed_at": release.claimed_at.isoformat() if release.claimed_at else None,
        "sessions": release.sessions,
        "revoked_at": release.revoked_at.isoformat() if release.revoked_at else None,
        "revoked_by": release.revoked_by,
        "recordings_total": release.total,
        "recordings_collected": release.collected,
        "recordings_pending": release.pending,
    }
    if with_items:
        body["recordings"] = [item_json(item) for item in release.items]
    return body


def _ttl(body: dict[str, Any]) -> timedelta | None:
    raw = body.get("ttl")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequestError("ttl must be a duration such as 72h")
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc


def _moment(body: dict[str, Any], key: str) -> datetime | None:
    raw = body.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequestError(f"{key} must be a date or an ISO time")
    return parse_moment(raw, key)


@admin_route("POST", "/v1/admin/releases", "release.manage")
async def create_release(request: web.Request, operator: Operator) -> web.Response:
    """Release recordings of one tenant; the answer carries the credential's password once."""
    gw = request.app[GATEWAY]
    body = await read_json(request)
    tenant = body.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise BadRequestError("tenant is required")
    recordings = body.get("recordings") or []
    if not isinstance(recordings, list) or not all(isinstance(r, str) for r in recordings):
        raise BadRequestError("recordings must be a list of recording ids")
    since, until, ttl = _moment(body, "since"), _moment(body, "until"), _ttl(body)
    issued = await asyncio.to_thread(
        gw.releases.create,
        tenant=tenant, recording_ids=recordings, since=since, until=until, ttl=ttl,
        actor=operator.name, role=operator.role, source=source_of(request),
    )  # fmt: skip
    return web.json_response(credential_json(gw, issued), status=201)


@admin_route("GET", "/v1/admin/releases", "release.list")
async def list_releases(request: web.Request, operator: Operator) -> web.Response:
    """Every release (optionally of one tenant), newest first, with its state and counts."""
    gw = request.app[GATEWAY]
    found = await asyncio.to_thread(gw.releases.releases, request.query.get("tenant") or None)
    now = gw.clock.now()
    return web.json_response({"releases": [release_json(r, now) for r in found]})


@admin_route("GET", "/v1/admin/releases/{release_id}", "release.list")
async def show_release(request: web.Request, operator: Operator) -> web.Response:
    """One release with each recording's name and collection state."""
    gw = request.app[GATEWAY]
    release = await asyncio.to_thread(gw.releases.release, request.match_info["release_id"])
    return web.json_response(release_json(release, gw.clock.now(), with_items=True))


@admin_route("POST", "/v1/admin/releases/{release_id}/revoke", "release.manage")
async def revoke_release(request: web.Request, operator: Operator) -> web.Response:
    """Kill the release's credential; recordings not yet collected stay in the vault."""
    gw = request.app[GATEWAY]
    release = await asyncio.to_thread(
        gw.releases.revoke,
        request.match_info["release_id"], actor=operator.name, role=operator.role, source=source_of(request),
    )  # fmt: skip
    return web.json_response(release_json(release, gw.clock.now()))


@admin_route("POST", "/v1/admin/releases/{release_id}/reissue", "release.manage")
async def reissue_release(request: web.Request, operator: Operator) -> web.Response:
    """A new credential for what is left to collect; the previous one is dead."""
    gw = request.app[GATEWAY]
    body = await read_json(request) if request.can_read_body else {}
    issued = await asyncio.to_thread(
        gw.releases.reissue,
        request.match_info["release_id"], ttl=_ttl(body), actor=operator.name, role=operator.role,
        source=source_of(request),
    )  # fmt: skip
    return web.json_response(credential_json(gw, issued))


def setup(app: web.Application) -> None:
    """No non-admin routes here."""

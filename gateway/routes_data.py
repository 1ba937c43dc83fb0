"""Identifiable access to ingested data, always through the gateway and always audited.

- ``GET /v1/admin/cdr/search``: the CDRs of one number (via its subject tokens) or one call id, from
  the lake and from staging (not yet flushed). The searched number is shown where its token stood;
  every other party stays a token. The audit entry names the tokens, never the number.
- ``GET /v1/admin/ingest/quarantine`` and ``POST .../{id}/replay``: records that were rejected are
  kept sealed; a replay re-parses the sealed bytes (e.g. after a PBX profile was fixed) and stages
  what now parses.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from gateway.errors import BadRequestError, NotFoundError
from gateway.operators import Operator
from gateway.principals import Pbx
from gateway.routing import GATEWAY, admin_route, read_json, source_of
from gateway.wiring import Gateway
from ingest.context import PbxContext
from ingest.normalise import to_e164

SEARCH_LIMIT = 10_000


def normalise_number(gw: Gateway, number: str) -> str:
    """An operator's number (national or international) as E.164, or a 400."""
    ctx = PbxContext(
        name="search",
        tenant="search",
        timezone=ZoneInfo(gw.settings.ingest.default_timezone),
        country=gw.settings.ingest.default_country,
    )
    e164 = to_e164("".join(ch for ch in number if ch.isdigit() or ch == "+"), ctx)
    if e164 is None:
        raise BadRequestError("not a phone number this gateway can normalise")
    return e164


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def search_cdrs(
    gw: Gateway, *, tokens: dict[str, str], call_id: str | None, since: datetime | None
) -> list[dict[str, Any]]:
    """CDR rows matching the tokens or the call id, from the lake and staging, newest first."""
    from pyiceberg.expressions import And, BooleanExpression, EqualTo, GreaterThanOrEqual, In, Or, Reference
    from pyiceberg.expressions.literals import literal  # imported with the lake, on first use

    condition: BooleanExpression
    if call_id is not None:
        condition = Or(
            EqualTo(term=Reference("call_id"), value=literal(call_id)),
            EqualTo(term=Reference("linked_id"), value=literal(call_id)),
        )
    else:
        wanted = {literal(token) for token in tokens}
        condition = Or(In(term=Reference("caller"), values=wanted), In(term=Reference("callee"), values=wanted))
    if since is not None:
        condition = And(condition, GreaterThanOrEqual(term=Reference("start_at"), value=literal(since.isoformat())))
    # Staging first, then the lake: a batch the flusher moves meanwhile is in one or the other.
    staged = gw.staging.scan("cdr", functools.partial(_matches, tokens=tokens, call_id=call_id, since=since))
    rows = gw.lake.scan("cdr", condition, limit=SEARCH_LIMIT).to_pylist()
    seen = {row["dedupe_key"] for row in rows}
    rows += [row for row in staged.to_pylist() if row["dedupe_key"] not in seen]
    for row in rows:
        for party in ("caller", "callee"):
            if row[party] in tokens:
                row[party] = tokens[row[party]]
                row[f"{party}_kind"] = "number"
    rows.sort(key=lambda row: row["start_at"], reverse=True)
    return [{key: _json_value(value) for key, value in row.items()} for row in rows]


def _matches(table: pa.Table, *, tokens: dict[str, str], call_id: str | None, since: datetime | None) -> pa.Array:
    """Which staged CDR rows ``search_cdrs`` wants (the lake query's condition, on a staged table)."""
    if call_id is not None:
        mask = pc.or_(pc.equal(table["call_id"], call_id), pc.equal(table["linked_id"], call_id))
    else:
        wanted = pa.array(list(tokens), pa.string())
        mask = pc.or_(pc.is_in(table["caller"], value_set=wanted), pc.is_in(table["callee"], value_set=wanted))
    if since is not None:
        mask = pc.and_(mask, pc.greater_equal(table["start_at"], pa.scalar(since, table.schema.field("start_at").type)))
    return pc.fill_null(mask, False)


def _since(request: web.Request) -> datetime | None:
    raw = request.query.get("since")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequestError(f"since must be an ISO 8601 date or time: {raw!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@admin_route("GET", "/v1/admin/cdr/search", "cdr.search")
async def cdr_search(request: web.Request, operator: Operator) -> web.Response:
    """Identifiable CDR lookup by number or call id (audited with tokens, never the number)."""
    gw = request.app[GATEWAY]
    number, call_id = request.query.get("number"), request.query.get("call_id")
    if (number is None) == (call_id is None):
        raise BadRequestError("give exactly one of number or call_id")
    since = _since(request)

    def search() -> list[dict[str, Any]]:
        tokens: dict[str, str] = {}
        if number is not None:
            e164 = normalise_number(gw, number)
            tokens = {subject.token: e164 for subject in gw.subjects.find(e164)}
        rows = search_cdrs(gw, tokens=tokens, call_id=call_id, since=since) if tokens or call_id else []
        searched = f"call:{call_id}" if call_id else "subjects:" + (",".join(sorted(tokens)) or "none")
        gw.audit.append(
            actor=operator.name, role=operator.role, action="cdr.search", object=searched,
            source=source_of(request), details={"results": len(rows), "since": since.isoformat() if since else None},
        )  # fmt: skip
        return rows

    rows = await asyncio.to_thread(search)
    return web.json_response({"cdrs": rows, "count": len(rows)})


QUARANTINE_LIST_LIMIT = 1000
REPLAY_BATCH = 200  # records one bulk replay call takes: the CLI calls again with the cursor


@admin_route("GET", "/v1/admin/ingest/quarantine", "quarantine.read")
async def quarantine_list(request: web.Request, operator: Operator) -> web.Response:
    """Quarantined records: where they came from and why (never their content), oldest first.

    ``?pbx=NAME`` and ``?pending=true`` (not replayed) filter; ``total`` counts every match, the list
    stops at 1,000.
    """
    gw = request.app[GATEWAY]
    pbx = request.query.get("pbx") or None
    pending = request.query.get("pending", "").lower() in {"1", "true", "yes"}
    rows, total = await asyncio.to_thread(
        functools.partial(gw.staging.quarantined, QUARANTINE_LIST_LIMIT, pbx=pbx, pending=pending)
    )
    return web.json_response({"quarantine": rows, "total": total})


async def _live_pbx(gw: Gateway, name: str) -> Pbx:
    """The PBX of that name, unless it is gone or revoked (NotFoundError)."""
    pbx = next((p for p in await asyncio.to_thread(gw.principals.pbxs) if p.name == name), None)
    if pbx is None or pbx.revoked:
        raise NotFoundError(f"PBX {name} no longer exists or is revoked")
    return pbx


async def _replay(
    request: web.Request, operator: Operator, quarantine_id: str, pbx: Pbx | None = None
) -> dict[str, Any]:
    """Parse one quarantined record again with its PBX's current settings; stage it if it now parses;
    mark it replayed and audit the attempt in one transaction. ``pbx``: the record's PBX, when the
    caller has looked it up already."""
    gw = request.app[GATEWAY]
    unsealed = await asyncio.to_thread(gw.staging.unseal, quarantine_id)
    if unsealed is None:
        raise NotFoundError(f"no quarantined record {quarantine_id}")
    meta, raw = unsealed
    if pbx is None or pbx.name != meta["pbx"]:
        pbx = await _live_pbx(gw, str(meta["pbx"]))
    result = await gw.ingest.ingest(pbx, str(meta["format"]), raw, "", replay=True)
    replayed = result.accepted + result.duplicates > 0 and not result.rejected

    def record() -> None:
        with gw.db.transaction() as tx:
            if replayed:
                gw.staging.mark_replayed(tx, quarantine_id, gw.clock.now())
            gw.audit.append(
                actor=operator.name, role=operator.role, action="quarantine.replay", object=quarantine_id,
                outcome="ok" if replayed else "still-rejected", source=source_of(request),
                details={"accepted": result.accepted, "duplicates": result.duplicates}, tx=tx,
            )  # fmt: skip

    await asyncio.to_thread(record)
    return {"id": quarantine_id, "replayed": replayed, "accepted": result.accepted, "duplicates": result.duplicates,
            "rejected": result.rejected}  # fmt: skip


@admin_route("POST", "/v1/admin/ingest/quarantine/{id}/replay", "quarantine.replay")
async def quarantine_replay(request: web.Request, operator: Operator) -> web.Response:
    """Parse a quarantined record again with its PBX's current settings; stage it if it now parses."""
    return web.json_response(await _replay(request, operator, request.match_info["id"]))


@admin_route("POST", "/v1/admin/ingest/quarantine/replay", "quarantine.replay")
async def quarantine_replay_pbx(request: web.Request, operator: Operator) -> web.Response:
    """Replay a PBX's pending quarantined records (after its profile was fixed), up to 200 per call.

    Body ``{"pbx": NAME, "after": ID or null}``; answers the counts and ``next``, the cursor to send as
    ``after`` for the following records (null when there are none left). Each record is audited as
    ``quarantine.replay``, as a single replay is.
    """
    gw = request.app[GATEWAY]
    body = await read_json(request)
    pbx, after = body.get("pbx"), body.get("after")
    if not isinstance(pbx, str) or not pbx or not (after is None or isinstance(after, str)):
        raise BadRequestError('send {"pbx": NAME, "after": ID or null}')
    live = await _live_pbx(gw, pbx)  # once for the batch, not once per record
    ids = await asyncio.to_thread(gw.staging.pending_quarantine, pbx, after, REPLAY_BATCH)
    counts = {"replayed": 0, "still_rejected": 0, "accepted": 0, "duplicates": 0}
    for quarantine_id in ids:
        try:
            answer = await _replay(request, operator, quarantine_id, live)
        except NotFoundError:
            continue  # deleted meanwhile (retention)
        counts["replayed" if answer["replayed"] else "still_rejected"] += 1
        counts["accepted"] += int(answer["accepted"])
        counts["duplicates"] += int(answer["duplicates"])
    return web.json_response({"pbx": pbx, **counts, "next": ids[-1] if len(ids) == REPLAY_BATCH else None})


def setup(app: web.Application) -> None:
    """No non-admin routes here."""

"""PBX-facing ingest endpoints: CDRs and ACD events in each PBX's own format.

Every endpoint authenticates the PBX (Bearer token or HTTP Basic), reads the body within the size
limit, and answers 202 ``{accepted, duplicates, rejected: [{line, reason, quarantine_id}]}`` only after
the accepted records are durable in staging. Asterisk's ``res_config_curl`` store posts get the plain
row count it parses (``sscanf("%d")``) instead of JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import AuthenticationError, BadRequestError, PayloadTooLargeError
from gateway.ingest_service import QUEUE_LOG_STORE
from gateway.principals import Pbx
from gateway.routing import GATEWAY
from gateway.security import token_digest

CDR_FORMATS = ("asterisk-csv", "freeswitch-json", "freeswitch-xml", "cucm", "json")
_AUTH_CACHE_SECONDS = 10.0  # a revoked PBX token stops working within this time on every node


class PbxAuthCache:
    """Remembers recent PBX authentications so that ingest does not hit the store per request."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Pbx]] = {}

    def get(self, authorization: str) -> Pbx | None:
        """A cached PBX for this exact header, if fresh."""
        entry = self._entries.get(token_digest(authorization))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, authorization: str, pbx: Pbx) -> None:
        """Cache a successful authentication."""
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[token_digest(authorization)] = (time.monotonic() + _AUTH_CACHE_SECONDS, pbx)


AUTH_CACHE: web.AppKey[PbxAuthCache] = web.AppKey("pbx_auth_cache", PbxAuthCache)


async def current_pbx(request: web.Request) -> Pbx:
    """The PBX behind the request's credentials, or a 401 that says nothing more."""
    header = request.headers.get("Authorization")
    if not header:
        raise AuthenticationError()
    cache = request.app[AUTH_CACHE]
    pbx = cache.get(header)
    if pbx is None:
        pbx = await asyncio.to_thread(request.app[GATEWAY].principals.authenticate_pbx, header)
        if pbx is None:
            raise AuthenticationError("invalid PBX credentials")
        cache.put(header, pbx)
    return pbx


async def read_body(request: web.Request) -> bytes:
    """The whole body within the configured limit (413 above it, 400 when empty).

    Read here rather than with ``request.read()``, which keeps the body on the request until the answer
    is sent: a large body can then be freed once parsed, while its records are still being staged.
    The stream is aiohttp's decoded one (a Content-Encoding is undone).
    """
    limit = request.app[GATEWAY].settings.ingest.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    content = request.content
    if content.is_eof():  # the usual small body: it came with the headers, read it in one call
        body = content.read_nowait()
    else:
        chunks: list[bytes] = []
        size = 0
        async for chunk in content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        body = b"".join(chunks)
        del chunks
    if len(body) > limit:
        raise _too_large(limit)
    if not body or body.isspace():  # not strip(): that copies the whole body
        raise BadRequestError("the body is empty")
    return body


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the body exceeds the {limit}-byte limit", details={"limit": limit})


def _handler(source_format: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def ingest(request: web.Request) -> web.Response:
        pbx = await current_pbx(request)
        gw = request.app[GATEWAY]
        content_type = request.headers.get("Content-Type", "")
        if gw.ingest.is_large(request.content_length):
            async with gw.ingest.large_body_slot:  # read and parse large bodies one at a time
                body = await read_body(request)
                prepared = await gw.ingest.prepare(pbx, source_format, body, content_type)
                del body
        else:
            body = await read_body(request)
            prepared = await gw.ingest.prepare(pbx, source_format, body, content_type)
        result = await gw.ingest.stage(prepared)
        if source_format == QUEUE_LOG_STORE:
            stored = result.accepted + result.duplicates
            return web.Response(text=f"{stored}\n", status=200 if stored else 400, content_type="text/plain")
        if not result.rejected:  # the common answer, without a JSON encoder round trip
            body = b'{"accepted":%d,"duplicates":%d,"rejected":[]}' % (result.accepted, result.duplicates)
            return web.Response(body=body, status=202, content_type="application/json", charset="utf-8")
        return web.json_response(result.as_json(), status=202)

    ingest.__doc__ = f"Ingest a {source_format} body from a PBX."
    return ingest


def setup(app: web.Application) -> None:
    """Add the PBX ingest endpoints."""
    app[AUTH_CACHE] = PbxAuthCache()
    for source_format in CDR_FORMATS:
        app.router.add_post(f"/v1/cdr/{source_format}", _handler(source_format))
    app.router.add_post("/v1/acd/queue-log", _handler("queue-log"))
    app.router.add_post("/v1/acd/queue-log/store", _handler(QUEUE_LOG_STORE))
